"""Patches around annotated pixels, augmentation, and a validation split without leakage.

Validation holds out whole slices when three or more slices are annotated, otherwise square
blocks of the image. A training patch (with the margin its elastic deformation reads, and any
mirrored pixels at the image border) never contains a validation pixel, so the network never
sees validation pixels while it trains.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from ..tiling import mirror_indices
from .labels import IGNORE

ELASTIC_MARGIN = 16  # extra pixels read around a patch so the deformation has real content


class _NoRoom(RuntimeError):
    """No training window avoids the validation blocks."""


@dataclass(frozen=True)
class Region:
    """A validation block: slice ``s``, rows ``y0:y0+size``, columns ``x0:x0+size``."""

    s: int
    y0: int
    x0: int
    size: int


def _window(arr: np.ndarray, y0: int, x0: int, size: int) -> np.ndarray:
    """``arr[..., y0:y0+size, x0:x0+size]`` with mirrored borders."""
    h, w = arr.shape[-2:]
    iy = mirror_indices(y0, y0 + size, h)
    ix = mirror_indices(x0, x0 + size, w)
    return arr[..., iy, :][..., ix]


class PatchSampler:
    """Draws augmented training patches and holds the validation regions.

    images: list of normalised ``(C, Y, X)`` float32 slices.
    classes: list of int64 ``(Y, X)`` targets (``IGNORE`` = not annotated).
    weights: list of float32 ``(Y, X)`` pixel weights, or None.
    """

    def __init__(
        self,
        images: list[np.ndarray],
        classes: list[np.ndarray],
        weights: list[np.ndarray] | None,
        *,
        patch: int,
        val_fraction: float,
        rng: np.random.Generator,
        elastic: bool = True,
    ):
        self.images, self.classes, self.weights = images, classes, weights
        self.patch = patch
        self.rng = rng
        self.elastic = elastic
        self.val_regions = self._split(val_fraction)
        self._val_mask = [np.zeros(c.shape, bool) for c in classes]
        for r in self.val_regions:
            self._val_mask[r.s][r.y0 : r.y0 + r.size, r.x0 : r.x0 + r.size] = True
        self._candidates = self._training_candidates()

    # -- split -----------------------------------------------------------------------------------
    def _split(self, fraction: float) -> list[Region]:
        if fraction <= 0:
            return []
        n = len(self.classes)
        if n >= 3:  # hold out whole slices
            k = max(1, int(round(fraction * n)))
            order = self.rng.permutation(n)
            for start in range(n):
                chosen = sorted(order[(start + np.arange(k)) % n])
                if self._has_both([self.classes[s] for s in chosen]) and self._has_both(
                    [self.classes[s] for s in range(n) if s not in chosen]
                ):
                    return [
                        Region(int(s), y0, x0, self.patch)
                        for s in chosen
                        for y0, x0 in self._grid(self.classes[s].shape, self.patch)
                    ]
            return []
        blocks = []
        vb = max(32, self.patch // 2)  # small blocks keep most annotations for training
        for s, c in enumerate(self.classes):
            for y0, x0 in self._grid(c.shape, vb):
                blk = c[y0 : y0 + vb, x0 : x0 + vb]
                if (blk != IGNORE).any():
                    blocks.append(Region(s, y0, x0, vb))
        if len(blocks) < 3:
            return []
        k = max(1, int(round(fraction * len(blocks))))
        for _ in range(50):
            pick = self.rng.choice(len(blocks), size=k, replace=False)
            val = [blocks[i] for i in sorted(pick)]
            keep = np.ones(len(blocks), bool)
            keep[pick] = False
            if self._has_both([self._crop(r) for r in val]) and self._has_both(
                [self._crop(b) for b, k_ in zip(blocks, keep) if k_]
            ):
                return val
        return []

    @staticmethod
    def _grid(shape, size):
        h, w = shape
        return [(y, x) for y in range(0, h, size) for x in range(0, w, size)]

    def _crop(self, r: Region) -> np.ndarray:
        return self.classes[r.s][r.y0 : r.y0 + r.size, r.x0 : r.x0 + r.size]

    @staticmethod
    def _has_both(arrays) -> bool:
        bg = any((a == 0).any() for a in arrays)
        fg = any((a > 0).any() for a in arrays)
        return bg and fg

    # -- training patches ------------------------------------------------------------------------
    def _training_candidates(self):
        """Flat indices of annotated pixels outside the validation blocks, by class."""
        bg, fg = [], []
        for s, (c, vm) in enumerate(zip(self.classes, self._val_mask)):
            ok = (c != IGNORE) & ~vm
            bg.append((s, np.flatnonzero(ok & (c == 0))))
            fg.append((s, np.flatnonzero(ok & (c > 0))))
        return bg, fg

    def train_pixels_available(self) -> bool:
        bg, fg = self._candidates
        return any(len(b) for _, b in bg) and any(len(f) for _, f in fg)

    def can_place(self) -> bool:
        """Whether training windows of both classes fit beside the validation blocks."""
        if not self.train_pixels_available():
            return False
        state = self.rng.bit_generator.state  # probing must not change the run's randomness
        try:
            for pool in self._candidates:
                self._place(pool)
            return True
        except _NoRoom:
            return False
        finally:
            self.rng.bit_generator.state = state

    def _draw_centre(self, pool) -> tuple[int, int, int]:
        sizes = np.array([len(ix) for _, ix in pool], float)
        s_i = self.rng.choice(len(pool), p=sizes / sizes.sum())
        s, ix = pool[s_i]
        flat = ix[self.rng.integers(len(ix))]
        y, x = np.unravel_index(flat, self.classes[s].shape)
        return s, int(y), int(x)

    def _place(self, pool) -> tuple[int, int, int]:
        """Slice and origin of a window (patch + elastic margin) around an annotated pixel.

        The window is shifted at random so that it contains the pixel but no validation pixel
        (mirrored reads at the image border included); pixels without such a window are
        redrawn.
        """
        size = self.patch + 2 * ELASTIC_MARGIN
        lo, hi = ELASTIC_MARGIN, ELASTIC_MARGIN + self.patch  # the kept patch within the window
        for _ in range(200):
            s, cy, cx = self._draw_centre(pool)
            vm = self._val_mask[s]
            for _ in range(20):
                y0 = cy - int(self.rng.integers(lo, hi))
                x0 = cx - int(self.rng.integers(lo, hi))
                if not vm.any() or not _window(vm, y0, x0, size).any():
                    return s, y0, x0
        raise _NoRoom("no training patch fits beside the validation blocks")

    def sample(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``n`` augmented patches: images ``(n, C, P, P)``, targets ``(n, P, P)``, weights."""
        bg, fg = self._candidates
        xs, ys, ws = [], [], []
        for i in range(n):
            pool = fg if (i % 2 == 0 and any(len(f) for _, f in fg)) else bg
            if not any(len(p) for _, p in pool):
                pool = fg if pool is bg else bg
            s, y0, x0 = self._place(pool)
            m = ELASTIC_MARGIN
            size = self.patch + 2 * m
            img = _window(self.images[s], y0, x0, size)
            tgt = _window(self.classes[s], y0, x0, size)
            wt = _window(self.weights[s], y0, x0, size) if self.weights is not None else None
            img, tgt, wt = augment(img, tgt, wt, self.rng, elastic=self.elastic)
            crop = (slice(m, m + self.patch), slice(m, m + self.patch))
            xs.append(img[(slice(None), *crop)])
            ys.append(tgt[crop])
            if wt is not None:
                ws.append(wt[crop])
        return (
            np.ascontiguousarray(np.stack(xs), dtype=np.float32),
            np.stack(ys).astype(np.int64),
            np.stack(ws).astype(np.float32) if ws else None,
        )

    # -- validation ------------------------------------------------------------------------------
    def validation_batches(self, batch_size: int, context: int = 0):
        """Validation regions in batches: images, targets, weights (no augmentation).

        Each region is read with ``context`` pixels of image around it (mirrored at the image
        border, as inference does). With the network's receptive field as context, the network
        sees a region as it does when it segments the whole image; only the region's own
        annotated pixels are scored. Regions without annotations are skipped.
        """
        regs = [r for r in self.val_regions if (self._crop(r) != IGNORE).any()]
        for i in range(0, len(regs), batch_size):
            part = regs[i : i + batch_size]
            size = part[0].size + 2 * context
            xs = np.stack(
                [_window(self.images[r.s], r.y0 - context, r.x0 - context, size) for r in part]
            )
            ys = []
            for r in part:
                # only the block's own pixels count: not the context, not mirrored pixels
                t = np.full((size, size), IGNORE, np.int64)
                blk = self._crop(r)
                t[context : context + blk.shape[0], context : context + blk.shape[1]] = blk
                ys.append(t)
            ws = None
            if self.weights is not None:
                ws = np.stack(
                    [_window(self.weights[r.s], r.y0 - context, r.x0 - context, size) for r in part]
                )
            yield xs.astype(np.float32), np.stack(ys), ws

    def validation_mask(self, s: int) -> np.ndarray:
        """Boolean mask of the validation pixels of slice ``s``."""
        return self._val_mask[s]


