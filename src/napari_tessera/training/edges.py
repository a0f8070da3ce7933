"""Where objects end and how touching ones are cut apart, calibrated on the painted objects.

With sparse labels nothing is painted right beside an object (background strokes keep their
distance from it), so a network's objects may come out a pixel or two larger or smaller than
the objects it was shown; and how deep a neck must be before an object is cut in two depends on
the objects' size and shape (round nuclei or spread-out cells). The painted objects themselves
show both: they are painted whole, edge to edge. After training, the model segments the slices
it was trained on, and the :class:`~napari_tessera.postprocess.SplitRule` (edge offset and seed
depth) whose objects best match the painted ones is stored with the model; segmenting applies
it.

The match of a painted object P is its IoU with the single predicted object that overlaps it
best, so cutting P into pieces and merging P with a neighbour both lower it; a painted region
cut into object-sized parts is judged by their IoU together, since touching objects painted
with one label join into one region (:func:`object_ious`). Objects painted as
strokes inside a cell, not whole, match nothing well at any setting, and calibration then keeps
the plain rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage as ndi

from ..postprocess import DEFAULT_MIN_SIZE, SplitRule

#: offsets tried, in pixels (positive shrinks); steps of one pixel, diagonal and two pixels
EDGE_OFFSETS = (-2.5, -2.0, -1.5, -1.0, 0.0, 1.0, 1.5, 2.0, 2.5)
#: seed depths tried, in pixels (0: every local maximum of the distance map)
SEED_DEPTHS = (0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0)
#: objects smaller than this fraction of the median painted object are dropped (a fifth of
#: the area: under half the diameter); fragments and debris, not objects of the painted kind
MIN_OBJECT_FRACTION = 0.2


@dataclass(frozen=True)
class EdgeCalibration:
    """The chosen split rule and how it was chosen.

    offset: pixels to move edges by (positive shrinks objects); 0 when not calibrated.
    seed_depth: how deep a neck must be to cut an object (0: the plain rule).
    objects: painted objects it was judged on.
    score: mean IoU of the painted objects with their best-matching predicted objects under
        the chosen rule (how well objects come out where the user painted them).
    scores: that mean for every (offset, seed depth) tried (empty when not calibrated).
    reason: "calibrated", or why the plain rule is kept.
    min_size: the smallest object kept, in pixels: :data:`MIN_OBJECT_FRACTION` of the median
        painted object (at least 8), or the base rule's when the objects were not usable.
    """

    offset: float
    objects: int
    scores: dict[tuple[float, float], float] = field(default_factory=dict)
    reason: str = "calibrated"
    seed_depth: float = 0.0
    min_size: int = DEFAULT_MIN_SIZE

    @property
    def score(self) -> float | None:
        return self.scores.get((self.offset, self.seed_depth))

    def describe(self) -> str:
        """One line for the user: how well the painted objects come out, and the rule."""
        quality = (
            f"painted objects come out at mean IoU {self.score:.2f}; "
            if self.score is not None
            else ""
        )
        parts = []
        if self.offset:
            way = "in" if self.offset > 0 else "out"
            parts.append(f"edges moved {way} by {abs(self.offset):g} px")
        if self.seed_depth:
            parts.append(f"objects cut only at necks {self.seed_depth:g} px deep")
        if self.min_size != DEFAULT_MIN_SIZE:
            parts.append(f"objects under {self.min_size} px dropped")
        rule = ", ".join(parts) if parts else "objects split as predicted"
        if self.reason != "calibrated":
            return f"{quality}{rule} ({self.reason})"
        return f"{quality}{rule} (calibrated on {self.objects} painted objects)"

    def as_metadata(self) -> dict:
        return {
            "offset": self.offset,
            "seed_depth": self.seed_depth,
            "min_size": self.min_size,
            "objects": self.objects,
            "score": self.score,
            "reason": self.reason,
            "scores": {f"{o:g},{d:g}": round(v, 4) for (o, d), v in self.scores.items()},
        }


def painted_objects(labels2d: np.ndarray, mode: str, *, min_size: int = 8) -> np.ndarray:
    """Whole painted objects of one slice as ids (0 = none).

    sparse: each connected region of one object class (labels 2, 3, ...); dense: each label
    value. Objects smaller than ``min_size`` pixels are left out.
    """
    lab = np.asarray(labels2d)
    out = np.zeros(lab.shape, np.int32)
    if mode == "dense":
        ids, inv = np.unique(lab, return_inverse=True)
        out = inv.reshape(lab.shape).astype(np.int32)
        if ids[0] != 0:
            out += 1
    else:
        nxt = 0
        for c in np.unique(lab[lab >= 2]):
            comp, n = ndi.label(lab == c)
            out[comp > 0] = comp[comp > 0] + nxt
            nxt += n
    if min_size > 1 and out.any():
        sizes = np.bincount(out.ravel())
        small = sizes < min_size
        small[0] = False
        if small.any():
            out[small[out]] = 0
    return out


def object_ious(objects: np.ndarray, instances: np.ndarray, min_part: float = np.inf) -> np.ndarray:
    """How well each painted object (ids 1..max of ``objects``, absent ids skipped) comes out.

    Its IoU with the predicted object that overlaps it best (0 when none does); or, when
    two or more predicted objects lie mostly inside it and each has at least ``min_part``
    pixels, their IoU taken together, if that is higher. Touching objects painted with the same
    label join into one painted region, and cutting it into object-sized parts is then right;
    cutting an object into small fragments is not.
    """
    obj = np.asarray(objects).ravel().astype(np.int64)
    ins = np.asarray(instances).ravel().astype(np.int64)
    n_obj, n_ins = int(obj.max()) + 1, int(ins.max()) + 1
    both = (obj > 0) & (ins > 0)
    # overlapping (object, instance) pairs only: thousands of each stay cheap
    pairs, inter = np.unique(obj[both] * n_ins + ins[both], return_counts=True)
    o, i = pairs // n_ins, pairs % n_ins
    ins_size = np.bincount(ins, minlength=n_ins)
    obj_size = np.bincount(obj, minlength=n_obj)
    best = np.zeros(n_obj)
    np.maximum.at(best, o, inter / (obj_size[o] + ins_size[i] - inter))
    inside = 2 * inter > ins_size[i]  # the instance lies mostly inside the object
    parts = np.bincount(o[inside], minlength=n_obj)
    small = np.bincount(o[inside], weights=ins_size[i][inside] < min_part, minlength=n_obj)
    common = np.bincount(o[inside], weights=inter[inside], minlength=n_obj)
    pred = np.bincount(o[inside], weights=ins_size[i][inside], minlength=n_obj)
    together = common / np.maximum(obj_size + pred - common, 1)
    joined = (parts >= 2) & (small == 0)
    score = np.where(joined, np.maximum(best, together), best)
    present = np.flatnonzero(obj_size > 0)
    return score[present[present > 0]]


def _clearly_better(ious: np.ndarray, plain: np.ndarray, min_gain: float) -> bool:
    """Whether per-object IoUs beat the plain rule's by ``min_gain`` on average, and by more
    than twice the standard error of the paired differences: a gain carried by one or two of a
    dozen objects is not trusted."""
    d = ious - plain
    if len(d) < 2:
        return False
    se = d.std(ddof=1) / np.sqrt(len(d))
    return bool(d.mean() >= min_gain and d.mean() > 2 * se)


def _crop_to_objects(classes: np.ndarray, objects: np.ndarray, margin: int = 48):
    """Both maps cut to the painted objects' bounding box plus ``margin`` (faster splits)."""
    ys, xs = np.nonzero(objects)
    box = (
        slice(max(ys.min() - margin, 0), ys.max() + margin + 1),
        slice(max(xs.min() - margin, 0), xs.max() + margin + 1),
    )
    return classes[box], objects[box]


