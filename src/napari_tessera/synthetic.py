"""Deterministic synthetic fluorescence-nuclei images with ground truth (no downloads needed).

Nuclei are ellipses of varied size, shape and brightness with inner texture, many of them
touching; the image is blurred by a Gaussian point-spread function, lit unevenly, and recorded
with Poisson shot noise, Gaussian read noise and a camera offset, as 16-bit counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi


@dataclass(frozen=True)
class SyntheticNuclei:
    image: np.ndarray  # uint16 (Y, X) or (Z, Y, X)
    labels: np.ndarray  # instance ids, 0 = background


def _ellipse_mask(shape, cy, cx, ry, rx, angle):
    y0, y1 = int(max(cy - max(ry, rx) - 2, 0)), int(min(cy + max(ry, rx) + 3, shape[0]))
    x0, x1 = int(max(cx - max(ry, rx) - 2, 0)), int(min(cx + max(ry, rx) + 3, shape[1]))
    yy, xx = np.mgrid[y0:y1, x0:x1]
    c, s = np.cos(angle), np.sin(angle)
    dy, dx = yy - cy, xx - cx
    u = (dx * c + dy * s) / rx
    v = (-dx * s + dy * c) / ry
    return (slice(y0, y1), slice(x0, x1)), (u * u + v * v) <= 1.0


def nuclei_2d(
    shape: tuple[int, int] = (256, 256),
    *,
    n_nuclei: int | None = None,
    radius: tuple[float, float] = (6.0, 11.0),
    touching: float = 0.35,
    snr: float = 1.0,
    seed: int = 0,
) -> SyntheticNuclei:
    """One 2D fluorescence image of nuclei with its instance labels.

    n_nuclei: how many to place (default: about a third of the area covered).
    radius: range of the nuclei's mean radius in pixels.
    touching: fraction of nuclei placed against a neighbour (touching or slightly overlapping).
    snr: scales the signal; lower is noisier.
    """
    rng = np.random.default_rng(seed)
    H, W = shape
    mean_area = np.pi * np.mean(radius) ** 2
    if n_nuclei is None:
        n_nuclei = max(1, int(0.3 * H * W / mean_area))
    labels = np.zeros(shape, np.int32)
    signal = np.zeros(shape, np.float32)
    centres: list[tuple[float, float, float]] = []
    next_id = 1
    attempts = 0
    while next_id <= n_nuclei and attempts < n_nuclei * 30:
        attempts += 1
        r = rng.uniform(*radius)
        ecc = rng.uniform(0.7, 1.0)
        ry, rx = r * ecc, r / ecc
        angle = rng.uniform(0, np.pi)
        if centres and rng.random() < touching:
            py, px, pr = centres[rng.integers(len(centres))]
            theta = rng.uniform(0, 2 * np.pi)
            d = (pr + r) * rng.uniform(0.8, 0.98)
            cy, cx = py + d * np.sin(theta), px + d * np.cos(theta)
        else:
            cy, cx = rng.uniform(0, H), rng.uniform(0, W)
        if not (0 <= cy < H and 0 <= cx < W):
            continue
        sl, mask = _ellipse_mask(shape, cy, cx, ry, rx, angle)
        region = labels[sl]
        overlap = (region[mask] > 0).mean() if mask.any() else 1.0
        if not mask.any() or overlap > 0.15:
            continue
        free = mask & (region == 0)
        region[free] = next_id
        brightness = rng.uniform(0.5, 1.0)
        signal[sl][free] = brightness
        centres.append((cy, cx, r))
        next_id += 1
    # inner texture (chromatin) and a brighter rim-free interior
    texture = ndi.gaussian_filter(rng.normal(size=shape).astype(np.float32), 1.5)
    texture /= texture.std() + 1e-6
    signal = signal * (1.0 + 0.15 * texture) * (labels > 0)
    # optics, uneven illumination, camera
    blurred = ndi.gaussian_filter(signal, 1.6)
    yy, xx = np.mgrid[0:H, 0:W] / max(H, W)
    gy, gx = rng.uniform(-1, 1, size=2)
    illumination = 1.0 + 0.45 * (gy * (yy - 0.5) + gx * (xx - 0.5)) * 2
    illumination = np.clip(illumination, 0.35, None)
    photons = 220.0 * snr * blurred * illumination + 12.0  # background autofluorescence
    counts = rng.poisson(photons).astype(np.float32) + rng.normal(100.0, 4.0, size=shape)
    image = np.clip(counts, 0, 65535).astype(np.uint16)
    return SyntheticNuclei(image=image, labels=labels.astype(np.uint16))


def nuclei_stack(
    shape: tuple[int, int, int] = (5, 192, 192), *, seed: int = 0, **kwargs
) -> SyntheticNuclei:
    """A ZYX stack: each slice its own field of nuclei (2D segmentation works per slice)."""
    slices = [nuclei_2d(shape[1:], seed=seed + 1000 * z, **kwargs) for z in range(shape[0])]
    labels = np.stack([s.labels.astype(np.int32) for s in slices])
    offset = 0
    for z in range(shape[0]):
        mask = labels[z] > 0
        labels[z][mask] += offset
        offset = max(offset, int(labels[z].max()))
    return SyntheticNuclei(
        image=np.stack([s.image for s in slices]),
        labels=labels.astype(np.uint32 if offset > 65535 else np.uint16),
    )


def nuclei_3d(
    shape: tuple[int, int, int] = (32, 128, 128),
    *,
    anisotropy: float = 1.0,
    radius: tuple[float, float] = (6.0, 10.0),
    touching: float = 0.5,
    snr: float = 1.0,
    seed: int = 0,
) -> SyntheticNuclei:
    """A ZYX stack of nuclei as ellipsoids, with its 3D instance labels.

    ``anisotropy``: the Z step over the Y/X pixel size (a stack of 1 um slices imaged at
    0.25 um pixels has 4); nuclei are round in space, so they span fewer slices than pixels.
    ``touching``: the share of nuclei placed against a neighbour, in any direction (above
    or below one too, so that objects touch across Z). The image is blurred by an
    anisotropic point-spread function (wider in Z) and recorded with shot and read noise.
    """
    rng = np.random.default_rng(seed)
    Z, H, W = shape
    depth = Z * anisotropy  # in pixel units
    mean_vol = 4 / 3 * np.pi * np.mean(radius) ** 3
    n_nuclei = max(1, int(0.25 * depth * H * W / mean_vol))
    zz, yy, xx = np.meshgrid(
        np.arange(Z) * anisotropy, np.arange(H), np.arange(W), indexing="ij", sparse=True
    )
    labels = np.zeros(shape, np.int32)
    signal = np.zeros(shape, np.float32)
    centres: list[tuple[float, float, float, float]] = []
    next_id, attempts = 1, 0
    while next_id <= n_nuclei and attempts < n_nuclei * 30:
        attempts += 1
        r = rng.uniform(*radius)
        axes_r = r * rng.uniform(0.8, 1.2, size=3)
        if centres and rng.random() < touching:
            pz, py, px, pr = centres[rng.integers(len(centres))]
            v = rng.normal(size=3)
            v /= np.linalg.norm(v) + 1e-9
            d = (pr + r) * rng.uniform(0.85, 0.98)
            cz, cy, cx = pz + d * v[0], py + d * v[1], px + d * v[2]
        else:
            cz, cy, cx = rng.uniform(0, depth), rng.uniform(0, H), rng.uniform(0, W)
        if not (0 <= cz < depth and 0 <= cy < H and 0 <= cx < W):
            continue
        box = tuple(
            slice(max(int((c - r_) / step), 0), min(int((c + r_) / step) + 2, n))
            for c, r_, step, n in zip((cz, cy, cx), axes_r, (anisotropy, 1, 1), shape)
        )
        inside = (
            ((zz[box[0]] - cz) / axes_r[0]) ** 2
            + ((yy[:, box[1]] - cy) / axes_r[1]) ** 2
            + ((xx[:, :, box[2]] - cx) / axes_r[2]) ** 2
        ) <= 1.0
        region = labels[box]
        if not inside.any() or (region[inside] > 0).mean() > 0.15:
            continue
        free = inside & (region == 0)
        region[free] = next_id
        signal[box][free] = rng.uniform(0.5, 1.0)
        centres.append((cz, cy, cx, r))
        next_id += 1
    texture = ndi.gaussian_filter(rng.normal(size=shape).astype(np.float32), 1.5)
    texture /= texture.std() + 1e-6
    signal = signal * (1.0 + 0.15 * texture) * (labels > 0)
    blurred = ndi.gaussian_filter(signal, (2.4 / anisotropy, 1.6, 1.6))
    photons = 220.0 * snr * blurred + 12.0
    counts = rng.poisson(photons).astype(np.float32) + rng.normal(100.0, 4.0, size=shape)
    image = np.clip(counts, 0, 65535).astype(np.uint16)
    return SyntheticNuclei(image=image, labels=labels.astype(np.uint32))
