"""Where objects end: an edge offset calibrated on the painted objects.

With sparse labels nothing is painted right beside an object (background strokes keep their
distance from it), so no loss term fixes where the object ends, and a trained network's objects
come out a pixel or two larger than the objects it was shown; touching neighbours then merge.
The painted objects themselves show by how much: they are painted whole, edge to edge. After
training, the model segments the slices it was trained on and the edge offset (see
:func:`~napari_tessera.postprocess.shift_edges`) at which its objects best match the painted
ones is stored with the model; segmenting applies it before objects are split.

The match of a painted object P: the predicted objects that lie mostly (more than half) inside
P, taken together as R; its IoU is |P & R| / |P | R|. Objects painted as strokes inside a
nucleus, not whole, match nothing (the predicted nucleus lies mostly outside the stroke), and
calibration then leaves the offset at 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from ..postprocess import instances_from_classes

#: offsets tried, in pixels (positive shrinks); steps of one pixel, diagonal and two pixels
EDGE_OFFSETS = (-2.5, -2.0, -1.5, -1.0, 0.0, 1.0, 1.5, 2.0, 2.5)


@dataclass(frozen=True)
class EdgeCalibration:
    """The chosen offset and how it was chosen.

    offset: pixels to move edges by (positive shrinks objects); 0 when not calibrated.
    objects: painted objects it was judged on.
    scores: mean IoU of the painted objects at each offset tried (empty when not calibrated).
    reason: "calibrated", or why the offset stays 0.
    """

    offset: float
    objects: int
    scores: dict[float, float] = field(default_factory=dict)
    reason: str = "calibrated"

    def describe(self) -> str:
        """One line for the user."""
        if self.offset > 0:
            return (
                f"object edges moved in by {self.offset:g} px "
                f"(calibrated on {self.objects} painted objects)"
            )
        if self.offset < 0:
            return (
                f"object edges moved out by {-self.offset:g} px "
                f"(calibrated on {self.objects} painted objects)"
            )
        return f"object edges left as predicted ({self.reason})"

    def as_metadata(self) -> dict:
        return {
            "offset": self.offset,
            "objects": self.objects,
            "reason": self.reason,
            "scores": {f"{k:g}": round(v, 4) for k, v in self.scores.items()},
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


def object_ious(objects: np.ndarray, instances: np.ndarray) -> np.ndarray:
    """IoU of each painted object (ids 1..max of ``objects``, absent ids skipped) with the
    predicted objects lying mostly inside it."""
    obj = np.asarray(objects).ravel().astype(np.int64)
    ins = np.asarray(instances).ravel().astype(np.int64)
    n_obj, n_ins = int(obj.max()) + 1, int(ins.max()) + 1
    both = (obj > 0) & (ins > 0)
    # overlapping (object, instance) pairs only: thousands of each stay cheap
    pairs, inter = np.unique(obj[both] * n_ins + ins[both], return_counts=True)
    o, i = pairs // n_ins, pairs % n_ins
    ins_size = np.bincount(ins, minlength=n_ins)
    obj_size = np.bincount(obj, minlength=n_obj)
    inside = 2 * inter > ins_size[i]  # the instance lies mostly inside the object
    common = np.bincount(o[inside], weights=inter[inside], minlength=n_obj)
    pred = np.bincount(o[inside], weights=ins_size[i][inside], minlength=n_obj)
    present = np.flatnonzero(obj_size > 0)
    present = present[present > 0]
    union = obj_size[present] + pred[present] - common[present]
    return common[present] / np.maximum(union, 1)


def calibrate_edges(
    class_maps,
    object_maps,
    *,
    offsets=EDGE_OFFSETS,
    min_size: int = 8,
    min_objects: int = 3,
    min_whole: float = 0.5,
    min_gain: float = 0.01,
) -> EdgeCalibration:
    """Choose the edge offset at which predicted objects best match the painted ones.

    class_maps: per-pixel classes predicted for the painted slices (2D each, 0 = background).
    object_maps: the painted objects of the same slices (:func:`painted_objects`).
    The offset stays 0 with fewer than ``min_objects`` painted objects, when at offset 0 their
    mean IoU is below ``min_whole`` (objects not painted whole, or a model that has not learnt
    them), or when no offset beats 0 by ``min_gain`` in mean IoU.
    """
    n = sum(len(np.unique(o[o > 0])) for o in object_maps)
    if n < min_objects:
        return EdgeCalibration(0.0, n, reason=f"only {n} whole painted object(s)")
    scores: dict[float, float] = {}
    for off in offsets:
        ious = [
            object_ious(obj, instances_from_classes(cls, edge_offset=off, min_size=min_size)[0])
            for cls, obj in zip(class_maps, object_maps, strict=True)
        ]
        scores[float(off)] = float(np.concatenate(ious).mean())
    base = scores.get(0.0, 0.0)
    if base < min_whole:
        return EdgeCalibration(
            0.0,
            n,
            scores,
            reason=f"painted objects matched at mean IoU {base:.2f} < {min_whole}: "
            "not painted whole?",
        )
    best = max(scores, key=lambda k: (scores[k], -abs(k)))
    if scores[best] < base + min_gain:
        return EdgeCalibration(0.0, n, scores, reason="no offset does better than 0")
    return EdgeCalibration(best, n, scores)
