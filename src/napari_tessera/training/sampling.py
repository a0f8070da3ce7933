"""Patches around annotated pixels, augmentation, and a validation split without leakage.

Validation holds out whole slices (whole images of a set) when five or more slices are
annotated, otherwise square blocks of each slice, so a few painted images all train. A
training patch (with the margin its elastic deformation reads, and any mirrored pixels at the
image border) never contains a validation pixel, so the network never sees validation pixels
while it trains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy import ndimage as ndi

from ..tiling import mirror_indices
from .labels import IGNORE

ELASTIC_MARGIN = 16  # extra pixels read around a patch so the deformation has real content
WHOLE_SLICES_FROM = 5  # annotated slices from which validation holds out whole ones


class _NoRoom(RuntimeError):
    """No training window avoids the validation blocks."""


class Batch(NamedTuple):
    """Training patches: images, targets, pixel weights (or None), soft targets (or None)."""

    x: np.ndarray
    y: np.ndarray
    w: np.ndarray | None
    soft: np.ndarray | None = None


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
    soft: list of float32 ``(n_classes, Y, X)`` class probabilities to keep where nothing is
        painted (a starting model's own predictions, when fine-tuning), or None.
    held_out: list of boolean ``(Y, X)`` masks of pixels no training window may read, on top
        of the validation regions drawn by ``val_fraction`` (e.g. pixels kept for a separate
        test), or None. :meth:`validation_mask` includes them.
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
        soft: list[np.ndarray] | None = None,
        held_out: list[np.ndarray] | None = None,
    ):
        self.images, self.classes, self.weights = images, classes, weights
        self.soft = soft
        self.patch = patch
        self.rng = rng
        self.elastic = elastic
        self.val_regions = self._split(val_fraction)
        if held_out is None:
            self._val_mask = [np.zeros(c.shape, bool) for c in classes]
        else:
            self._val_mask = [np.array(m, bool) for m in held_out]
            if [m.shape for m in self._val_mask] != [c.shape for c in classes]:
                raise ValueError("held_out needs one (Y, X) mask per slice, shaped like it")
        for r in self.val_regions:
            self._val_mask[r.s][r.y0 : r.y0 + r.size, r.x0 : r.x0 + r.size] = True
        self._candidates = self._training_candidates()
        self.last_windows: list[tuple[int, int, int]] = []

    # -- split -----------------------------------------------------------------------------------
    def _split(self, fraction: float) -> list[Region]:
        if fraction <= 0:
            return []
        n = len(self.classes)
        if n >= WHOLE_SLICES_FROM:  # hold out whole slices
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
    def _clean_origins(self, s: int) -> np.ndarray:
        """Which window origins of slice ``s`` read no validation pixel (mirrored reads too).

        Entry ``[a, b]`` is the window with origin ``(a - hi + 1, b - hi + 1)``, where ``hi`` is
        the elastic margin plus the patch: every origin that a window around an image pixel can
        have. Computed once per slice with two running maxima along each axis.
        """
        if s not in self._clean:
            vm = self._val_mask[s]
            h, w = vm.shape
            size = self.patch + 2 * ELASTIC_MARGIN
            lo, hi = ELASTIC_MARGIN, ELASTIC_MARGIN + self.patch
            iy = mirror_indices(-hi + 1, h - lo - 1 + size, h)
            ix = mirror_indices(-hi + 1, w - lo - 1 + size, w)
            dirty = vm[iy][:, ix].view(np.uint8)
            # any(P[a : a + size]) along each axis; a running maximum centred on size // 2
            for axis, n in ((0, h), (1, w)):
                dirty = ndi.maximum_filter1d(dirty, size, axis=axis, mode="constant")
                dirty = np.take(dirty, np.arange(size // 2, size // 2 + n + self.patch - 1), axis)
            self._clean[s] = dirty == 0
        return self._clean[s]

    def _placeable(self, s: int) -> np.ndarray:
        """Pixels of slice ``s`` that some training window contains without a validation pixel."""
        clean = self._clean_origins(s).view(np.uint8)
        h, w = self._val_mask[s].shape
        p = self.patch
        # pixel (y, x) may use the origins clean[y : y + p, x : x + p]
        for axis, n in ((0, h), (1, w)):
            clean = ndi.maximum_filter1d(clean, p, axis=axis, mode="constant")
            clean = np.take(clean, np.arange(p // 2, p // 2 + n), axis)
        return clean > 0

    def _training_candidates(self):
        """Flat indices of annotated pixels that a training window can hold, by class.

        A pixel counts when at least one window around it (patch plus elastic margin, mirrored
        at the image border) reads no validation pixel, so drawing a window never fails.
        """
        self._clean: dict[int, np.ndarray] = {}
        bg, fg = [], []
        for s, (c, vm) in enumerate(zip(self.classes, self._val_mask)):
            ok = (c != IGNORE) & ~vm
            if vm.any() and ok.any():
                ok &= self._placeable(s)
            bg.append((s, np.flatnonzero(ok & (c == 0))))
            fg.append((s, np.flatnonzero(ok & (c > 0))))
        return bg, fg

    def can_place(self) -> bool:
        """Whether training windows of both classes fit beside the validation blocks."""
        bg, fg = self._candidates
        return any(len(b) for _, b in bg) and any(len(f) for _, f in fg)

    def _draw_centre(self, pool) -> tuple[int, int, int]:
        sizes = np.array([len(ix) for _, ix in pool], float)
        s_i = self.rng.choice(len(pool), p=sizes / sizes.sum())
        s, ix = pool[s_i]
        flat = ix[self.rng.integers(len(ix))]
        y, x = np.unravel_index(flat, self.classes[s].shape)
        return s, int(y), int(x)

    def _place(self, pool) -> tuple[int, int, int]:
        """Slice and origin of a window (patch + elastic margin) around an annotated pixel.

        The window is shifted at random, uniformly among the shifts that keep the pixel inside
        the patch and every validation pixel (mirrored reads at the image border included)
        outside the window.
        """
        if not any(len(ix) for _, ix in pool):
            raise _NoRoom("no training patch fits beside the validation blocks")
        lo, hi = ELASTIC_MARGIN, ELASTIC_MARGIN + self.patch  # the kept patch within the window
        s, cy, cx = self._draw_centre(pool)
        if not self._val_mask[s].any():
            return s, cy - int(self.rng.integers(lo, hi)), cx - int(self.rng.integers(lo, hi))
        box = self._clean_origins(s)[cy : cy + self.patch, cx : cx + self.patch]
        options = np.flatnonzero(box)
        dy, dx = np.unravel_index(options[self.rng.integers(len(options))], box.shape)
        return s, cy - hi + 1 + int(dy), cx - hi + 1 + int(dx)

    def sample(self, n: int) -> Batch:
        """``n`` augmented patches: images ``(n, C, P, P)``, targets ``(n, P, P)``, weights
        ``(n, P, P)`` and soft targets ``(n, K, P, P)`` where the sampler has them.

        ``last_windows`` then holds where each patch was read: ``(slice, y0, x0)``, the origin
        of the window (the patch with ``ELASTIC_MARGIN`` pixels around it, before augmentation;
        mirrored at the image border where it reaches past it)."""
        bg, fg = self._candidates
        xs, ys, ws, ss = [], [], [], []
        windows = []
        for i in range(n):
            pool = fg if (i % 2 == 0 and any(len(f) for _, f in fg)) else bg
            if not any(len(p) for _, p in pool):
                pool = fg if pool is bg else bg
            s, y0, x0 = self._place(pool)
            windows.append((s, y0, x0))
            m = ELASTIC_MARGIN
            size = self.patch + 2 * m
            img = _window(self.images[s], y0, x0, size)
            tgt = _window(self.classes[s], y0, x0, size)
            wt = _window(self.weights[s], y0, x0, size) if self.weights is not None else None
            soft = None
            if self.soft is not None:
                soft = _window(self.soft[s], y0, x0, size).astype(np.float32)
            img, tgt, wt, soft = augment(img, tgt, wt, self.rng, elastic=self.elastic, soft=soft)
            crop = (slice(m, m + self.patch), slice(m, m + self.patch))
            xs.append(img[(slice(None), *crop)])
            ys.append(tgt[crop])
            if wt is not None:
                ws.append(wt[crop])
            if soft is not None:
                ss.append(soft[(slice(None), *crop)])
        self.last_windows = windows
        return Batch(
            np.ascontiguousarray(np.stack(xs), dtype=np.float32),
            np.stack(ys).astype(np.int64),
            np.stack(ws).astype(np.float32) if ws else None,
            np.stack(ss).astype(np.float32) if ss else None,
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


def augment(img, tgt, wt, rng: np.random.Generator, *, elastic: bool = True, soft=None):
    """Random flips, 90-degree rotations, elastic deformation, intensity scale/offset, noise.

    The elastic deformation follows the U-Net paper: random displacements on a coarse 3x3 grid
    (10 px standard deviation) interpolated smoothly over the patch. Weights ``wt`` and soft
    targets ``soft`` ``(K, Y, X)`` move with the pixels (they are not intensities). Returns
    ``(img, tgt, wt, soft)``.
    """
    k = int(rng.integers(4))
    flip = bool(rng.integers(2))

    def geo(a):
        if a is None:
            return None
        a = np.rot90(a, k, axes=(-2, -1))
        return a[..., ::-1] if flip else a

    img, tgt, wt, soft = geo(img), geo(tgt), geo(wt), geo(soft)
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
        if soft is not None:
            soft = np.stack([ndi.map_coordinates(c, coords, order=1, mode="mirror") for c in soft])
    img = img * rng.uniform(0.75, 1.25) + rng.uniform(-0.15, 0.15)
    sigma = rng.uniform(0, 0.05)
    if sigma > 0:
        img = img + rng.normal(0, sigma, size=img.shape)
    return (
        np.ascontiguousarray(img),
        np.ascontiguousarray(tgt),
        (None if wt is None else np.ascontiguousarray(wt)),
        (None if soft is None else np.ascontiguousarray(soft)),
    )
