"""Intensity normalisation shared by training and inference (its settings live in the model)."""

from __future__ import annotations

import numpy as np

from .config import Normalization
from .errors import InputError

_MAX_SAMPLES = 1 << 22  # percentiles from at most ~4 M evenly strided pixels per channel


def check_dtype(dtype) -> None:
    """Refuse pixel types that are not numbers (strings, objects, complex)."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "biuf":
        raise InputError(f"image pixels must be numbers, got dtype {dtype}")


def percentiles(channel: np.ndarray, low: float, high: float) -> tuple[float, float]:
    """``(p_low, p_high)`` of one 2D channel, from a strided subsample when it is large."""
    step = max(1, int(np.ceil(np.sqrt(channel.size / _MAX_SAMPLES))))
    sample = np.asarray(channel[::step, ::step], dtype=np.float32)
    lo, hi = np.percentile(sample, [low, high])
    return float(lo), float(hi)


def check_finite(arr, where: str = "image") -> None:
    """The one check for NaN or infinite pixels: a one-line error naming ``where``."""
    arr = np.asarray(arr)
    if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
        raise InputError(f"{where} contains NaN or infinite pixels")


def slice_levels(slice_cyx, norm: Normalization, where: str = "image") -> list[tuple[float, float]]:
    """The percentile levels ``(low, high)`` of each channel of a ``(C, Y, X)`` slice.

    Reads only the strided subsample :func:`percentiles` uses, so a lazy slice (zarr, dask)
    is never loaded whole; the values equal those :func:`normalize_slice` computes.
    """
    levels = []
    for c in range(slice_cyx.shape[0]):
        size = int(slice_cyx.shape[1]) * int(slice_cyx.shape[2])
        step = max(1, int(np.ceil(np.sqrt(size / _MAX_SAMPLES))))
        sample = np.asarray(slice_cyx[c, ::step, ::step]).astype(np.float32)
        check_finite(sample, where)
        lo, hi = np.percentile(sample, [norm.low, norm.high])
        levels.append((float(lo), float(hi)))
    return levels


def normalize_slice(
    slice_cyx: np.ndarray,
    norm: Normalization,
    *,
    where: str = "image",
    levels: list[tuple[float, float]] | None = None,
) -> np.ndarray:
    """Percentile-normalise a ``(C, Y, X)`` slice channel by channel to float32.

    ``levels``: ``(low, high)`` per channel to use instead of this array's own percentiles
    (a block of a larger slice is normalised with the levels of the whole slice).
    Raises :class:`InputError` for NaN or infinite pixels; a constant channel becomes zeros.
    """
    arr = np.asarray(slice_cyx)
    check_dtype(arr.dtype)
    out = arr.astype(np.float32, copy=True)
    check_finite(out, where)
    for c in range(out.shape[0]):
        lo, hi = levels[c] if levels is not None else percentiles(out[c], norm.low, norm.high)
        scale = hi - lo
        out[c] -= lo
        if scale > 0:
            out[c] /= scale
        else:  # constant channel: no contrast to normalise
            out[c] = 0.0
    return out
