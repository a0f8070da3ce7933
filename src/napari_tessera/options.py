"""How to segment: the settings a user picks, as one typed, checked object.

The CLI builds :class:`SegmentOptions` from its arguments and the Segment widget from its
controls; the runners (:mod:`napari_tessera.files`) take it as it is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .errors import InputError

BLENDS = ("crop", "gaussian")
PRECISION_NAMES = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class SegmentOptions:
    """Tiling, device and post-processing settings of a segmentation.

    tile_size: network input per tile, N or (Y, X) pixels; None: automatic.
    halo: context around each tile: "auto" (measured for the model), "exact" (the receptive
        field) or pixels.
    blend: "crop" (each tile's valid centre) or "gaussian".
    instances: one id per object instead of classes; objects under ``min_size`` px dropped.
    edge_offset: pixels to move object edges (positive shrinks); None: the model's own.
    channels: image channels the network reads, in order; None: all (or the model's).
    """

    tile_size: int | tuple[int, int] | None = None
    halo: str | int = "auto"
    blend: str = "crop"
    batch_size: int = 1
    device: str = "auto"
    precision: str = "fp32"
    instances: bool = False
    min_size: int = 8
    edge_offset: float | None = None
    channels: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        halo = self.halo
        if isinstance(halo, str) and halo not in ("auto", "exact"):
            raise InputError(f"halo must be 'auto', 'exact' or pixels, got {halo!r}")
        if not isinstance(halo, str) and (isinstance(halo, bool) or int(halo) != halo or halo < 0):
            raise InputError(f"halo must be a non-negative number of pixels, got {halo!r}")
        if self.blend not in BLENDS:
            raise InputError(f"blend must be one of {', '.join(BLENDS)}, got {self.blend!r}")
        if self.precision not in PRECISION_NAMES:
            raise InputError(
                f"precision must be one of {', '.join(PRECISION_NAMES)}, got {self.precision!r}"
            )
        for name in ("batch_size", "min_size"):
            if getattr(self, name) < 1:
                raise InputError(f"{name.replace('_', ' ')} must be at least 1")
        sizes = self.tile_size if isinstance(self.tile_size, tuple) else (self.tile_size,)
        if self.tile_size is not None and any(s is None or s < 1 for s in sizes):
            raise InputError(f"tile size must be positive, got {self.tile_size}")

    def kwargs(self) -> dict[str, Any]:
        """The settings as the keyword arguments of ``iter_segment`` and
        ``iter_segment_to_zarr``."""
        return asdict(self)