def calibrate_edges(
    class_maps,
    object_maps,
    *,
    offsets=EDGE_OFFSETS,
    depths=SEED_DEPTHS,
    min_objects: int = 3,
    min_whole: float = 0.3,
    min_gain: float = 0.01,
    base: SplitRule | None = None,
    trust_base: bool = False,
) -> EdgeCalibration:
    """Choose the edge offset and seed depth at which predicted objects best match the painted,
    and the smallest object kept (:func:`smallest_object`; the base rule's when it is kept for
    want of usable objects).

    class_maps: per-pixel classes predicted for the painted slices (2D each, 0 = background).
    object_maps: the painted objects of the same slices (:func:`painted_objects`).
    ``base``: the rule kept unless another does better: the plain rule (None), or the rule of
    the model that fine-tuning started from.
    The base rule is kept with fewer than ``min_objects`` painted objects, when even
    the best rule matches them at a mean IoU below ``min_whole`` (objects not painted whole, or
    a model that has not learnt them), or when no rule beats it by ``min_gain`` on average.
    ``trust_base`` (fine-tuning: the start's rule was chosen on far more objects than a dozen)
    also asks a rule to beat it by more than twice the standard error of the paired
    per-object differences. Among the rules that beat the base, those within ``min_gain / 2``
    of the best, the one closest to the base rule wins.
    """
    base_rule = base if base is not None else SplitRule(True)
    base = (base_rule.edge_offset, base_rule.seed_depth)
    n = sum(len(np.unique(o[o > 0])) for o in object_maps)
    if n < min_objects:
        return _kept(base_rule, n, {}, f"only {n} whole painted object(s)")
    pairs = [
        _crop_to_objects(c, o) for c, o in zip(class_maps, object_maps, strict=True) if o.any()
    ]
    areas = np.concatenate([np.bincount(o.ravel())[1:] for _, o in pairs])
    min_part = 0.5 * float(np.median(areas[areas > 0]))  # half a typical painted object
    min_size = smallest_object(areas)
    scores: dict[tuple[float, float], float] = {}
    per_object: dict[tuple[float, float], np.ndarray] = {}
    grid = {(float(o), float(d)) for o in offsets for d in depths} | {base}
    for off, depth in sorted(grid):
        rule = SplitRule(True, off, depth, min_size)
        ious = [object_ious(obj, rule.labels(cls)[0], min_part) for cls, obj in pairs]
        per_object[(off, depth)] = np.concatenate(ious)
    scores = {k: float(v.mean()) for k, v in per_object.items()}
    top = max(scores.values())
    if top < min_whole:
        why = f"painted objects matched at mean IoU {top:.2f} < {min_whole} at best: "
        return _kept(base_rule, n, scores, why + "not painted whole?")
    chosen = choose_rule(per_object, base, min_gain, trust_base)
    if chosen is None:
        why = "no other rule does clearly better" if trust_base else "no other rule does better"
        return replace(_kept(base_rule, n, scores, why), min_size=min_size)
    off, depth = chosen
    return EdgeCalibration(off, n, scores, seed_depth=depth, min_size=min_size)


