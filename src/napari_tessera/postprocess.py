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
