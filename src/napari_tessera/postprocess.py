"""From class probabilities to labels: per-pixel classes or one id per object."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.segmentation import watershed


def classes_from_probabilities(prob: np.ndarray) -> np.ndarray:
    """Per-pixel class, 0 = background. ``prob`` is ``(n_classes, ...)``.

    One output channel (sigmoid) means foreground probability: class 1 where it exceeds 0.5.
    """
    if prob.shape[0] == 1:
        return (prob[0] > 0.5).astype(np.uint8)
    dtype = np.uint8 if prob.shape[0] <= 256 else np.uint16
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


def resolve_edge_offset(model, edge_offset) -> float:
    """``edge_offset`` if given (None: the model's own)."""
    if edge_offset is None:
        return model_edge_offset(model)
    return check_edge_offset(edge_offset)


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


def instances_from_classes(
    classes: np.ndarray, *, edge_offset: float = 0.0, min_size: int = 8, start: int = 1
) -> tuple[np.ndarray, int]:
    """One id per object of a 2D class map: edges moved by ``edge_offset`` (see
    :func:`shift_edges`), then :func:`split_instances`."""
    return split_instances(shift_edges(classes, edge_offset) > 0, min_size=min_size, start=start)


def split_instances(
    foreground: np.ndarray,
    *,
    min_distance: int = 3,
    smooth: float = 1.0,
    min_size: int = 8,
    start: int = 1,
) -> tuple[np.ndarray, int]:
    """Split a 2D foreground mask into objects; touching objects are cut apart.

    A distance-transform watershed: seeds are the maxima of the (slightly smoothed) distance to
    the background at least ``min_distance`` apart, one per connected component at least;
    objects smaller than ``min_size`` pixels are dropped. Ids start at ``start``.
    Returns ``(labels as int32, next free id)``.
    """
    fg = np.asarray(foreground, dtype=bool)
    labels = np.zeros(fg.shape, np.int32)
    if not fg.any():
        return labels, start
    components, n = ndi.label(fg)
    dist = ndi.distance_transform_edt(fg)
    if smooth > 0:
        dist = ndi.gaussian_filter(dist, smooth)
    peaks = peak_local_max(dist, min_distance=min_distance, labels=components, exclude_border=False)
    markers = np.zeros(fg.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    # every component gets at least one seed
    seeded = np.unique(components[markers > 0])
    missing = np.setdiff1d(np.arange(1, n + 1), seeded)
    if missing.size:
        coms = ndi.maximum_position(dist, components, missing)
        for k, pos in enumerate(coms):
            markers[pos] = len(peaks) + 1 + k
    ws = watershed(-dist, markers, mask=fg)
    if min_size > 1:
        sizes = np.bincount(ws.ravel())
        small = sizes < min_size
        small[0] = False
        ws[small[ws]] = 0
    ids = np.unique(ws)
    ids = ids[ids > 0]
    lut = np.zeros(int(ws.max()) + 1, np.int32)
    lut[ids] = np.arange(start, start + len(ids))
    labels = lut[ws]
    return labels, start + len(ids)


def labels_dtype(max_id: int):
    """Smallest unsigned type that holds ``max_id`` (TIFF and napari friendly)."""
    for dt in (np.uint8, np.uint16, np.uint32):
        if max_id <= np.iinfo(dt).max:
            return dt
    return np.uint64