def choose_rule(
    per_object: dict[tuple[float, float], np.ndarray],
    base: tuple[float, float],
    min_gain: float = 0.01,
    trust_base: bool = False,
) -> tuple[float, float] | None:
    """The ``(offset, seed depth)`` that beats ``base`` on the painted objects, or None.

    per_object: each rule's per-object IoUs (``base`` among them). A rule beats the base by
    ``min_gain`` on average (and, with ``trust_base``, by more than twice the standard error
    of the paired differences); of those within ``min_gain / 2`` of the best, the one closest
    to the base wins.
    """
    plain = per_object[base]
    if trust_base:
        better = [k for k, v in per_object.items() if _clearly_better(v, plain, min_gain)]
    else:
        better = [k for k, v in per_object.items() if v.mean() >= plain.mean() + min_gain]
    if not better:
        return None
    scores = {k: float(per_object[k].mean()) for k in better}
    near = [k for k in better if scores[k] >= max(scores.values()) - min_gain / 2]
    return min(near, key=lambda k: (abs(k[0] - base[0]) + abs(k[1] - base[1]) / 2, -scores[k]))


def smallest_object(areas: np.ndarray) -> int:
    """The smallest object worth keeping, in pixels, for objects like the painted ones
    (``areas``: their sizes): :data:`MIN_OBJECT_FRACTION` of the median, at least 8."""
    areas = np.asarray(areas)
    areas = areas[areas > 0]
    if not areas.size:
        return DEFAULT_MIN_SIZE
    return max(DEFAULT_MIN_SIZE, int(round(MIN_OBJECT_FRACTION * float(np.median(areas)))))


def _kept(rule: SplitRule, n: int, scores: dict, reason: str) -> EdgeCalibration:
    """The base rule, kept (and said why) when the painted objects do not show a better one."""
    return EdgeCalibration(rule.edge_offset, n, scores, reason, rule.seed_depth, rule.min_size)
