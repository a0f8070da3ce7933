"""Frozen configuration objects shared by the model, the CLI, the widgets and model files.

Everything here is plain Python: no torch, no Qt. A config is validated when it is built, so a
model file with absurd values (``depth=40``, ``base_channels=10**6``) is refused before any
memory is allocated.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

UPSAMPLING = ("transpose", "bilinear")
PADDING = ("same", "valid")

# Hard bounds that keep a hostile or mistyped config from allocating huge tensors.
MAX_DEPTH = 7
MAX_BASE_CHANNELS = 256
MAX_CHANNELS = 64
MAX_CLASSES = 256


def _check_int(name: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise ConfigError(f"{name} must be between {lo} and {hi}, got {value}")


def _check_float(name: str, value: Any, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if not lo <= float(value) <= hi:
        raise ConfigError(f"{name} must be between {lo} and {hi}, got {value}")


@dataclass(frozen=True)
class Normalization:
    """Per-slice, per-channel percentile normalisation applied before the network.

    ``x -> (x - p_low) / (p_high - p_low)``; a constant slice maps to zeros, never NaN.
    Training and inference read it from the model's config, so they always agree.
    """

    low: float = 1.0
    high: float = 99.8

    def __post_init__(self) -> None:
        _check_float("normalization.low", self.low, 0.0, 100.0)
        _check_float("normalization.high", self.high, 0.0, 100.0)
        if self.low >= self.high:
            raise ConfigError(
                f"normalization.low ({self.low}) must be below normalization.high ({self.high})"
            )


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of the classic U-Net (Ronneberger et al., 2015).

    in_channels: image channels the network reads.
    n_classes: output classes; class 0 is background.
    base_channels: feature maps of the first level (64 in the paper); doubles at every level.
    depth: number of 2x2 max-poolings (4 in the paper).
    upsampling: "transpose" (2x2 transposed convolution) or "bilinear" (+ 1x1 convolution).
    padding: "same" (zero-padded 3x3 convolutions, output size = input size) or "valid" (the
        paper's unpadded convolutions with cropped skips: 572 -> 388 for depth 4).
    dropout: Dropout2d probability at the two deepest levels (0.5 in the paper; 0 = off).
    checkpointing: recompute activations in the backward pass (gradient checkpointing).
    normalization: intensity normalisation applied to inputs (training and inference).
    """

    in_channels: int = 1
    n_classes: int = 2
    base_channels: int = 64
    depth: int = 4
    upsampling: str = "transpose"
    padding: str = "same"
    dropout: float = 0.0
    checkpointing: bool = False
    normalization: Normalization = field(default_factory=Normalization)

    def __post_init__(self) -> None:
        _check_int("in_channels", self.in_channels, 1, MAX_CHANNELS)
        _check_int("n_classes", self.n_classes, 1, MAX_CLASSES)
        _check_int("base_channels", self.base_channels, 1, MAX_BASE_CHANNELS)
        _check_int("depth", self.depth, 0, MAX_DEPTH)
        if self.upsampling not in UPSAMPLING:
            raise ConfigError(f"upsampling must be one of {UPSAMPLING}, got {self.upsampling!r}")
        if self.padding not in PADDING:
            raise ConfigError(f"padding must be one of {PADDING}, got {self.padding!r}")
        _check_float("dropout", self.dropout, 0.0, 1.0)
        if not isinstance(self.checkpointing, bool):
            raise ConfigError(f"checkpointing must be true or false, got {self.checkpointing!r}")
        if not isinstance(self.normalization, Normalization):
            raise ConfigError("normalization must be a Normalization")

    @property
    def size_multiple(self) -> int:
        """Tile origins and 'same'-mode input sizes must be multiples of this (2**depth)."""
        return 2**self.depth

    def channels(self) -> list[int]:
        """Feature maps per level, e.g. [64, 128, 256, 512, 1024]."""
        return [self.base_channels * 2**i for i in range(self.depth + 1)]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> UNetConfig:
        """Build a config from untrusted JSON data; unknown keys and wrong types are refused."""
        if not isinstance(data, dict):
            raise ConfigError("model config must be a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown model config keys: {', '.join(unknown)}")
        kwargs = dict(data)
        norm = kwargs.pop("normalization", None)
        if norm is not None:
            if not isinstance(norm, dict) or set(norm) - {"low", "high"}:
                raise ConfigError("normalization must be an object with 'low' and 'high'")
            kwargs["normalization"] = Normalization(**norm)
        return cls(**kwargs)
