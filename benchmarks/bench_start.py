#!/usr/bin/env python
"""Where the default start's rule is close: synthetic nuclei unlike the built-in model's
training data (larger, smaller, noisier, more crowded), none of them used to set the rule.

For each variant and seed (``nuclei_2d``, 512 x 512; the paint of ``bench_real.py``'s synthetic
images: a dozen whole nuclei and five background strokes on the left half), one row with the
built-in model's F1 on the unpainted right half and how the default start judges it on the
paint (``start_fit``: the painted objects' mean IoU, the share of painted background called
object, fine-tune or not). With ``--train``, the given ``VARIANT:SEED`` cases are also trained
both ways (a new network and the built-in model fine-tuned, 500 steps, seed 0) and scored.

    python benchmarks/bench_start.py --jsonl benchmarks/results/start_variants.jsonl
    python benchmarks/bench_start.py --only small:1 --train \
        --jsonl benchmarks/results/start_variants.jsonl
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from _results import append_row, cpu_env
from bench_real import run_method, score, synthetic_scribbles

from napari_tessera.synthetic import nuclei_2d
from napari_tessera.training import TrainConfig

VARIANTS = {
    "large": {"radius": (18.0, 28.0), "touching": 0.35},
    "small": {"radius": (3.0, 5.0), "touching": 0.35},
    "noisy": {"radius": (6.0, 11.0), "touching": 0.35, "snr": 0.35},
    "crowded": {"radius": (6.0, 11.0), "touching": 0.8},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2], help="nuclei_2d seeds")
    ap.add_argument("--only", nargs="+", metavar="VARIANT:SEED", help="these cases only")
    ap.add_argument("--train", action="store_true", help="also train: scratch and finetune")
    ap.add_argument("--jsonl", help="append one JSON line per row here")
    args = ap.parse_args()
    torch.set_num_threads(2)
    env = cpu_env()
    cases = [(v, s) for v in VARIANTS for s in args.seeds]
    if args.only:
        cases = [(c.split(":")[0], int(c.split(":")[1])) for c in args.only]
    methods = ["fit", *(["scratch", "finetune"] if args.train else [])]
    for variant, seed in cases:
        scene = nuclei_2d((512, 512), seed=seed, **VARIANTS[variant])
        painted = synthetic_scribbles(scene.labels, np.random.default_rng(seed))
        for method in methods:
            pred, facts, _ = run_method(method, scene.image, painted, TrainConfig(device="cpu"))
            row = {"variant": variant, "seed": seed, "method": method, **score(scene.labels, pred)}
            append_row({**row, **facts, "env": env}, args.jsonl)


if __name__ == "__main__":
    main()
