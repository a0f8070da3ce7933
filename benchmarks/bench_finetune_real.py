#!/usr/bin/env python
"""Fine-tuning on real images: from a good start and from a poor one.

A cell model is trained densely (complete masks) on some development images of one group of
``../shared/realdata.py``. It is then fine-tuned with a dozen painted objects on an unseen image
of the same group (a good start) and on an image of another group (a poor start), with and
without keeping the start's own predictions where nothing is painted (``keep``). Scored as in
bench_real.py: instance F1 at IoU 0.5 on the right half, which nobody painted.

    python benchmarks/bench_finetune_real.py --jsonl benchmarks/results/finetune_real.jsonl
"""

from __future__ import annotations

import argparse
import copy

import numpy as np
import torch
from _results import append_row, cpu_env
from bench_real import load_case, score

from napari_tessera import segment
from napari_tessera.training import TrainConfig, train


def cell_model(names: list[str], steps: int, seed: int):
    """A model trained densely on the stacked images (same size) with their full masks."""
    cases = [load_case(n, 0) for n in names]
    image = np.stack([c[0] for c in cases])
    masks = np.stack([c[1] for c in cases])
    cfg = TrainConfig(mode="dense", steps=steps, seed=seed, device="cpu")
    return train(image, masks, axes="ZYX", config=cfg).model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--train", nargs="+", default=["kc167_096", "kc167_097"])
    ap.add_argument("--targets", nargs="+", default=["kc167_095", "neurocyte_079"])
    ap.add_argument("--start-steps", type=int, default=1000)
    ap.add_argument("--keeps", nargs="+", type=float, default=[1.0, 0.0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--jsonl")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    env = cpu_env()
    start = cell_model(args.train, args.start_steps, args.seed)
    for name in args.targets:
        image, truth, painted = load_case(name, 0)
        alone = score(truth, segment(start, image, instances=True, device="cpu"))
        append_row(
            {"start": "+".join(args.train), "image": name, "keep": None, **alone, "env": env},
            args.jsonl,
        )
        for keep in args.keeps:
            cfg = TrainConfig(seed=args.seed, device="cpu", keep=keep)
            res = train(image, painted, config=cfg, model=copy.deepcopy(start))  # trained in place
            row = score(truth, segment(res.model, image, instances=True, device="cpu"))
            append_row(
                {
                    "start": "+".join(args.train),
                    "image": name,
                    "keep": keep,
                    **row,
                    "start_f1": alone["f1"],
                    "calibration_score": res.edges.score if res.edges else None,
                    "kept": res.describe_kept().lstrip(", "),
                    "env": env,
                },
                args.jsonl,
            )


if __name__ == "__main__":
    main()
