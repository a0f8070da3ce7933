"""Sample data for napari's File > Open Sample menu (plain layer data tuples, no napari import).

- a 2D nuclei image, a ZYX stack of nuclei;
- the 2D image with PARTIAL sparse annotations, as a user would paint them before training:
  label 2 filled into about a dozen nuclei, label 1 on a few background strokes, 0 (not
  annotated) everywhere else.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .synthetic import nuclei_2d, nuclei_3d

SIZE_2D = (512, 512)
SIZE_STACK = (24, 256, 256)
STACK_Z_STEP = 2.0  # the stack's slices are 2 pixels apart


def sparse_annotations(
    truth: np.ndarray, *, n_objects: int = 12, n_strokes: int = 5, seed: int = 0
) -> np.ndarray:
    """Partial annotations of a 2D instance image in the sparse convention.

    ``n_objects`` whole nuclei get label 2; ``n_strokes`` short, 5 px wide strokes in the
    background, at least 4 px away from any nucleus, get label 1; the rest stays 0.
    """
    rng = np.random.default_rng(seed)
    truth = np.asarray(truth)
    out = np.zeros(truth.shape, np.uint8)
    ids = np.unique(truth[truth > 0])
    if ids.size:
        # well-sized nuclei, spread over the image
        sizes = ndi.sum_labels(np.ones_like(truth), truth, ids)
        ok = ids[sizes >= np.percentile(sizes, 25)]
        chosen = rng.choice(ok, size=min(n_objects, ok.size), replace=False)
        out[np.isin(truth, chosen)] = 2
    far = ~ndi.binary_dilation(truth > 0, iterations=4)
    H, W = truth.shape
    yy, xx = np.mgrid[0:H, 0:W]
    made, attempts = 0, 0
    while made < n_strokes and attempts < 200:
        attempts += 1
        y0, x0 = rng.uniform(0.08, 0.92) * H, rng.uniform(0.08, 0.92) * W
        angle = rng.uniform(0, np.pi)
        length = rng.uniform(0.06, 0.12) * min(H, W)
        y1, x1 = y0 + length * np.sin(angle), x0 + length * np.cos(angle)
        # distance of every pixel to the segment (y0, x0)-(y1, x1)
        dy, dx = y1 - y0, x1 - x0
        t = np.clip(((yy - y0) * dy + (xx - x0) * dx) / (dy * dy + dx * dx), 0, 1)
        stroke = (yy - (y0 + t * dy)) ** 2 + (xx - (x0 + t * dx)) ** 2 <= 2.5**2
        stroke &= far
        if stroke.sum() < 0.6 * 5 * length:  # mostly over nuclei: try elsewhere
            continue
        out[stroke & (out == 0)] = 1
        made += 1
    return out


def nuclei_2d_sample():
    s = nuclei_2d(SIZE_2D, seed=0)
    return [
        (s.image, {"name": "nuclei", "colormap": "gray"}, "image"),
    ]


def nuclei_stack_sample():
    """Nuclei in 3D, imaged as a stack of slices twice as far apart as the pixels (the
    layer's scale says so, and Segment links the slices' objects with it)."""
    s = nuclei_3d(SIZE_STACK, anisotropy=STACK_Z_STEP, seed=0)
    scale = (STACK_Z_STEP, 1.0, 1.0)
    return [
        (s.image, {"name": "nuclei stack", "colormap": "gray", "scale": scale}, "image"),
    ]


def nuclei_2d_annotated_sample():
    s = nuclei_2d(SIZE_2D, seed=0)
    return [
        (s.image, {"name": "nuclei", "colormap": "gray"}, "image"),
        (sparse_annotations(s.labels, seed=0), {"name": "nuclei annotations"}, "labels"),
    ]
