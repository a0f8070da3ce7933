"""From class probabilities to labels: per-pixel classes or one id per object."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.segmentation import expand_labels, watershed

from . import parallel
from .maxima import Climb, deep_maxima, first_seed_uphill


def classes_from_probabilities(prob: np.ndarray) -> np.ndarray:
    """Per-pixel class, 0 = background. ``prob`` is ``(n_classes, ...)``.

    One output channel (sigmoid) means foreground probability: class 1 where it exceeds 0.5.
    """
    dtype = labels_dtype(instances=False)
    if prob.shape[0] == 1:
        return (prob[0] > 0.5).astype(dtype)
    return np.argmax(prob, axis=0).astype(dtype)


#: largest edge offset accepted, in pixels
MAX_EDGE_OFFSET = 16.0


def check_edge_offset(value, where: str = "edge offset") -> float:
    """``value`` as a float, or an error naming ``where`` if it is not a number in range."""
    from .errors import InputError

    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{where} must be a number of pixels, got {value!r}")
    v = float(value)
    if not np.isfinite(v) or abs(v) > MAX_EDGE_OFFSET:
        limit = f"{MAX_EDGE_OFFSET:g}"
        raise InputError(f"{where} must be between -{limit} and {limit} px, got {value!r}")
    return v


def model_edge_offset(model) -> float:
    """The edge offset stored with a model (calibrated when it was trained), else 0."""
    meta = getattr(model, "metadata", None) or {}
    if "edge_offset" not in meta:
        return 0.0
    return check_edge_offset(meta["edge_offset"], "the model's edge offset")


#: largest seed depth accepted, in pixels
MAX_SEED_DEPTH = 64.0


def check_seed_depth(value, where: str = "seed depth") -> float:
    """``value`` as a float, or an error naming ``where`` if it is not a number in range."""
    from .errors import InputError

    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{where} must be a number of pixels, got {value!r}")
    v = float(value)
    if not np.isfinite(v) or not 0 <= v <= MAX_SEED_DEPTH:
        raise InputError(f"{where} must be between 0 and {MAX_SEED_DEPTH:g} px, got {value!r}")
    return v


#: smallest object kept, in pixels (voxels), when neither the run nor the model says
DEFAULT_MIN_SIZE = 8


def check_min_size(value, where: str = "the smallest object size") -> int:
    """``value`` as a positive whole number of pixels, or an error naming ``where``."""
    from .errors import InputError

    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{where} must be a whole number of pixels, 1 or more, got {value!r}")
    return int(value)


def model_min_size(model) -> int:
    """The smallest object size stored with a model (from its painted objects when it was
    trained here), else :data:`DEFAULT_MIN_SIZE`."""
    meta = getattr(model, "metadata", None) or {}
    if "min_size" not in meta:
        return DEFAULT_MIN_SIZE
    return check_min_size(meta["min_size"], "the model's smallest object size")


@dataclass(frozen=True)
class SplitRule:
    """How a map of classes becomes labels: the one place that decides it.

    instances: one id per object (else per-pixel classes).
    edge_offset: pixels to move object edges by (positive shrinks; :func:`shift_edges`).
        Objects shrink before they are split and grow after, so growing keeps them apart.
    seed_depth: how touching objects are told apart (:func:`split_instances`): 0 seeds every
        local maximum of the distance to the background at least 3 px from another; a depth
        of d px seeds only maxima that rise d px above the pass to a higher one, so a large,
        irregular cell is not cut into pieces.
    min_size: objects smaller than this many pixels are dropped.
    A model trained here stores the offset, depth and smallest object size that fit its
    painted objects (:mod:`napari_tessera.training.edges`); :func:`resolve_split` reads them.
    """

    instances: bool = False
    edge_offset: float = 0.0
    seed_depth: float = 0.0
    min_size: int = DEFAULT_MIN_SIZE

    def labels(self, classes: np.ndarray, start: int = 1) -> tuple[np.ndarray, int]:
        """Labels of one 2D class map, and the next free id (``start`` for class labels)."""
        if not self.instances:
            return shift_edges(classes, self.edge_offset), start
        # objects are cut apart before they grow, so growing never joins two of them
        fg = shift_edges(classes, max(self.edge_offset, 0.0)) > 0
        labels, nxt = split_instances(
            fg, seed_depth=self.seed_depth, min_size=self.min_size, start=start
        )
        if self.edge_offset < 0:
            labels = expand_labels(labels, -self.edge_offset)
        return labels, nxt

    def labels_3d(
        self, classes: np.ndarray, spacing: tuple[float, float, float], start: int = 1
    ) -> tuple[np.ndarray, int]:
        """One id per 3D object of a ``(Z, Y, X)`` stack of class maps (instances only): the
        slices' objects linked through Z by one watershed on the stack, with distances
        measured in space (``spacing``: the Z step and the pixel size, in pixel units). The
        edge offset moves edges in each slice, as in 2D; ``min_size`` counts voxels."""
        fg = np.stack([shift_edges(c, max(self.edge_offset, 0.0)) > 0 for c in classes])
        labels, nxt = split_instances(
            fg, seed_depth=self.seed_depth, min_size=self.min_size, start=start, spacing=spacing
        )
        if self.edge_offset < 0:
            labels = np.stack([expand_labels(z, -self.edge_offset) for z in labels])
        return labels, nxt

    def as_state(self) -> dict:
        """The settings as plain values (for resume records)."""
        return {
            "instances": bool(self.instances),
            "edge_offset": float(self.edge_offset),
            "seed_depth": float(self.seed_depth),
            "min_size": int(self.min_size),
        }


def model_seed_depth(model) -> float:
    """The seed depth stored with a model (calibrated when it was trained), else 0."""
    meta = getattr(model, "metadata", None) or {}
    if "seed_depth" not in meta:
        return 0.0
    return check_seed_depth(meta["seed_depth"], "the model's seed depth")


def resolve_split(
    model, *, instances: bool, edge_offset=None, seed_depth=None, min_size=None
) -> SplitRule:
    """The rule for ``model``'s output: given values win, None means the model's own."""
    return SplitRule(
        instances=bool(instances),
        edge_offset=(
            model_edge_offset(model) if edge_offset is None else check_edge_offset(edge_offset)
        ),
        seed_depth=(
            model_seed_depth(model) if seed_depth is None else check_seed_depth(seed_depth)
        ),
        min_size=model_min_size(model) if min_size is None else check_min_size(min_size),
    )


def shift_edges(classes: np.ndarray, offset: float) -> np.ndarray:
    """Move every object's edge by ``offset`` pixels (2D per-pixel classes, 0 = background).

    offset > 0 shrinks objects: foreground pixels within ``offset`` of the background (Euclidean
    distance; a pixel next to the background is at distance 1) become background.
    offset < 0 grows them: background pixels within ``-offset`` of an object take the class of
    the nearest object pixel. The image border is not background. 0 returns ``classes``.
    """
    if offset == 0:
        return classes
    fg = classes > 0
    if fg.all() or not fg.any():
        return classes
    if offset > 0:
        keep = ndi.distance_transform_edt(fg) > offset
        return np.where(keep, classes, 0).astype(classes.dtype, copy=False)
    dist, idx = ndi.distance_transform_edt(~fg, return_indices=True)
    grow = ~fg & (dist <= -offset)
    out = classes.copy()
    out[grow] = classes[tuple(i[grow] for i in idx)]
    return out


def split_instances(
    foreground: np.ndarray,
    *,
    seed_depth: float = 0.0,
    min_distance: int = 3,
    smooth: float = 1.0,
    min_size: int = 8,
    start: int = 1,
    spacing: tuple[float, ...] | None = None,
) -> tuple[np.ndarray, int]:
    """Split a 2D (or 3D) foreground mask into objects; touching objects are cut apart.

    A distance-transform watershed. Seeds are maxima of the (slightly smoothed) distance to
    the background: with ``seed_depth`` 0, every local maximum at least ``min_distance`` from
    another; with ``seed_depth`` d > 0, the regional maxima of depth d (h-maxima) of the
    distance inside the objects (0 outside), so a neck between two parts of one object must
    narrow by d px before it is cut; each voxel then joins the seed of the basin it climbs
    into (:meth:`~napari_tessera.maxima.Basins.seeds`: the objects of a flooding from the
    same seeds, without one). Every connected component is one object at least;
    objects smaller than ``min_size`` pixels (voxels) are dropped. ``spacing``: the step along
    each axis in pixel units (a 3D stack of slices 4 px apart: ``(4, 1, 1)``), so distances
    and smoothing are measured in space, not in voxels. Ids start at ``start``. Returns
    ``(labels as int32, next free id)``.
    """
    fg = np.asarray(foreground, dtype=bool)
    labels = np.zeros(fg.shape, np.int32)
    if not fg.any():
        return labels, start
    spacing = tuple(float(v) for v in spacing) if spacing else (1.0,) * fg.ndim
    full = np.ones((3,) * fg.ndim)
    components, n = ndi.label(fg)
    dist = distance_inside(fg, spacing)
    if smooth > 0:
        dist = parallel.gaussian(dist, [smooth / v for v in spacing])
    if seed_depth > 0:
        # an object's seeds: its own passes, none outside; in place (the steps below read
        # only the objects' voxels), so a stack needs no second copy of the map
        inside = np.multiply(dist, fg, out=dist)
        peaks, basins = deep_maxima(inside, seed_depth)
        markers, n_seeds = ndi.label(peaks & fg, full)
        climb = basins.seeds(markers) if basins is not None else None
    else:
        markers, n_seeds = _peak_seeds(dist, components, min_distance, spacing)
        climb = None
    ws = _watershed_by_component(dist, markers, n_seeds, components, n, climb)
    sizes = np.bincount(ws.ravel())
    sizes[0] = 0
    ids = np.flatnonzero(sizes >= max(min_size, 1))  # smaller objects go to the background
    lut = np.zeros(len(sizes), np.int32)
    lut[ids] = np.arange(start, start + len(ids))
    return parallel.lookup(lut, ws), start + len(ids)


def _watershed_by_component(
    dist, markers, n_seeds: int, components, n: int, climb: Climb | None = None
) -> np.ndarray:
    """``watershed(-dist, markers, mask=components > 0)`` with markers ``1..n_seeds``, the
    same labels, computed one connected component at a time in its bounding box: a
    component with one seed is that object, one with none is an object too (ids from
    ``n_seeds + 1``, in the order of the components), and only the others flood, in their
    boxes, in parallel threads (several times faster on a stack).

    With ``climb`` (each voxel's seed through the basin it climbs into, see
    :meth:`~napari_tessera.maxima.Basins.seeds`), a component takes those seeds instead of
    flooding when they are all its own: the same objects, and the voxels on the rims of
    basins where they climb. Where the basins leave voxels without a seed, those take the
    first seed their climb meets; a component where some are still left floods whole."""
    pos = markers > 0
    comp, mark = components[pos].astype(np.int64), markers[pos].astype(np.int64)
    span = n_seeds + 1
    per = np.bincount(np.unique(comp * span + mark) // span, minlength=n + 1)  # seeds
    lut = np.zeros(n + 1, np.int32)
    lut[comp] = mark
    owner = np.zeros(span, np.int64)  # each seed's component; -1 for one across two
    owner[mark] = comp
    owner[mark[owner[mark] != comp]] = -1
    lut[per > 1] = 0
    unseeded = np.flatnonzero(per[1:] == 0) + 1
    lut[unseeded] = np.arange(span, span + len(unseeded))
    ws = parallel.lookup(lut, components)
    boxes = ndi.find_objects(components)

    def flood(c: int) -> None:
        box = boxes[c - 1]
        mask = components[box] == c
        if climb is not None:
            part = climb(box, mask)
            if _fill_by_climbing(part, box, mask, dist, markers) and np.all(owner[part] == c):
                ws[box][mask] = part
                return
        part = watershed(-dist[box], np.where(mask, markers[box], 0), mask=mask)
        ws[box][mask] = part[mask]  # the components' pixels are disjoint

    todo = np.flatnonzero(per > 1)
    volume = [np.prod([b.stop - b.start for b in boxes[c - 1]]) for c in todo]
    threads = min(parallel.threads_for(int(np.sum(volume))), len(todo))
    if threads <= 1:
        for c in todo:
            flood(c)
        return ws
    todo = todo[np.argsort(volume)[::-1]]  # the largest first, each to the next free thread
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(flood, todo))
    return ws


def _fill_by_climbing(part: np.ndarray, box, mask: np.ndarray, dist, markers) -> bool:
    """Fill the voxels of ``part`` (the ``mask`` voxels of ``box``) that are 0 with the
    first seed among them that each one's climb meets (:func:`first_seed_uphill`); False
    where some are left without a seed."""
    todo = part == 0
    if not todo.any():
        return True
    region = np.zeros(mask.shape, bool)
    region[mask] = todo
    (inner,) = ndi.find_objects(region.view(np.uint8))  # the box of those voxels alone
    region = region[inner]
    height = np.where(region, dist[box][inner], -np.inf)
    part[todo] = first_seed_uphill(height, np.where(region, markers[box][inner], 0))[region]
    return bool(part.all())


def distance_inside(fg: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """float32 distance of each foreground pixel (voxel) to the background, in space
    (``spacing`` per axis); the image border is not background. The ``edt`` package: the
    same values as scipy's exact transform, several times faster on stacks."""
    import edt

    threads = parallel.threads_for(fg.size)
    return edt.edt(fg, anisotropy=tuple(spacing), black_border=False, parallel=threads)


