"""How to segment: the settings a user picks, as one typed, checked object.

The CLI builds :class:`SegmentOptions` from its arguments, the Segment widget from its
controls, and the Python functions (``segment(..., halo="exact")``) from their keyword
arguments. It is checked once, where it is built, and flows unchanged to the tiler
(:func:`~napari_tessera.inference.iter_slice_predictions`), the zarr runner and the dask
workers.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields, replace
from typing import Any

from .axes import parse_channels
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
    min_size: the smallest object kept, in pixels (voxels for 3D objects); None: the model's
        own (a model trained here stores a fifth of its median painted object), else 8.
    link_z: with instances, the objects of a Z stack's slices are linked into 3D objects
        (one watershed through the stack; time points are never linked); False: each slice's
        objects on their own.
    voxel_size: the (Z, Y, X) size of a voxel, in any one unit, for linking through Z
        (a Z step larger than the pixels spans fewer slices per object); None: cubic.
    edge_offset: pixels to move object edges (positive shrinks); None: the model's own.
    seed_depth: how deep a neck must be before touching objects are cut apart; None: the
        model's own.
    channels: image channels the network reads, in order (``(1, 0)`` or ``"1,0"``); None:
        all (or those the model stores).
    """

    tile_size: int | tuple[int, int] | None = None
    halo: str | int = "auto"
    blend: str = "crop"
    batch_size: int = 1
    device: str = "auto"
    precision: str = "fp32"
    instances: bool = False
    link_z: bool = True
    voxel_size: tuple[float, float, float] | None = None
    min_size: int | None = None
    edge_offset: float | None = None
    seed_depth: float | None = None
    channels: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", parse_channels(self.channels))
        if self.voxel_size is not None:
            size = tuple(float(v) for v in self.voxel_size)
            if len(size) != 3 or not all(math.isfinite(v) and v > 0 for v in size):
                raise InputError(
                    f"voxel size must be three positive numbers (Z, Y, X), got {self.voxel_size!r}"
                )
            object.__setattr__(self, "voxel_size", size)
        halo = self.halo
        if isinstance(halo, str):
            object.__setattr__(self, "halo", halo.lower())
            halo = self.halo
        if isinstance(halo, str) and halo not in ("auto", "exact"):
            raise InputError(f"halo must be 'auto', 'exact' or pixels, got {halo!r}")
        if not isinstance(halo, str):
            if isinstance(halo, bool) or not isinstance(halo, numbers.Integral) or halo < 0:
                raise InputError(
                    f"halo must be 'auto', 'exact' or a non-negative number of pixels, got {halo!r}"
                )
            object.__setattr__(self, "halo", int(halo))
        if self.blend not in BLENDS:
            raise InputError(f"blend must be one of {', '.join(BLENDS)}, got {self.blend!r}")
        if self.precision not in PRECISION_NAMES:
            raise InputError(
                f"precision must be one of {', '.join(PRECISION_NAMES)}, got {self.precision!r}"
            )
        counts = {"batch_size": self.batch_size}
        if self.min_size is not None:  # None: the model's own
            counts["min_size"] = self.min_size
        for name, v in counts.items():
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
                raise InputError(f"{name.replace('_', ' ')} must be a positive integer, got {v!r}")
        if isinstance(self.tile_size, list):
            object.__setattr__(self, "tile_size", tuple(self.tile_size))
        sizes = self.tile_size if isinstance(self.tile_size, tuple) else (self.tile_size,)
        if self.tile_size is not None and any(
            isinstance(t, bool) or not isinstance(t, numbers.Integral) or t < 1 for t in sizes
        ):
            raise InputError(f"tile size must be positive pixels, got {self.tile_size!r}")

    @property
    def spacing(self) -> tuple[float, float, float]:
        """The (Z, Y, X) voxel steps in pixel units (the Y/X pixel is 1)."""
        if self.voxel_size is None:
            return (1.0, 1.0, 1.0)
        z, y, x = self.voxel_size
        pixel = (y + x) / 2
        return (z / pixel, y / pixel, x / pixel)

    @classmethod
    def build(cls, options: SegmentOptions | None = None, **settings: Any) -> SegmentOptions:
        """``options`` (or the defaults) with ``settings`` changed, e.g. from a function's
        keyword arguments; an unknown setting is an error that names it."""
        known = {f.name for f in fields(cls)}
        bad = sorted(set(settings) - known)
        if bad:
            raise TypeError(f"unexpected keyword argument {bad[0]!r}")
        if options is None:
            return cls(**settings)
        return replace(options, **settings) if settings else options
