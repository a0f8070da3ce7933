#!/usr/bin/env python
"""Test-time augmentation on trained models: class probabilities averaged over the eight
flips and quarter turns of the image, against one pass, with the split rule calibrated on
the painted objects in the same way for both.

Reads the models and paint that ``bench_real.py --save-maps DIR`` saved:

    python benchmarks/bench_real.py --images real synthetic --methods scratch \\
        --time-limit 1e6 --save-maps MAPS
    python benchmarks/bench_tta.py MAPS --json benchmarks/results/tta.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from _results import cpu_env, report
from bench_real import load_case, score

from napari_tessera.inference import predict_tiled
from napari_tessera.io import load_model
from napari_tessera.postprocess import SplitRule, classes_from_probabilities
from napari_tessera.training.edges import calibrate_edges, painted_objects


def probabilities(model, image: np.ndarray, turns: int) -> np.ndarray:
    """Class probabilities averaged over ``turns`` dihedral views (1: the image as it is;
    2: and its mirror; 4: and the flips; 8: every flip and quarter turn)."""
    views = [(0, False), (0, True), (2, False), (2, True), (1, False), (1, True)]
    views += [(3, False), (3, True)]  # (quarter turns, mirrored): the first ``turns`` of them
    pick = views[:turns]
    total = None
    for k, flip in pick:
        view = np.ascontiguousarray(np.rot90(image[:, ::-1] if flip else image, k))
        p = predict_tiled(model, view, axes="YX", device="cpu")
        p = np.rot90(p, -k, axes=(1, 2))
        p = p[:, :, ::-1] if flip else p
        total = p.copy() if total is None else total + p
    return total / len(pick)


def objects(classes, painted) -> tuple[np.ndarray, dict]:
    cal = calibrate_edges([classes], [painted_objects(painted, "sparse")])
    rule = SplitRule(True, cal.offset, cal.seed_depth, cal.min_size)
    return rule.labels(classes)[0], {"offset": cal.offset, "depth": cal.seed_depth}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("maps")
    ap.add_argument("--turns", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = []
    for path in sorted(Path(args.maps).glob("*.safetensors")):
        name, _, paint, _ = path.stem.rsplit("_", 3)
        image, truth, painted = load_case(name, int(paint[1:]))
        model = load_model(path)
        row = {"image": name, "paint": paint}
        for turns in args.turns:
            classes = classes_from_probabilities(probabilities(model, image, turns))
            labels, rule = objects(classes, painted)
            row[f"f1_{turns}"] = round(score(truth, labels)["f1"], 3)
            row[f"rule_{turns}"] = rule
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if not k.startswith("rule")}), flush=True)
    for turns in args.turns:
        f1 = [r[f"f1_{turns}"] for r in rows]
        print(f"{turns} views: mean {np.mean(f1):.3f} lowest {np.min(f1):.3f}")
    report(rows, cpu_env(), args)


if __name__ == "__main__":
    main()
