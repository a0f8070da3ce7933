#!/usr/bin/env python
"""Stacks against MONAI's SliceInferer (B4) and training throughput, side by side in one run.

B4: a ZYX stack (uint16 synthetic nuclei slices) through `predict_tiled(axes="ZYX")` with its
defaults (``--halo`` sets the halo: auto, exact or pixels), and through
`monai.inferers.SliceInferer` (roi 512, overlap 0.25, Gaussian blending, reflect padding,
sw_batch_size 1 and 4, slicing along Z) on the same network, with the same per-slice
percentile normalisation and softmax inside the timing.

Training: optimiser steps per second of `iter_train` (fp32 on the CPU; autocast on a GPU) for
base widths 16 and 64, depth 4, 128-pixel patches (the CPU default), batches of the default
size (4 on the CPU) or ``--train-batch``, no validation, after two warm-up steps.

    python benchmarks/bench_stack_train.py --depth 8 --size 1024 --widths 16 64 --halo exact \
        --train-batch 8 --json benchmarks/results/stack_train.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch
from _results import report  # noqa: E402  (benchmarks/, on sys.path when run)
from bench_speed import make_network  # noqa: E402  (benchmarks/ is the script's folder)

from napari_tessera import __version__
from napari_tessera.inference import predict_tiled
from napari_tessera.normalize import normalize_slice
from napari_tessera.synthetic import nuclei_2d, nuclei_stack
from napari_tessera.training import TrainConfig, iter_train


def monai_slices(model, stack: np.ndarray, sw_batch_size: int):
    from monai.inferers import SliceInferer

    inferer = SliceInferer(
        roi_size=(512, 512),
        sw_batch_size=sw_batch_size,
        spatial_dim=0,
        overlap=0.25,
        mode="gaussian",
        padding_mode="reflect",
    )

    def run():
        norm = np.stack([normalize_slice(s[None], model.config.normalization)[0] for s in stack])
        x = torch.from_numpy(norm)[None, None]  # (1, 1, Z, Y, X)
        with torch.inference_mode():
            return torch.softmax(inferer(x, model), dim=1)[0].numpy()

    return run


def train_speed(width: int, steps: int, device: str, batch: int | None = None) -> dict:
    s = nuclei_2d((512, 512), seed=3)
    labels = np.where(s.labels > 0, 2, 1).astype(np.uint8)
    cfg = TrainConfig(
        steps=steps + 2,
        base_channels=width,
        depth=4,
        val_fraction=0.0,
        device=device,
        seed=0,
        batch_size=batch,
    )
    times = []
    for u in iter_train(s.image, labels, config=cfg):
        times.append(u.elapsed)
    per_step = (times[-1] - times[1]) / (len(times) - 2)
    return {
        "width": width,
        "steps_timed": len(times) - 2,
        "seconds_per_step": round(per_step, 3),
        "steps_per_s": round(1 / per_step, 3),
        "patch": 128,
        "batch": batch or "default",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--depth", type=int, default=8, help="Z slices of the stack")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--widths", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--stack-widths", type=int, nargs="+", default=[16])
    ap.add_argument("--train-steps", type=int, default=10)
    ap.add_argument("--train-batch", type=int, help="training batch (default: the device's)")
    ap.add_argument("--halo", default="auto", help="B4 halo: auto, exact or pixels")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    halo = int(args.halo) if args.halo.isdigit() else args.halo
    rows = []
    stack = nuclei_stack((args.depth, args.size, args.size), seed=2).image
    mp = stack.size / 1e6
    for width in args.stack_widths:
        model = make_network(width, 4)
        runs = {
            "B4 tessera predict_tiled ZYX": lambda m=model: predict_tiled(
                m, stack, axes="ZYX", device="cpu", halo=halo
            ),
            "B4 monai SliceInferer sw_batch 1": monai_slices(model, stack, 1),
            "B4 monai SliceInferer sw_batch 4": monai_slices(model, stack, 4),
        }
        best = {k: float("inf") for k in runs}
        out = {}
        for _ in range(args.repeats):
            for name, fn in runs.items():
                t0 = time.perf_counter()
                out[name] = fn()
                best[name] = min(best[name], time.perf_counter() - t0)
        monai_best = min(v for k, v in best.items() if "monai" in k)
        ref = out["B4 tessera predict_tiled ZYX"].argmax(0)
        for name in runs:
            row = {
                "width": width,
                "halo": halo,
                "stack": list(stack.shape),
                "run": name,
                "seconds": round(best[name], 2),
                "mp_per_s": round(mp / best[name], 3),
                "speed_vs_monai_best": round(monai_best / best[name], 2),
                "label_agreement_with_tessera": round(
                    float((out[name].argmax(0) == ref).mean()), 6
                ),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    for width in args.widths:
        row = {"run": "training", **train_speed(width, args.train_steps, "cpu", args.train_batch)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": __import__("monai").__version__,
        "tessera": __version__,
        "machine": platform.machine(),
        "threads": args.threads,
    }
    report(rows, env, args)


if __name__ == "__main__":
    main()
