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


def normalize_slice(
    slice_cyx: np.ndarray, norm: Normalization, *, where: str = "image"
) -> np.ndarray:
    """Percentile-normalise a ``(C, Y, X)`` slice channel by channel to float32.

    Raises :class:`InputError` for NaN or infinite pixels; a constant channel becomes zeros.
    """
    arr = np.asarray(slice_cyx)
    check_dtype(arr.dtype)
    out = arr.astype(np.float32, copy=True)
    if out.dtype.kind == "f" and not np.isfinite(out).all():
        raise InputError(f"{where} contains NaN or infinite pixels")
    for c in range(out.shape[0]):
        lo, hi = percentiles(out[c], norm.low, norm.high)
        scale = hi - lo
        out[c] -= lo
        if scale > 0:
            out[c] /= scale
        else:  # constant channel: no contrast to normalise
            out[c] = 0.0
    return out
