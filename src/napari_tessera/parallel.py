"""Steps of splitting objects on large images, in threads: numpy and scipy release the GIL.

Each function gives exactly the values of its one-thread form."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
from scipy import ndimage as ndi

#: below this many voxels (pixels) each step runs in one thread
THREADED_VOXELS = 2**20


def threads_for(voxels: int) -> int:
    """Threads for a step on ``voxels`` that releases the GIL."""
    return max(1, min(4, os.cpu_count() or 1)) if voxels >= THREADED_VOXELS else 1


def lookup(table: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``table[index]``, in parallel threads over slabs of ``index`` when it is large."""
    threads = threads_for(index.size)
    if threads == 1 or index.ndim == 0:
        return table[index]
    out = np.empty(index.shape, table.dtype)
    cuts = np.linspace(0, index.shape[0], threads + 1).astype(int)

    def part(k: int) -> None:
        np.take(table, index[cuts[k] : cuts[k + 1]], out=out[cuts[k] : cuts[k + 1]])

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(part, range(threads)))
    return out


def gaussian(image: np.ndarray, sigmas: list[float]) -> np.ndarray:
    """``ndi.gaussian_filter(image, sigmas)``, the same values, in parallel threads: one
    axis at a time, each thread filtering a slab cut across another axis."""
    threads = threads_for(image.size)
    if image.ndim < 2 or threads == 1:
        return ndi.gaussian_filter(image, sigmas)
    out = np.array(image, copy=True)
    with ThreadPoolExecutor(threads) as pool:
        for axis, sigma in enumerate(sigmas):
            across = 1 if axis == 0 else 0
            cuts = np.linspace(0, image.shape[across], threads + 1).astype(int)
            slabs = []
            for lo, hi in zip(cuts[:-1], cuts[1:]):
                index = [slice(None)] * image.ndim
                index[across] = slice(lo, hi)
                slabs.append(out[tuple(index)])
            list(pool.map(partial(_filter_in_place, axis=axis, sigma=sigma), slabs))
    return out


def _filter_in_place(part: np.ndarray, axis: int, sigma: float) -> None:
    ndi.gaussian_filter1d(part, sigma, axis=axis, output=part)
