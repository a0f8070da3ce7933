"""Geometry of mirrored overlap-tile inference (pure numpy, no torch).

The U-Net paper's strategy: the image is extended by mirroring at its borders, cut into tiles
whose *cores* cover the image exactly once, each tile carrying a halo of context that is cropped
away after the network has run. Tile origins sit on a grid of ``2**depth`` pixels in image
coordinates, so every tile max-pools on the same grid as the whole image would.

Mirroring is done by index arithmetic (:func:`mirror_indices`), never by padding the whole
image, so a tile can be read from any array-like (numpy, memory map, zarr, dask) and a 1-pixel
image works like any other.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .errors import InputError


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def mirror_indices(start: int, stop: int, n: int) -> np.ndarray:
    """Indices ``start..stop-1`` folded into ``0..n-1`` by mirroring without repeating the edge.

    Equals what ``numpy.pad(mode="reflect")`` would place at those positions, for pads of any
    width (also wider than the image). A length-1 axis maps every index to 0.
    """
    idx = np.arange(start, stop)
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    idx = np.mod(idx, period)
    return np.where(idx >= n, period - idx, idx)


@dataclass(frozen=True)
class AxisPlan:
    """Tiling of one axis of length ``size``.

    Tile ``i`` reads input ``[in_start(i), in_start(i) + in_size)`` (mirrored outside the
    image), the network returns ``out_size`` pixels starting at input offset ``out_offset``, and
    the tile keeps output pixels ``[keep_offset, keep_offset + core)``, which land on image
    pixels ``[i * core, (i + 1) * core)`` clipped to the image.
    """

    size: int
    core: int
    n_tiles: int
    in_size: int
    out_offset: int  # input pixel of output pixel 0 (the network's margin; 0 in "same" mode)
    keep_offset: int  # first kept output pixel of a tile

    def in_start(self, i: int) -> int:
        return i * self.core - self.out_offset - self.keep_offset

    def core_span(self, i: int) -> tuple[int, int]:
        start = i * self.core
        return start, min(start + self.core, self.size)


@dataclass(frozen=True)
class Tile:
    """One tile: where it reads (mirrored) and which of its output pixels it writes where."""

    index: tuple[int, int]
    in_y: int  # input window origin in image coordinates (may be negative)
    in_x: int
    dst: tuple[slice, slice]  # image region this tile writes
    src: tuple[slice, slice]  # matching region of the tile's network output


@dataclass(frozen=True)
class TilePlan:
    """Tiling of a ``(height, width)`` slice; see :func:`plan_tiles`."""

    y: AxisPlan
    x: AxisPlan
    multiple: int

    @property
    def tile_shape(self) -> tuple[int, int]:
        return self.y.in_size, self.x.in_size

    @property
    def n_tiles(self) -> int:
        return self.y.n_tiles * self.x.n_tiles

    @property
    def overhead(self) -> float:
        """Network input pixels per image pixel (1.0 = no redundant work)."""
        return self.n_tiles * self.y.in_size * self.x.in_size / (self.y.size * self.x.size)

    def tiles(self) -> Iterator[Tile]:
        for i in range(self.y.n_tiles):
            y0, y1 = self.y.core_span(i)
            for j in range(self.x.n_tiles):
                x0, x1 = self.x.core_span(j)
                ky, kx = self.y.keep_offset, self.x.keep_offset
                yield Tile(
                    index=(i, j),
                    in_y=self.y.in_start(i),
                    in_x=self.x.in_start(j),
                    dst=(slice(y0, y1), slice(x0, x1)),
                    src=(slice(ky, ky + y1 - y0), slice(kx, kx + x1 - x0)),
                )

    def read(self, image: np.ndarray, tile: Tile) -> np.ndarray:
        """Mirrored input window of ``tile`` from ``image`` shaped ``(..., Y, X)``."""
        h, w = image.shape[-2:]
        iy = mirror_indices(tile.in_y, tile.in_y + self.y.in_size, h)
        ix = mirror_indices(tile.in_x, tile.in_x + self.x.in_size, w)
        return _take_yx(image, iy, ix)


def _take_yx(image, iy: np.ndarray, ix: np.ndarray) -> np.ndarray:
    """``image[..., iy, :][..., ix]`` reading only the rows/columns the tile needs.

    Contiguous runs are read as slices (cheap on memory maps, zarr and dask), then the mirror
    permutation is applied in memory.
    """
    ylo, yhi = int(iy.min()), int(iy.max()) + 1
    xlo, xhi = int(ix.min()), int(ix.max()) + 1
    block = np.asarray(image[..., ylo:yhi, xlo:xhi])
    return block[..., iy - ylo, :][..., ix - xlo]


def _axis_plan(size: int, tile: int, *, multiple: int, context: int, geometry) -> AxisPlan:
    """Plan one axis. ``geometry(in_size) -> (out_offset, out_size)`` describes the network."""
    if size < 1:
        raise InputError("image axes must not be empty")
    # Largest core that fits the requested tile, on the pooling grid.
    in_size = max(tile, 1)
    out_offset, out_size = geometry(in_size)
    keep_offset = context + (-(out_offset + context)) % multiple
    max_core = ((out_size - keep_offset - context) // multiple) * multiple
    if max_core < multiple:
        raise InputError(
            f"tile size {tile} leaves no room inside a halo of {context} px; "
            f"use a tile size of at least {keep_offset + context + multiple + 2 * out_offset}"
        )
    # Spread the image evenly over as few tiles as possible.
    n_tiles = math.ceil(size / max_core)
    core = round_up(math.ceil(size / n_tiles), multiple)
    # Shrink the tile to what this core needs.
    if out_offset == 0:
        in_size = core + keep_offset + context
    else:
        in_size = geometry.input_for(core + keep_offset + context)
        out_offset, out_size = geometry(in_size)
    return AxisPlan(size, core, n_tiles, in_size, out_offset, keep_offset)


class _SameGeometry:
    def __call__(self, in_size: int) -> tuple[int, int]:
        return 0, in_size


class _ModelGeometry:
    """Input/output size relation of a "valid"-padding network."""

    def __init__(self, output_size, valid_input_size):
        self._output_size = output_size
        self._valid_input_size = valid_input_size

    def __call__(self, in_size: int) -> tuple[int, int]:
        # Round the requested size down to one the network accepts.
        size = self._valid_input_size(1)
        while self._valid_input_size(self._output_size(size) + 1) <= in_size:
            size = self._valid_input_size(self._output_size(size) + 1)
        out = self._output_size(size)
        return (size - out) // 2, out

    def input_for(self, out_size: int) -> int:
        return self._valid_input_size(out_size)


def plan_tiles(
    shape: tuple[int, int],
    tile_size: int | tuple[int, int],
    *,
    multiple: int,
    halo: int = 0,
    model=None,
) -> TilePlan:
    """Plan tiles for a ``(height, width)`` slice.

    tile_size: network input size per tile (int or ``(ty, tx)``); tiles shrink to fit small images.
    multiple: the pooling grid, ``2**depth``.
    halo: context kept around each core, rounded up so tile origins stay on the pooling grid.
    model: a "valid"-padding :class:`~napari_tessera.UNet`: its own margin comes on top of
        ``halo`` (which such a network only needs with bilinear upsampling).
    """
    ty, tx = (tile_size, tile_size) if np.isscalar(tile_size) else tile_size
    if min(int(ty), int(tx)) <= 0:
        raise InputError(f"tile size must be positive, got {tile_size}")
    if halo < 0:
        raise InputError(f"halo must not be negative, got {halo}")
    if model is not None and model.config.padding == "valid":
        geometry = _ModelGeometry(model.output_size, model.valid_input_size)
    else:
        geometry = _SameGeometry()
    context = round_up(int(halo), multiple)
    y = _axis_plan(int(shape[0]), int(ty), multiple=multiple, context=context, geometry=geometry)
    x = _axis_plan(int(shape[1]), int(tx), multiple=multiple, context=context, geometry=geometry)
    return TilePlan(y, x, multiple)
