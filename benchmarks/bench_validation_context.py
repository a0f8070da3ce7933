#!/usr/bin/env python
"""Does validation on held-out blocks tell a good model from a bad one?

Same set-up as bench_accuracy.py: a dozen painted nuclei and five background strokes on the
left half of a synthetic 512x512 image, a fixed number of steps (default settings otherwise).
At every validation the weights are scored three ways, side by side:

* ``block``: each held-out block on its own (a 64x64 input), as Tessera validated before;
* ``context``: each held-out block with the network's receptive field of image around it,
  which equals whole-image inference on those pixels (what Tessera does now);
* ``f1``: instance F1 on the right half, from whole-image inference (the truth, which training
  never sees).

Three rules for which step to keep are compared on the same runs: block IoU then loss (the
old rule), context IoU then loss, and context loss then IoU (what training does now).
``--no-balance`` trains without the per-batch class balance of the loss (the old default).

It prints one row per validation, per image the F1 of the step each signal would keep, and
over all validations the rank correlation of each signal with the true F1.

    python benchmarks/bench_validation_context.py --seeds 90000 90001 90002 --steps 200
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _results import cpu_env, report  # noqa: E402
from bench_accuracy import score_right, scribbles  # noqa: E402

from napari_tessera import segment  # noqa: E402
from napari_tessera.synthetic import nuclei_2d  # noqa: E402
from napari_tessera.training import TrainConfig, loop, train  # noqa: E402


def run(seed: int, steps: int, balance: bool) -> dict:
    s = nuclei_2d((512, 512), seed=seed, radius=(6.0, 11.0), touching=0.35)
    lab = scribbles(s.labels, np.random.default_rng(seed))
    snaps = []
    plain = loop.validation_scores

    def validate(model, sampler, batch, device, dice, context=0, balance=False):
        out = plain(model, sampler, batch, device, dice, context, balance)
        alone = plain(model, sampler, batch, device, dice, 0, balance)
        snaps.append((copy.deepcopy(model).eval(), out, alone))
        return out

    loop.validation_scores = validate
    try:
        cfg = TrainConfig(steps=steps, seed=seed, device="cpu", balance=balance)
        res = train(s.image, lab, config=cfg)
    finally:
        loop.validation_scores = plain
    rows = []
    for k, (model, (c_loss, c_iou), (b_loss, b_iou)) in enumerate(snaps):
        f1 = score_right(s.labels, segment(s.image, model, instances=True, device="cpu")).f1
        rows.append(
            {
                "k": k,
                "block_iou": round(b_iou, 3),
                "block_loss": round(b_loss, 4),
                "context_iou": round(c_iou, 3),
                "context_loss": round(c_loss, 4),
                "f1": round(f1, 3),
            }
        )

    return {
        "seed": seed,
        "balance": balance,
        "steps": res.steps,
        "kept_step": res.best_step,
        "validations": rows,
        **kept(rows),
        "best_possible_f1": max(r["f1"] for r in rows),
        "last_f1": rows[-1]["f1"],
    }


def kept(rows: list[dict]) -> dict:
    """F1 of the step each rule keeps (the first of equals, as training does)."""

    def pick(key):
        return max(rows, key=lambda r: (*key(r), -r["k"]))["f1"]

    return {
        # before: block alone, IoU first, then loss
        "kept_f1_block": pick(lambda r: (r["block_iou"], -r["block_loss"])),
        "kept_f1_context": pick(lambda r: (r["context_iou"], -r["context_loss"])),
        # now: in context, lowest loss first, then IoU
        "kept_f1_context_loss": pick(lambda r: (-r["context_loss"], r["context_iou"])),
    }


def summarize(rows: list[dict]) -> dict:
    """Rank correlation (Spearman) of each validation signal with the true F1, all steps."""
    from scipy.stats import spearmanr

    vals = [v for r in rows for v in r["validations"]]
    f1 = [v["f1"] for v in vals]
    return {
        k: round(float(spearmanr([v[k] for v in vals], f1).correlation), 3)
        for k in ("block_iou", "context_iou", "block_loss", "context_loss")
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, nargs="+", default=[90000, 90001, 90002])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--no-balance", action="store_true", help="train without class balance")
    ap.add_argument("--summarize", metavar="JSON", help="only summarise a results file")
    args = ap.parse_args()
    if args.summarize:
        with open(args.summarize) as f:
            rows = json.load(f)["rows"]
        for r in rows:
            print(r["seed"], json.dumps(kept(r["validations"])), "last", r["last_f1"])
        print("spearman with F1", json.dumps(summarize(rows)))
        return
    torch.set_num_threads(2)
    out = []
    for seed in args.seeds:
        row = run(seed, args.steps, not args.no_balance)
        print(json.dumps(row), flush=True)
        out.append(row)
    env = cpu_env()
    print("spearman with F1", json.dumps(summarize(out)))
    report(out, env, args)


if __name__ == "__main__":
    main()
