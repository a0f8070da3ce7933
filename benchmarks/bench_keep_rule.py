#!/usr/bin/env python
"""Which step should a run keep? Every validated step of a from-scratch run, scored.

Same set-up as bench_accuracy.py (a dozen painted nuclei and five background strokes on the
left half of a synthetic 512x512 image, 2 CPU threads). Each run trains for --steps with the
default settings (``--set KEY=VALUE`` overrides ``TrainConfig`` fields); at every validation
the weights being judged are copied, and afterwards each copy segments the image and is scored
on the right half (instance F1 at IoU >= 0.5). Rules for picking a step are then compared
with the best step in hindsight ("oracle"), which no rule can know:

  kept      the engine's rule (lowest validation loss, IoU breaks ties): the model a run returns
  last      the last step
  val_iou   the highest validation IoU (loss breaks ties)

    python benchmarks/bench_keep_rule.py --seeds 90000 90001 --train-seeds 1 2 --steps 650

Rows (one per run, with every validated step) are appended to --jsonl;
``--summarize FILE`` prints each rule's mean, lowest and runs >= 0.85.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _results import append_row, cpu_env, settings  # noqa: E402
from bench_accuracy import score_right, scribbles  # noqa: E402

import napari_tessera.training.loop as loop  # noqa: E402
from napari_tessera import segment  # noqa: E402
from napari_tessera.synthetic import nuclei_2d  # noqa: E402
from napari_tessera.training import TrainConfig, train  # noqa: E402

RULES = {
    "kept": lambda steps: max(steps, key=lambda r: (-r["val_loss"], r["val_iou"])),
    "last": lambda steps: steps[-1],
    "val_iou": lambda steps: max(steps, key=lambda r: (r["val_iou"], -r["val_loss"])),
    "oracle": lambda steps: max(steps, key=lambda r: r["f1"]),
}


def summarize(path: str) -> None:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    for name in dict.fromkeys(r["name"] for r in rows):
        rs = [r for r in rows if r["name"] == name]
        print(f"{name}: {len(rs)} runs")
        for rule, pick in RULES.items():
            f1 = np.array([pick(r["validated"])["f1"] for r in rs])
            print(
                f"  {rule:8s} mean {f1.mean():.3f}  lowest {f1.min():.3f}  "
                f">=0.85 {int((f1 >= 0.85).sum())}/{len(rs)}   " + " ".join(f"{x:.3f}" for x in f1)
            )
        spread = [
            max(s["f1"] for s in r["validated"][-5:]) - min(s["f1"] for s in r["validated"][-5:])
            for r in rs
        ]
        print(f"  F1 range over each run's last 5 validations: {min(spread):.3f}-{max(spread):.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--name", default="default")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="TrainConfig fields")
    ap.add_argument("--seeds", type=int, nargs="+", default=[90000, 90001, 90002])
    ap.add_argument("--train-seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=650)
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

    judged: list[dict] = []
    validate = loop.validation_scores

    def recording(model, *a, **kw):  # the weights each validation judges, and its numbers
        out = validate(model, *a, **kw)
        judged.append(copy.deepcopy(model.state_dict()))
        return out

    loop.validation_scores = recording
    for seed in args.seeds:
        s = nuclei_2d((512, 512), seed=seed, radius=(6.0, 11.0), touching=0.35)
        lab = scribbles(s.labels, np.random.default_rng(seed))
        for train_seed in args.train_seeds:
            judged.clear()
            cfg = TrainConfig(**{"steps": args.steps, "seed": train_seed, "device": "cpu", **over})
            t0 = time.perf_counter()
            res = train(s.image, lab, config=cfg)
            t_train = time.perf_counter() - t0
            validated = [h for h in res.history if "val_loss" in h]
            assert len(validated) == len(judged)
            net = copy.deepcopy(res.model)
            steps = []
            for h, state in zip(validated, judged, strict=True):
                net.load_state_dict(state)
                # edges as predicted: the offset training stores is calibrated for the kept
                # step only, and this study compares the steps themselves
                pred = segment(s.image, net, instances=True, device="cpu", edge_offset=0)
                steps.append(
                    {
                        "step": h["step"],
                        "val_loss": h["val_loss"],
                        "val_iou": h["val_iou"],
                        "f1": round(score_right(s.labels, pred).f1, 4),
                        "foreground": round(float((pred[:, 256:] > 0).mean()), 4),
                    }
                )
            kept = RULES["kept"](steps)
            assert kept["step"] == res.best_step, (kept["step"], res.best_step)
            row = {
                "name": args.name,
                "settings": over,
                "seed": seed,
                "train_seed": train_seed,
                "kept_step": res.best_step,
                "kept_f1": kept["f1"],
                "truth_foreground": round(float((s.labels[:, 256:] > 0).mean()), 4),
                "train_s": round(t_train, 1),
                "validated": steps,
                "env": env,
            }
            append_row(row, args.jsonl, hide=("env", "validated"))


if __name__ == "__main__":
    main()
