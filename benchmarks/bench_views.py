#!/usr/bin/env python
"""Test-time views on trained models: class probabilities averaged over flips and quarter
turns of the image (1, 2, 4 or 8 views: as it is; mirrored; upside down; every quarter turn),
each view's output turned back, with the split rule calibrated on the painted objects in
the same views. Measured, not used: on the real images 8 views did not beat one pass
(docs/benchmarks.md, "What the training defaults rest on").

Reads the models and paint that ``bench_real.py --save-maps DIR`` saved:

    python benchmarks/bench_real.py --images real synthetic --methods scratch \\
        --time-limit 1e6 --save-maps MAPS
    python benchmarks/bench_views.py MAPS --json benchmarks/results/views.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from _results import cpu_env, report
from bench_real import load_case, score

from napari_tessera.inference import predict_tiled
from napari_tessera.io import load_model
from napari_tessera.postprocess import SplitRule, classes_from_probabilities
from napari_tessera.training.edges import calibrate_edges, painted_objects

#: (quarter turns, mirrored): the first N of them for N views
VIEWS = ((0, False), (0, True), (2, False), (2, True), (1, False), (1, True), (3, False), (3, True))


def probabilities(model, image: np.ndarray, views: int) -> np.ndarray:
    """Class probabilities of the whole image, averaged over its first ``views`` views."""
    total = None
    for turns, mirror in VIEWS[:views]:
        view = np.ascontiguousarray(np.rot90(image[:, ::-1] if mirror else image, turns))
        p = np.rot90(predict_tiled(model, view, axes="YX", device="cpu"), -turns, axes=(1, 2))
        p = p[:, :, ::-1] if mirror else p
        total = p.copy() if total is None else total + p
    return total / views


def objects(classes, painted) -> tuple[np.ndarray, dict]:
    cal = calibrate_edges([classes], [painted_objects(painted, "sparse")])
    rule = SplitRule(True, cal.offset, cal.seed_depth, cal.min_size)
    return rule.labels(classes)[0], {"offset": cal.offset, "depth": cal.seed_depth}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("maps", nargs="+", help="folders of bench_real.py --save-maps files")
    ap.add_argument("--views", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = []
    paths = [p for folder in args.maps for p in sorted(Path(folder).glob("*.safetensors"))]
    for path in paths:
        name, _, paint, _ = path.stem.rsplit("_", 3)
        image, truth, painted = load_case(name, int(paint[1:]))
        model = load_model(path)
        row = {"image": name, "paint": paint}
        for views in args.views:
            t0 = time.perf_counter()
            classes = classes_from_probabilities(probabilities(model, image, views))
            row[f"seconds_{views}"] = round(time.perf_counter() - t0, 2)
            labels, rule = objects(classes, painted)
            row[f"f1_{views}"] = round(score(truth, labels)["f1"], 3)
            row[f"rule_{views}"] = rule
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if not k.startswith("rule")}), flush=True)
    for group in ("real", "synthetic"):
        part = [r for r in rows if r["image"].startswith("synthetic_") == (group == "synthetic")]
        for views in args.views if part else []:
            f1 = [r[f"f1_{views}"] for r in part]
            secs = np.mean([r[f"seconds_{views}"] for r in part])
            up = sum(r[f"f1_{views}"] > r[f"f1_{args.views[0]}"] for r in part)
            down = sum(r[f"f1_{views}"] < r[f"f1_{args.views[0]}"] for r in part)
            print(
                f"{group} ({len(part)}), {views} views: mean {np.mean(f1):.3f}, lowest "
                f"{np.min(f1):.3f}, up {up} down {down}; {secs:.2f} s an image"
            )
    report(rows, cpu_env(), args)


if __name__ == "__main__":
    main()