def augment(img, tgt, wt, rng: np.random.Generator, *, elastic: bool = True):
    """Random flips, 90-degree rotations, elastic deformation, intensity scale/offset, noise.

    The elastic deformation follows the U-Net paper: random displacements on a coarse 3x3 grid
    (10 px standard deviation) interpolated smoothly over the patch.
    """
    k = int(rng.integers(4))
    flip = bool(rng.integers(2))

    def geo(a):
        if a is None:
            return None
        a = np.rot90(a, k, axes=(-2, -1))
        return a[..., ::-1] if flip else a

    img, tgt, wt = geo(img), geo(tgt), geo(wt)
    if elastic and rng.random() < 0.5:
        h, w = tgt.shape
        coarse = rng.normal(0, 10.0, size=(2, 3, 3))
        disp = [ndi.zoom(c, (h / 3, w / 3), order=3, mode="nearest")[:h, :w] for c in coarse]
        yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        coords = [yy + disp[0], xx + disp[1]]
        img = np.stack([ndi.map_coordinates(ch, coords, order=1, mode="mirror") for ch in img])
        tgt = ndi.map_coordinates(tgt, coords, order=0, mode="mirror")
        if wt is not None:
            wt = ndi.map_coordinates(wt, coords, order=1, mode="mirror")
    img = img * rng.uniform(0.75, 1.25) + rng.uniform(-0.15, 0.15)
    sigma = rng.uniform(0, 0.05)
    if sigma > 0:
        img = img + rng.normal(0, sigma, size=img.shape)
    return (
        np.ascontiguousarray(img),
        np.ascontiguousarray(tgt),
        (None if wt is None else np.ascontiguousarray(wt)),
    )
