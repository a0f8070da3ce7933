"""Intensity normalisation shared by training and inference (its settings live in the model)."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from .config import Normalization
from .errors import InputError


class SliceTransform(Protocol):
    """The preprocessing of a model from another tool (see :mod:`napari_tessera.foreign`):
    statistics measured on a whole slice (``levels``), then applied to it or to any block."""

    def levels(self, slice_cyx) -> Any: ...

    def apply(self, slice_cyx: np.ndarray, levels=None) -> np.ndarray: ...


MAX_SAMPLES = 1 << 22  # percentiles from at most ~4 M evenly strided pixels per channel


def check_dtype(dtype) -> None:
    """Refuse pixel types that are not numbers (strings, objects, complex)."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "biuf":
        raise InputError(f"image pixels must be numbers, got dtype {dtype}")


def percentiles(channel: np.ndarray, low: float, high: float) -> tuple[float, float]:
    """``(p_low, p_high)`` of one 2D channel, from a strided subsample when it is large."""
    step = max(1, int(np.ceil(np.sqrt(channel.size / MAX_SAMPLES))))
    sample = np.asarray(channel[::step, ::step], dtype=np.float32)
    lo, hi = np.percentile(sample, [low, high])
    return float(lo), float(hi)


def percentiles_of(x: np.ndarray, qs, axes: tuple[int, ...]) -> np.ndarray:
    """Percentiles ``qs`` (0-100) of ``x`` over ``axes``: shape ``(len(qs), *x.shape)`` with
    the reduced axes kept as 1 (linear interpolation, as numpy and xarray compute them)."""
    return np.percentile(np.asarray(x, np.float32), list(qs), axis=axes, keepdims=True)


def check_finite(arr, where: str = "image") -> None:
    """The one check for NaN or infinite pixels: a one-line error naming ``where``."""
    arr = np.asarray(arr)
    if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
        raise InputError(f"{where} contains NaN or infinite pixels")


def slice_levels(slice_cyx, norm: Normalization | SliceTransform, where: str = "image"):
    """The percentile levels ``(low, high)`` of each channel of a ``(C, Y, X)`` slice (for a
    :class:`SliceTransform`: its statistics).

    Reads only the strided subsample :func:`percentiles` uses, so a lazy slice (zarr, dask)
    is never loaded whole; the values equal those :func:`normalize_slice` computes.
    """
    if not isinstance(norm, Normalization):
        levels = norm.levels(slice_cyx)
        for lv in levels:
            check_finite(lv, where)
        return levels
    levels = []
    for c in range(slice_cyx.shape[0]):
        size = int(slice_cyx.shape[1]) * int(slice_cyx.shape[2])
        step = max(1, int(np.ceil(np.sqrt(size / MAX_SAMPLES))))
        sample = np.asarray(slice_cyx[c, ::step, ::step]).astype(np.float32)
        check_finite(sample, where)
        lo, hi = np.percentile(sample, [norm.low, norm.high])
        levels.append((float(lo), float(hi)))
    return levels


def normalize_slice(
    slice_cyx: np.ndarray,
    norm: Normalization | SliceTransform,
    *,
    where: str = "image",
    levels=None,
) -> np.ndarray:
    """Percentile-normalise a ``(C, Y, X)`` slice channel by channel to float32 (or apply
    the :class:`SliceTransform` of a model from another tool).

    ``levels``: ``(low, high)`` per channel to use instead of this array's own percentiles
    (a block of a larger slice is normalised with the levels of the whole slice).
    Raises :class:`InputError` for NaN or infinite pixels; a constant channel becomes zeros.
    """
    arr = np.asarray(slice_cyx)
    check_dtype(arr.dtype)
    out = arr.astype(np.float32, copy=True)
    check_finite(out, where)
    if not isinstance(norm, Normalization):
        return norm.apply(out, levels)
    for c in range(out.shape[0]):
        lo, hi = levels[c] if levels is not None else percentiles(out[c], norm.low, norm.high)
        scale = hi - lo
        out[c] -= lo
        if scale > 0:
            out[c] /= scale
        else:  # constant channel: no contrast to normalise
            out[c] = 0.0
    return out
