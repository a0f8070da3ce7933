#!/usr/bin/env python
"""One round of correct-and-retrain, as a user does it in the Train widget, simulated.

Real development images (``../shared/realdata.py``, three groups of five; the green channel).
Per group: image 1 is painted as ``realdata.scribbles`` paints (a dozen whole objects and
background strokes on its left half) and a model is trained from scratch (500 steps). The
model segments image 2, and a simulated user fixes the 10 worst objects of that result: a
false object (no true object at IoU 0.5) is deleted; a missed or merged true object gets its
true mask pasted. The fixed objects, each with an 8-pixel margin, are the checked region
(:func:`~napari_tessera.training.corrections.corrected_labels`). Then:

  first      the model trained on the paint
  corrected  retrained from it on the paint plus the checked corrections (fine-tuning, 500)
  more       retrained from it on the paint alone, the same 500 steps (the control: extra
             training without corrections)

Each segments images 4-5 (never painted, never corrected): instance F1 at IoU 0.5.

    python benchmarks/bench_correct.py --jsonl benchmarks/results/correct.jsonl
"""

from __future__ import annotations

import argparse
import copy
import json
from collections import defaultdict

import numpy as np
import torch
from _results import append_row, cpu_env
from bench_sets import GROUPS, group_images, load
from scipy import ndimage as ndi
from skimage.metrics import contingency_table

from napari_tessera import segment
from napari_tessera.metrics import match_instances
from napari_tessera.training import TrainConfig, TrainImage, train
from napari_tessera.training.corrections import corrected_labels


def worst_fixed(pred: np.ndarray, truth: np.ndarray, n: int = 10):
    """The prediction with its ``n`` worst objects fixed, and the checked region."""
    ct = contingency_table(truth, pred).toarray().astype(float)
    at, ap = ct.sum(1), ct.sum(0)
    iou = ct / np.maximum(at[:, None] + ap[None, :] - ct, 1)
    iou[0, :] = iou[:, 0] = 0
    cases = [(iou[:, j].max(), "false", j) for j in range(1, ct.shape[1]) if ap[j]]
    cases += [(iou[i, :].max(), "missed", i) for i in range(1, ct.shape[0]) if at[i]]
    cases = sorted(c for c in cases if c[0] < 0.5)[:n]
    fixed = pred.astype(np.int32).copy()
    checked = np.zeros(pred.shape, bool)
    next_id = int(fixed.max()) + 1
    for _, kind, k in cases:
        where = (pred == k) if kind == "false" else (truth == k)
        if kind == "false":
            fixed[where] = 0
        else:
            fixed[where] = next_id
            next_id += 1
        checked |= ndi.binary_dilation(where, iterations=8)
    return fixed, checked, len(cases)


def f1_on(model, unseen) -> list[float]:
    return [
        match_instances(t, segment(model, im, instances=True, device="cpu")).f1
        for _, im, t in unseen
    ]


def summarize(path: str) -> None:
    rows = [json.loads(line) for line in open(path)]
    f1 = defaultdict(dict)
    for r in rows:
        f1[r["group"]][r["method"]] = np.mean(r["f1"])
    methods = ("first", "more", "corrected")
    print("| group | " + " | ".join(methods) + " |")
    print("|---" * (1 + len(methods)) + "|")
    for g, per in f1.items():
        print(f"| {g} | " + " | ".join(f"{per[m]:.3f}" for m in methods) + " |")
    means = [np.mean([per[m] for per in f1.values()]) for m in methods]
    print("| **mean** | " + " | ".join(f"{v:.3f}" for v in means) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--groups", nargs="+", default=list(GROUPS), choices=GROUPS)
    ap.add_argument("--fix", type=int, default=10, help="objects the simulated user fixes")
    ap.add_argument("--jsonl")
    ap.add_argument("--summarize", metavar="FILE")
    args = ap.parse_args()
    if args.summarize:
        summarize(args.summarize)
        return
    torch.set_num_threads(2)
    env = cpu_env()
    cfg = TrainConfig(seed=0, device="cpu")
    for group in args.groups:
        names = group_images(group)
        cases = {n: load(n, 0) for n in names}
        painted = TrainImage(cases[names[0]][0], cases[names[0]][2], name=names[0])
        unseen = [(n, cases[n][0], cases[n][1]) for n in names[3:]]
        first = train([painted], config=cfg).model
        image2, truth2, _ = cases[names[1]]
        pred2 = segment(first, image2, instances=True, device="cpu")
        fixed, checked, n_fixed = worst_fixed(pred2, truth2, args.fix)
        corrected = TrainImage(image2, corrected_labels(fixed, checked), name=names[1])
        models = {
            "first": first,
            "corrected": train([painted, corrected], config=cfg, model=copy.deepcopy(first)).model,
            "more": train([painted], config=cfg, model=copy.deepcopy(first)).model,
        }
        for method, model in models.items():
            row = {"group": group, "method": method, "fixed": n_fixed,
                   "f1": f1_on(model, unseen), "env": env}  # fmt: skip
            append_row(row, args.jsonl)


if __name__ == "__main__":
    main()
