#!/usr/bin/env python
"""The smallest object kept: what dropping objects under a fraction of the median painted
object does to instance F1, for Tessera trained from scratch and for the random forest.

The images, paint and score of ``bench_real.py`` (a dozen whole objects painted on the left
half, F1 at IoU 0.5 on the right half). Each image is trained on once (the default
``TrainConfig``, from scratch, 2 CPU threads) and its random forest fitted once; then, for each
fraction, the split rule is calibrated on the painted objects as training does with that
fraction (``training.edges.MIN_OBJECT_FRACTION``; 0: only the default 8 px) and applied to
the whole image. Only the rule changes between the columns, not the network.

    python benchmarks/bench_min_size.py --images real synthetic_90000 synthetic_90001 \
        synthetic_90002 --json benchmarks/results/min_size.json
"""

from __future__ import annotations

import argparse

import bench_real as br
import numpy as np
import torch
from _results import cpu_env, report

from napari_tessera import segment
from napari_tessera.postprocess import SplitRule
from napari_tessera.training import TrainConfig, edges, train
from napari_tessera.training.edges import calibrate_edges, painted_objects

FRACTIONS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.33)


def sweep(classes: np.ndarray, painted: np.ndarray, truth: np.ndarray, fractions) -> list[dict]:
    """F1 (and the rule) for each fraction: the rule calibrated on the painted objects."""
    objects = painted_objects(painted, "sparse")
    out = []
    for f in fractions:
        edges.MIN_OBJECT_FRACTION = f
        cal = calibrate_edges([classes], [objects])
        rule = SplitRule(True, cal.offset, cal.seed_depth, cal.min_size)
        out.append(
            {
                "fraction": f,
                "min_size": cal.min_size,
                "edge_offset": cal.offset,
                "seed_depth": cal.seed_depth,
                **br.score(truth, rule.labels(classes)[0]),
            }
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", nargs="+", default=["real", "synthetic"])
    ap.add_argument("--fractions", nargs="+", type=float, default=list(FRACTIONS))
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    torch.set_num_threads(2)
    env, rows = cpu_env(), []
    default_fraction = edges.MIN_OBJECT_FRACTION
    for name in br.image_names(args.images):
        image, truth, painted = br.load_case(name, 0)
        edges.MIN_OBJECT_FRACTION = default_fraction
        res = train(image, painted, config=TrainConfig(seed=0, time_limit=1e6, device="cpu"))
        per_method = {
            "scratch": segment(res.model, image, instances=False, device="cpu", edge_offset=0),
            "rf": br.rf_classes(image, painted, 0),
        }
        for method, classes in per_method.items():
            for r in sweep(classes, painted, truth, args.fractions):
                rows.append({"image": name, "method": method, **r})
            f1s = " ".join(f"{r['f1']:.3f}" for r in rows[-len(args.fractions) :])
            print(f"{name:20s} {method:8s} {f1s}", flush=True)
    edges.MIN_OBJECT_FRACTION = default_fraction
    summary(rows, args.fractions)
    report(rows, env, args)


def summary(rows: list[dict], fractions) -> None:
    """Mean and lowest F1 per method, fraction and group (real, synthetic)."""
    print("fraction " + " ".join(f"{f:6.2f}" for f in fractions))
    for method in ("scratch", "rf"):
        for kind in ("real", "synthetic"):
            sel = [
                r
                for r in rows
                if r["method"] == method and r["image"].startswith("synthetic") == (kind != "real")
            ]
            if not sel:
                continue
            for what, agg in (("mean", np.mean), ("lowest", np.min)):
                vals = [agg([r["f1"] for r in sel if r["fraction"] == f]) for f in fractions]
                print(f"{method} {kind} {what}: " + " ".join(f"{v:.3f}" for v in vals))


if __name__ == "__main__":
    main()