def _peak_seeds(dist, components, min_distance: int, spacing) -> tuple[np.ndarray, int]:
    """Seeds at the local maxima of ``dist`` at least ``min_distance`` px apart in space.

    On a grid with anisotropic steps the neighbourhood spans fewer steps along the longer
    one, and maxima that touch (a plateau between two slices) make one seed."""
    if all(v == 1.0 for v in spacing):
        peaks = peak_local_max(
            dist, min_distance=min_distance, labels=components, exclude_border=False
        )
        markers = np.zeros(dist.shape, np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        return markers, len(peaks)
    reach = [max(1, round(min_distance / v)) for v in spacing]
    footprint = np.ones([2 * r + 1 for r in reach], bool)
    peaks = peak_local_max(dist, footprint=footprint, labels=components, exclude_border=False)
    mask = np.zeros(dist.shape, bool)
    mask[tuple(peaks.T)] = True
    return ndi.label(mask, np.ones((3,) * dist.ndim))


def link_through_z(
    classes: np.ndarray, lead_axes: str, lead_shape: tuple, rule: SplitRule, spacing
) -> np.ndarray:
    """3D objects of a stack of class maps ``(n_slices, Y, X)`` (slices in the order of
    ``lead_shape``): each Z stack (each time point of a TZ series on its own) is split by
    :meth:`SplitRule.labels_3d`; ids are unique over the whole image."""
    z = lead_axes.index("Z")
    cube = classes.reshape((*lead_shape, *classes.shape[-2:]))
    out = np.zeros(cube.shape, ID_DTYPE)
    others = [range(n) for k, n in enumerate(lead_shape) if k != z]
    next_id = 1
    for rest in np.ndindex(*(len(r) for r in others)) if others else [()]:
        index = list(rest)
        index.insert(z, slice(None))
        out[tuple(index)], next_id = rule.labels_3d(cube[tuple(index)], spacing, next_id)
    return out.reshape(classes.shape)


@dataclass(frozen=True)
class Slabs:
    """How a Z stack too deep to link at once is linked: ``depth`` slices at a time, each
    split with ``overlap`` slices of context on either side (``overlap >= 1``)."""

    depth: int
    overlap: int


def link_in_slabs(read, write, n: int, rule: SplitRule, spacing, start: int, slabs: Slabs) -> int:
    """3D objects of a Z stack of ``n`` class maps, a slab at a time; returns the next free id.

    ``read(z0, z1)`` gives class maps ``(z1 - z0, Y, X)``; ``write(z0, labels)`` takes the
    ids of slices ``z0 ...`` (somewhere else than ``read`` reads: slabs overlap). Each slab
    is split by :meth:`SplitRule.labels_3d` with its context; its objects are matched with
    the slab below on the first slice of its core, where the slab below has split its own
    context: an object is the same as the one that covers most of it there (at least half),
    else it gets a new id. This equals linking the whole stack at once (up to the order of
    ids) when the overlap spans the objects, and chains of touching objects, along Z."""
    nxt, below = start, None
    for z0 in range(0, n, slabs.depth):
        z1 = min(n, z0 + slabs.depth)
        a, b = max(0, z0 - slabs.overlap), min(n, z1 + slabs.overlap)
        local, _ = rule.labels_3d(read(a, b), spacing, 1)
        core = local[z0 - a : z1 - a]
        lut = np.zeros(int(local.max()) + 1, np.int64)
        if below is not None:
            _match_below(lut, core[0], below)
        ids = np.unique(core)
        new = ids[(ids > 0) & (lut[ids] == 0)]
        lut[new] = np.arange(nxt, nxt + len(new))
        nxt += len(new)
        write(z0, lut[core].astype(ID_DTYPE))
        below = lut[local[z1 - a]] if z1 < n else None  # our ids on the next slab's first slice
    return nxt


def _match_below(lut: np.ndarray, ours: np.ndarray, below: np.ndarray) -> None:
    """Give each of our objects on a slice the id of the object below that covers at least
    half of it there (the one covering most)."""
    fg = ours > 0
    if not fg.any():
        return
    o, w = ours[fg].astype(np.int64), below[fg].astype(np.int64)
    pairs, counts = np.unique(np.stack([o, w]), axis=1, return_counts=True)
    area = np.bincount(o, minlength=len(lut))
    best = np.zeros(len(lut), np.int64)
    for (mine, theirs), c in zip(pairs.T, counts):
        if theirs and 2 * c >= area[mine] and c > best[mine]:
            best[mine] = c
            lut[mine] = theirs


CLASS_DTYPE = np.dtype(np.uint8)  # per-pixel classes: at most MAX_CLASSES = 256
ID_DTYPE = np.dtype(np.uint32)  # instance ids


def labels_dtype(instances: bool) -> np.dtype:
    """The dtype of labels, the one rule for every output: :func:`napari_tessera.segment`,
    TIFF and zarr files (the CLI, folder runs, :func:`napari_tessera.chunked.segment_to_zarr`,
    dask workers) and the napari layers.

    Per-pixel classes: ``uint8`` (at most 256 classes). Instance ids: ``uint32``, whatever
    the number of objects. A fixed type, not the smallest that holds the largest id, because
    ids are often written before their largest is known (a zarr output slice by slice, one
    slice at a time in napari, whose ids continue after those of the other slices), and a
    result must have the same type wherever it was made. Both are TIFF and napari friendly.
    """
    return ID_DTYPE if instances else CLASS_DTYPE


def offset_ids(labels: np.ndarray, offset: int) -> np.ndarray:
    """Instance ``labels`` (0 = background) with every id raised by ``offset``, as
    :func:`labels_dtype` ids (a new array). More ids than the type holds is an error."""
    from .errors import InputError

    labels = np.asarray(labels)
    offset = int(offset)
    top = int(labels.max()) if labels.size else 0
    if offset < 0 or top + offset > np.iinfo(ID_DTYPE).max:
        raise InputError(f"too many objects: ids up to {top + offset} do not fit in {ID_DTYPE}")
    out = labels.astype(ID_DTYPE)
    if offset and top:
        out[out > 0] += ID_DTYPE.type(offset)
    return out


def ids_after(labels: np.ndarray, stack, index: tuple) -> np.ndarray:
    """Instance ids of one slice, labelled on its own (ids from 1), raised past the ids of
    the other slices of ``stack``, the full labels array the slice goes into at ``index``
    (its indices along the stack axes; ``stack`` None: no other slices), so ids stay unique
    across the stack when slices are segmented one at a time (napari's "current slice")."""
    offset = 0
    if stack is not None:
        per_slice = np.array(np.asarray(stack).max(axis=(-2, -1)))  # the largest id of each
        per_slice[index] = 0
        offset = int(per_slice.max()) if per_slice.size else 0
    return offset_ids(labels, offset)
