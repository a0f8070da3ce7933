#!/usr/bin/env python
"""Edge offset calibrated on the painted nuclei: instance F1 with and without it, same runs.

Same set-up as bench_accuracy.py: a dozen whole nuclei and five background strokes painted on
the left half of a synthetic 512x512 image, training on 2 CPU threads (from scratch, or with
``--finetune`` from the built-in model), instance F1 of the kept model on the right half.
Each run is scored at every offset in EDGE_OFFSETS from one probability map: offset 0 (no
calibration), the offset calibrated on the painted objects (what training stores in the model),
and the best offset in hindsight.

    python benchmarks/bench_edge_offset.py --steps 650 --seeds 90000 90001 --train-seeds 1 2 \\
        --jsonl benchmarks/results/edge_offset.jsonl
    python benchmarks/bench_edge_offset.py --summarize benchmarks/results/edge_offset.jsonl

``--set KEY=VALUE`` overrides a ``TrainConfig`` field (e.g. ``--set surround=0``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _results import append_row, cpu_env, settings  # noqa: E402
from bench_accuracy import score_right  # noqa: E402
from bench_train_settings import scribble_runs  # noqa: E402

from napari_tessera import predict_tiled  # noqa: E402
from napari_tessera.postprocess import (  # noqa: E402
    SplitRule,
    classes_from_probabilities,
)
from napari_tessera.training.edges import (  # noqa: E402
    EDGE_OFFSETS,
    calibrate_edges,
    painted_objects,
)


def summarize(path: str) -> None:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    for start in dict.fromkeys(r["start"] for r in rows):
        rs = [r for r in rows if r["start"] == start]
        print(f"{start}: {len(rs)} runs")
        cols = {"offset 0": "f1_0", "calibrated": "f1_cal", "best in hindsight": "f1_best"}
        for name, key in cols.items():
            f1 = np.array([r[key] for r in rs])
            print(
                f"  {name:18s} mean {f1.mean():.3f}  min {f1.min():.3f}  "
                f">=0.85 {int((f1 >= 0.85).sum())}/{len(rs)}"
            )
        d = np.array([r["f1_cal"] - r["f1_0"] for r in rs])
        print(
            f"  calibrated - offset 0: mean {d.mean():+.3f}, wins {int((d > 0).sum())}, "
            f"losses {int((d < 0).sum())}, ties {int((d == 0).sum())}"
        )
        offs = [r["offset"] for r in rs]
        print("  offsets chosen:", " ".join(f"{o:g}" for o in offs))
        print(
            "  per run (image/train seed: F1 at 0 -> calibrated):",
            " ".join(
                f"{r['seed']}/{r['train_seed']}:{r['f1_0']:.3f}->{r['f1_cal']:.3f}" for r in rs
            ),
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, nargs="+", default=[90000, 90001, 90002])
    ap.add_argument("--train-seeds", type=int, nargs="+", help="default: the image's seed")
    ap.add_argument("--time-limit", type=float, default=120.0)
    ap.add_argument("--steps", type=int, help="stop after N steps instead of --time-limit")
    ap.add_argument("--finetune", action="store_true", help="start from the built-in model")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="TrainConfig fields")
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
    for seed, train_seed, s, lab, res, t_train in runs:
        classes = classes_from_probabilities(predict_tiled(res.model, s.image, device="cpu"))
        cal = res.edges  # what training stored with the model
        assert cal == calibrate_edges([classes], [painted_objects(lab, "sparse")])
        f1 = {}
        for off in EDGE_OFFSETS:
            inst, _ = SplitRule(True, edge_offset=off, seed_depth=cal.seed_depth).labels(classes)
            f1[off] = score_right(s.labels, inst).f1
        best = max(f1, key=f1.get)
        row = {
            "start": ("built-in" if args.finetune else "scratch")
            + "".join(f", {k}={v}" for k, v in over.items()),
            "settings": over,
            "seed": seed,
            "train_seed": train_seed,
            "offset": cal.offset,
            "reason": cal.reason,
            "f1_0": round(f1[0.0], 4),
            "f1_cal": round(f1[cal.offset], 4),
            "f1_best": round(f1[best], 4),
            "best_offset": best,
            "f1_by_offset": {f"{k:g}": round(v, 4) for k, v in f1.items()},
            "seed_depth": cal.seed_depth,
            "painted_iou_by_rule": cal.as_metadata()["scores"],
            "foreground_right": round(float((classes[:, 256:] > 0).mean()), 4),
            "foreground_right_truth": round(float((s.labels[:, 256:] > 0).mean()), 4),
            "steps": res.steps,
            "kept_step": res.best_step,
            "train_s": round(t_train, 1),
            "env": env,
        }
        append_row(row, args.jsonl)


if __name__ == "__main__":
    main()
