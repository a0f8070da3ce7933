#!/usr/bin/env python
"""How much of the painting a run can train on when it holds out a share for validation.

For every image and training seed, the run's own patch sampler is built (one step of
``train`` with ``val_fraction``; the sampler is read, not the model) and the painted object
pixels that a training patch can reach are counted: a patch, with the margin its elastic
deformation reads and any mirrored pixels, may contain no validation pixel, so a held-out
block keeps the painting around it out of training as well as its own. The paint and images
are bench_real.py's (a dozen whole objects and ten background strokes on the left half).

    python benchmarks/bench_heldout.py --images real synthetic --seeds 0 1 2 \\
        --json benchmarks/results/heldout.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from bench_real import image_names, load_case

import napari_tessera.training.loop as loop
from napari_tessera.training import TrainConfig, train
from napari_tessera.training.edges import painted_objects


def reachable(image, painted, seed: int, val_fraction: float) -> dict:
    """The share of painted object pixels, and the painted objects, a training patch reaches."""
    built = []
    real = loop.PatchSampler

    def spy(*args, **kwargs):
        built.append(real(*args, **kwargs))
        return built[-1]

    loop.PatchSampler = spy
    try:
        cfg = TrainConfig(
            steps=1, seed=seed, device="cpu", val_fraction=val_fraction, calibrate_edges=False
        )
        train(image, painted, config=cfg)
    finally:
        loop.PatchSampler = real
    sampler = built[-1]
    _, fg = sampler._candidates
    can = np.zeros(painted.size, bool)
    can[fg[0][1]] = True
    can = can.reshape(painted.shape)
    objects = painted_objects(painted, "sparse")
    ids = np.unique(objects[objects > 0])
    return {
        "object_pixels": round(float(can[painted >= 2].mean()), 3),
        "objects": int(len(ids)),
        "objects_reached": int(len(np.unique(objects[can & (objects > 0)]))),
        "validation_blocks": len(sampler.val_regions),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", nargs="+", default=["real", "synthetic"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = []
    for name in image_names(args.images):
        image, _, painted = load_case(name, 0)
        for seed in args.seeds:
            share = reachable(image, painted, seed, args.val_fraction)
            row = {"image": name, "seed": seed, **share}
            rows.append(row)
            print(row, flush=True)
    for kind in ("real", "synthetic"):
        group = [r for r in rows if r["image"].startswith("synthetic") == (kind == "synthetic")]
        if group:
            share = [r["object_pixels"] for r in group]
            lost = [r["objects"] - r["objects_reached"] for r in group]
            print(
                f"{kind}: {len(group)} runs, object pixels reached: mean {np.mean(share):.2f}, "
                f"{min(share):.2f}-{max(share):.2f}; painted objects never reached: "
                f"mean {np.mean(lost):.1f}, at most {max(lost)}"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
