#!/usr/bin/env python
"""Training settings from scratch, compared over several images and training seeds.

Same set-up as bench_accuracy.py: a dozen painted nuclei and five background strokes on the
left half of a synthetic 512x512 image, training from scratch (or with ``--finetune`` from the
built-in model) on 2 CPU threads for
--time-limit seconds (or --steps), instance F1 of the kept model on the right half.
``--set KEY=VALUE`` overrides a ``TrainConfig`` field (e.g. ``--set lr=0.001 batch_size=4``);
``--train-seeds`` repeats each image with other training seeds (the painted labels stay the
same), which shows the spread between runs that a change of settings has to beat.

    python benchmarks/bench_train_settings.py --name default --seeds 90000 90001 90002
    python benchmarks/bench_train_settings.py --name lr1e-3 --set lr=0.001 --seeds 90000 90001

Rows are appended to --jsonl, so runs of different settings collect in one file;
``--summarize FILE`` prints per setting the mean, the minimum and how many runs reach 0.85.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _results import append_row, cpu_env, settings  # noqa: E402
from bench_accuracy import score_right, scribbles  # noqa: E402

from napari_tessera import segment  # noqa: E402
from napari_tessera.io import load_model  # noqa: E402
from napari_tessera.models import default_model_path  # noqa: E402
from napari_tessera.synthetic import nuclei_2d  # noqa: E402
from napari_tessera.training import TrainConfig, train  # noqa: E402


def scribble_runs(seeds, train_seeds, budget: dict, over: dict, finetune: bool = False):
    """Train on each image's scribbles with each training seed (default: the image's seed).

    Yields ``(seed, train_seed, sample, labels, result, seconds)``; ``budget`` is
    ``{"steps": N}`` or ``{"time_limit": S}``, ``over`` overrides TrainConfig fields.
    """
    for seed in seeds:
        s = nuclei_2d((512, 512), seed=seed, radius=(6.0, 11.0), touching=0.35)
        lab = scribbles(s.labels, np.random.default_rng(seed))
        for train_seed in train_seeds or [seed]:
            cfg = TrainConfig(**{**budget, "seed": train_seed, "device": "cpu", **over})
            t0 = time.perf_counter()
            start = load_model(default_model_path()) if finetune else None
            res = train(s.image, lab, config=cfg, model=start)
            yield seed, train_seed, s, lab, res, time.perf_counter() - t0


def summarize(path: str) -> None:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    names = list(dict.fromkeys(r["name"] for r in rows))
    print(f"{'setting':16s} runs  mean   min    >=0.85  per run (image/train seed: F1)")
    for name in names:
        rs = [r for r in rows if r["name"] == name]
        f1 = np.array([r["f1"] for r in rs])
        runs = " ".join(f"{r['seed']}/{r['train_seed']}:{r['f1']:.3f}" for r in rs)
        print(
            f"{name:16s} {len(rs):4d}  {f1.mean():.3f}  {f1.min():.3f}  "
            f"{int((f1 >= 0.85).sum())}/{len(rs)}    {runs}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--name", default="default", help="label of this setting in the results")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="TrainConfig fields")
    ap.add_argument("--seeds", type=int, nargs="+", default=[90000, 90001, 90002])
    ap.add_argument("--train-seeds", type=int, nargs="+", help="default: the image's seed")
    ap.add_argument("--time-limit", type=float, default=120.0)
    ap.add_argument("--steps", type=int, help="stop after N steps instead of --time-limit")
    ap.add_argument(
        "--finetune", action="store_true", help="start from the built-in model, not from scratch"
    )
    ap.add_argument("--jsonl", help="append one JSON row per run here")
    ap.add_argument("--summarize", metavar="JSONL", help="only summarize this file")
    args = ap.parse_args()
    if args.summarize:
        summarize(args.summarize)
        return
    torch.set_num_threads(2)
    over = settings(args.set)
    env = cpu_env()
    print("env", json.dumps(env))
    budget = {"steps": args.steps} if args.steps else {"time_limit": args.time_limit}
    runs = scribble_runs(args.seeds, args.train_seeds, budget, over, args.finetune)
    for seed, train_seed, s, _, res, t_train in runs:
        pred = segment(s.image, res.model, instances=True, device="cpu")
        m = score_right(s.labels, pred)
        row = {
            "name": args.name,
            "settings": over,
            "start": "built-in" if args.finetune else "scratch",
            "seed": seed,
            "train_seed": train_seed,
            "f1": round(m.f1, 4),
            "precision": round(m.precision, 4),
            "recall": round(m.recall, 4),
            "edge_offset": res.model.metadata.get("edge_offset", 0.0),
            "steps": res.steps,
            "kept_step": res.best_step,
            "train_s": round(t_train, 1),
            "env": env,
        }
        append_row(row, args.jsonl)


if __name__ == "__main__":
    main()
