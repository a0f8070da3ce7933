#!/usr/bin/env python
"""Views on trained models: class probabilities averaged over flips and quarter turns of
each tile (``SegmentOptions.views``: 1, 2, 4 or 8), with the split rule calibrated on the
painted objects in the same views, as training does.

Reads the models and paint that ``bench_real.py --save-maps DIR`` saved:

    python benchmarks/bench_real.py --images real synthetic --methods scratch \\
        --time-limit 1e6 --save-maps MAPS
    python benchmarks/bench_views.py MAPS --json benchmarks/results/views.json
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


def probabilities(model, image: np.ndarray, views: int) -> np.ndarray:
    """Class probabilities of the whole image, each tile averaged over ``views`` views (the
    product's path: :attr:`SegmentOptions.views`)."""
    return predict_tiled(model, image, axes="YX", device="cpu", views=views)


def objects(classes, painted) -> tuple[np.ndarray, dict]:
    cal = calibrate_edges([classes], [painted_objects(painted, "sparse")])
    rule = SplitRule(True, cal.offset, cal.seed_depth, cal.min_size)
    return rule.labels(classes)[0], {"offset": cal.offset, "depth": cal.seed_depth}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("maps")
    ap.add_argument("--views", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = []
    for path in sorted(Path(args.maps).glob("*.safetensors")):
        name, _, paint, _ = path.stem.rsplit("_", 3)
        image, truth, painted = load_case(name, int(paint[1:]))
        model = load_model(path)
        row = {"image": name, "paint": paint}
        for views in args.views:
            classes = classes_from_probabilities(probabilities(model, image, views))
            labels, rule = objects(classes, painted)
            row[f"f1_{views}"] = round(score(truth, labels)["f1"], 3)
            row[f"rule_{views}"] = rule
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if not k.startswith("rule")}), flush=True)
    for views in args.views:
        f1 = [r[f"f1_{views}"] for r in rows]
        print(f"{views} views: mean {np.mean(f1):.3f} lowest {np.min(f1):.3f}")
    report(rows, cpu_env(), args)


if __name__ == "__main__":
    main()
