#!/usr/bin/env python
"""Speed of tiled inference against one whole-image forward pass, side by side in one run.

For each network (base width 16 and 64, depth 4) and image size, times:
  whole  - predict_whole: the network once over the whole (reflect-padded) image;
  exact  - predict_tiled with halo="exact" (identical result, to 1e-5);
  halo N - predict_tiled with a smaller halo (faster, approximate near seams),
and reports megapixels per second, the ratio to the whole-image pass, and the largest
probability difference from it. Runs alternate (whole, exact, halo, whole, ...) and the best of
--repeats is kept, so background load on a shared machine affects all settings alike.

    python benchmarks/bench_inference.py --sizes 1024 --widths 16 64 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from napari_tessera import UNet, UNetConfig, __version__
from napari_tessera.inference import predict_tiled, predict_whole
from napari_tessera.synthetic import nuclei_2d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024])
    ap.add_argument("--widths", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--tile-size", type=int, default=None)
    ap.add_argument("--fast-halo", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for width in args.widths:
        torch.manual_seed(0)
        model = UNet(UNetConfig(base_channels=width, depth=4)).eval()
        for size in args.sizes:
            image = nuclei_2d((size, size), seed=1).image
            mp = size * size / 1e6
            runs = {
                "whole": lambda model=model, image=image: predict_whole(model, image),
                "exact": lambda model=model, image=image: predict_tiled(
                    model,
                    image,
                    halo="exact",
                    tile_size=args.tile_size,
                    batch_size=args.batch_size,
                    device="cpu",
                ),
                f"halo {args.fast_halo}": lambda model=model, image=image: predict_tiled(
                    model,
                    image,
                    halo=args.fast_halo,
                    tile_size=args.tile_size,
                    batch_size=args.batch_size,
                    device="cpu",
                ),
            }
            best = {k: float("inf") for k in runs}
            outputs = {}
            for _ in range(args.repeats):
                for name, fn in runs.items():
                    t0 = time.perf_counter()
                    outputs[name] = fn()
                    best[name] = min(best[name], time.perf_counter() - t0)
            ref = outputs["whole"]
            for name in runs:
                row = {
                    "width": width,
                    "size": size,
                    "mode": name,
                    "seconds": round(best[name], 3),
                    "mp_per_s": round(mp / best[name], 3),
                    "vs_whole": round(best["whole"] / best[name], 3),
                    "max_abs_diff": float(np.abs(outputs[name] - ref).max()),
                    "label_agreement": float((outputs[name].argmax(0) == ref.argmax(0)).mean()),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "tessera": __version__,
        "machine": platform.machine(),
        "threads": args.threads,
    }
    print("env", json.dumps(env))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "env": env, "args": vars(args)}, f, indent=1)


if __name__ == "__main__":
    main()
