#!/usr/bin/env python
"""The figure of docs/benchmarks.md: image, paint, Tessera's objects and the human-drawn truth
for one real development image of each group, trained from scratch with the default settings.

    python benchmarks/figure_real.py -o docs/images/real-training.png
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from bench_real import load_case, score
from skimage.io import imsave
from skimage.segmentation import find_boundaries

from napari_tessera import segment
from napari_tessera.training import TrainConfig, train

PAINT = {1: (70, 110, 255), 2: (255, 60, 60)}


def grey(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, (1, 99.8))
    g = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)
    return (np.stack([g] * 3, -1) * 255).astype(np.uint8)


def outlined(base: np.ndarray, labels: np.ndarray, colour=(255, 230, 0)) -> np.ndarray:
    out = base.copy()
    out[find_boundaries(labels, mode="inner")] = colour
    return out


def panel(name: str, seed: int) -> tuple[np.ndarray, float]:
    image, truth, painted = load_case(name, 0)
    res = train(image, painted, config=TrainConfig(seed=seed, device="cpu"))
    pred = segment(res.model, image, instances=True, device="cpu")
    g = grey(image)
    paint = g.copy()
    for value, colour in PAINT.items():
        paint[painted == value] = colour
    half = image.shape[1] // 2
    tiles = [g, paint, outlined(g, pred), outlined(g, truth, (0, 255, 120))]
    for t in tiles:
        t[:, half] = (255, 255, 255)  # left: painted half; right: scored half
    return np.concatenate(tiles, 1), score(truth, pred)["f1"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--images", nargs="+", default=["kc167_095", "macrophagocyte_104", "neurocyte_010"]
    )
    ap.add_argument("-o", "--output", default="docs/images/real-training.png")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = []
    for name in args.images:
        row, f1 = panel(name, args.seed)
        print(f"{name}: F1 {f1:.3f} on the right half")
        rows.append(row)
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0))) for r in rows]
    imsave(args.output, np.concatenate(rows, 0)[::2, ::2], check_contrast=False)


if __name__ == "__main__":
    main()
