#!/usr/bin/env python
"""Training on several painted images against training on one, scored on unseen images.

Real development images (``../shared/realdata.py``: three groups of five fluorescence images
with human-drawn whole-cell masks; the green channel). In each group, images 1-3 are painted
the way ``realdata.scribbles`` paints (a dozen whole objects and background strokes on the left
half) and images 4-5 are never painted. Each run plans the same 500 steps (equal work):

  one    trained on ONE painted image (each of the three in turn: three runs)
  three  trained on the three painted images together (one run)

Both segment images 4-5 with instances; the score is instance F1 at IoU 0.5 over each whole
unseen image. One JSON line per (group, method, model, unseen image) goes to ``--jsonl``;
``--summarize FILE`` prints the table.

    python benchmarks/bench_sets.py --jsonl benchmarks/results/sets.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

import numpy as np
import torch
from _results import append_row, cpu_env
from bench_real import realdata

from napari_tessera import segment
from napari_tessera.metrics import match_instances
from napari_tessera.training import TrainConfig, TrainImage, train

GROUPS = ("kc167", "macrophagocyte", "neurocyte")


def group_images(group: str) -> list[str]:
    return [n for n in realdata().NAMES if n.startswith(group + "_")]


def load(name: str, paint_seed: int):
    image, truth = realdata().load(name)
    return image.astype(np.float32), truth, realdata().scribbles(truth, seed=paint_seed)


def run(items: list[TrainImage], unseen: list[tuple[str, np.ndarray, np.ndarray]], cfg):
    """Train on ``items``; F1 on each unseen image."""
    t0 = time.perf_counter()
    res = train(items, config=cfg)
    seconds = round(time.perf_counter() - t0, 1)
    out = []
    for name, image, truth in unseen:
        pred = segment(res.model, image, instances=True, device="cpu")
        m = match_instances(truth, pred)
        out.append({"unseen": name, "f1": m.f1, "precision": m.precision, "recall": m.recall,
                    "train_s": seconds})  # fmt: skip
    return out


def summarize(path: str) -> None:
    rows = [json.loads(line) for line in open(path)]
    f1 = defaultdict(lambda: defaultdict(list))
    for r in rows:
        f1[r["group"]][r["method"]].append(r["f1"])
    print("| group | one painted image (mean of 3 models x 2 unseen) | three painted images |")
    print("|---|---|---|")
    means = defaultdict(list)
    for g, per in f1.items():
        cells = []
        for m in ("one", "three"):
            cells.append(f"{np.mean(per[m]):.3f}")
            means[m].append(np.mean(per[m]))
        print(f"| {g} | " + " | ".join(cells) + " |")
    print(f"| **mean** | {np.mean(means['one']):.3f} | {np.mean(means['three']):.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--groups", nargs="+", default=list(GROUPS), choices=GROUPS)
    ap.add_argument("--seed", type=int, default=0, help="training seed")
    ap.add_argument("--paint-seed", type=int, default=0)
    ap.add_argument("--jsonl", help="append one JSON line per score here")
    ap.add_argument("--summarize", metavar="FILE")
    args = ap.parse_args()
    if args.summarize:
        summarize(args.summarize)
        return
    torch.set_num_threads(2)
    env = cpu_env()
    cfg = TrainConfig(seed=args.seed, device="cpu")
    for group in args.groups:
        names = group_images(group)
        cases = {n: load(n, args.paint_seed) for n in names}
        painted, held = names[:3], names[3:]
        unseen = [(n, cases[n][0], cases[n][1]) for n in held]
        items = {n: TrainImage(cases[n][0], cases[n][2], name=n) for n in painted}
        plans = [("one", [n]) for n in painted] + [("three", painted)]
        for method, used in plans:
            for score in run([items[n] for n in used], unseen, cfg):
                row = {"group": group, "method": method, "painted": used, **score, "env": env}
                append_row(row, args.jsonl)


if __name__ == "__main__":
    main()
