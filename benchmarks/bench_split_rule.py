#!/usr/bin/env python
"""How much of the instance F1 on real images the split rule decides: the rule calibrated on
the painted objects against the best rule in hindsight, on class maps saved by
``bench_real.py --save-maps``.

For every saved run (image, method, paint seed) the same class map is split by:
  stored    the rule the run calibrated on its painted objects (what the product does)
  plain     the plain rule (no edge offset, no seed depth), with the run's smallest object
  oracle    the best rule of the calibration grid, chosen on the scored (unpainted) half:
            an upper bound no calibration reaches
and by other ways of calibrating on the same painted objects:
  clear     a rule other than the plain one only when it beats it by more than twice the
            standard error of the per-object differences (as fine-tuning asks of its start)
  offset    the edge offset calibrated, the seed depth left at 0
  scaled    the rule to beat (from scratch: the plain one) replaced by seeds only at necks
            a fifth of the painted objects' median radius deep (the depth tried nearest)
  whole     every painted region scored as one object: a region cut into object-sized
            parts is never right (calibration takes it for touching objects painted as one)
  sized     of the rules within 0.01 of the best mean IoU, the one whose objects over the
            whole image come closest to the painted objects' median size (by ratio)
and by the stored rule with its edges moved out (-) or in (+) by up to 1.5 px more.
and scored as instance F1 at IoU 0.5 on the unpainted right half. A large gap between
``stored`` and ``oracle`` says calibration is worth improving; a small one says the class
map (the network) limits F1.

    python benchmarks/bench_real.py --images real --methods scratch --save-maps MAPS ...
    python benchmarks/bench_split_rule.py MAPS --json benchmarks/results/split_rule.json
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from bench_real import load_case, score

from napari_tessera.postprocess import DEFAULT_MIN_SIZE, SplitRule
from napari_tessera.training.edges import (
    EDGE_OFFSETS,
    SEED_DEPTHS,
    _crop_to_objects,
    calibrate_edges,
    choose_rule,
    object_ious,
    painted_objects,
    smallest_object,
)

#: other ways of calibrating, as calibrate_edges arguments
POLICIES = {"clear": {"trust_base": True}, "offset": {"depths": (0.0,)}}
#: edge offsets added to the stored rule's (negative: objects grow)
GROWN = (-1.5, -1.0, -0.5, 0.5)
#: the scaled rule's depth, as a fraction of the painted objects' median radius
SCALED = 0.2
COLUMNS = ("stored", "plain", "clear", "offset", "scaled", "whole", "sized", "oracle")
COLUMNS += tuple(f"{d:+g}" for d in GROWN)


def whole_rule(classes: np.ndarray, objects: np.ndarray, min_gain: float = 0.01) -> tuple:
    """The rule calibration chooses from scratch when each painted region counts as one
    object (``object_ious`` without joined parts): the best mean IoU, if it beats the plain
    rule by ``min_gain``; among rules that near, the one closest to the plain rule."""
    classes, objects = _crop_to_objects(classes, objects)  # as calibration judges them
    min_size = smallest_object(np.bincount(objects.ravel())[1:])

    def per_object(offset: float, depth: float) -> np.ndarray:
        labels = SplitRule(True, offset, depth, min_size).labels(classes)[0]
        return object_ious(objects, labels)

    ious = {(o, d): per_object(o, d) for o in EDGE_OFFSETS for d in SEED_DEPTHS}
    if max(v.mean() for v in ious.values()) < 0.3:  # as calibration: not painted whole
        return (0.0, 0.0)
    return choose_rule(ious, (0.0, 0.0), min_gain) or (0.0, 0.0)


def sized_rule(classes: np.ndarray, objects: np.ndarray, near: float = 0.01) -> tuple:
    """Of the rules whose painted objects' mean IoU is within ``near`` of the best, the one
    whose objects over the whole image are closest to the painted objects' median size."""
    cal = calibrate_edges([classes], [objects])
    if not cal.scores:  # too few painted objects: nothing to choose from
        return (cal.offset, cal.seed_depth)
    top = max(cal.scores.values())
    areas = np.bincount(objects.ravel())[1:]
    painted = float(np.median(areas[areas > 0]))

    def mismatch(rule: tuple) -> float:
        labels = SplitRule(True, *rule, cal.min_size).labels(classes)[0]
        sizes = np.bincount(labels.ravel())[1:]
        sizes = sizes[sizes > 0]
        return abs(np.log(np.median(sizes) / painted)) if sizes.size else np.inf

    near_best = sorted(k for k, v in cal.scores.items() if v >= top - near)
    return min(near_best, key=lambda k: (mismatch(k), -cal.scores[k]))


def study(path: Path) -> dict:
    """The F1 of one saved class map under the stored, plain and best-in-hindsight rules."""
    saved = np.load(path)
    name, method, paint, _ = path.stem.rsplit("_", 3)
    _, truth, painted = load_case(name, int(paint[1:]))
    assert np.array_equal(painted, saved["painted"]), f"{path}: not the paint of {name}"
    classes = saved["classes"]
    min_size = int(saved["min_size"]) if "min_size" in saved else DEFAULT_MIN_SIZE
    stored = (float(saved.get("edge_offset", 0.0)), float(saved.get("seed_depth", 0.0)))

    def f1(offset: float, depth: float) -> float:
        return score(truth, SplitRule(True, offset, depth, min_size).labels(classes)[0])["f1"]

    grid = {(o, d): f1(o, d) for o in EDGE_OFFSETS for d in SEED_DEPTHS}
    best = max(grid, key=grid.get)
    row = {
        "image": name,
        "method": method,
        "paint_seed": int(paint[1:]),
        "stored": f1(*stored),
        "stored_rule": stored,
        "plain": f1(0.0, 0.0),
        "oracle": grid[best],
        "oracle_rule": best,
    }
    for delta in GROWN:  # the stored rule with edges moved further
        row[f"{delta:+g}"] = f1(stored[0] + delta, stored[1])
    objects = painted_objects(painted, "sparse")
    areas = np.bincount(objects.ravel())[1:]
    radius = float(np.sqrt(np.median(areas[areas > 0]) / np.pi))
    depth = min(SEED_DEPTHS, key=lambda v: abs(v - SCALED * radius))
    cal = calibrate_edges([classes], [objects], base=SplitRule(True, 0.0, depth))
    row["scaled"] = f1(cal.offset, cal.seed_depth)
    row["scaled_rule"] = (cal.offset, cal.seed_depth)
    row["whole_rule"] = whole_rule(classes, objects)
    row["whole"] = f1(*row["whole_rule"])
    row["sized_rule"] = sized_rule(classes, objects)
    row["sized"] = f1(*row["sized_rule"])
    for policy, kwargs in POLICIES.items():
        cal = calibrate_edges([classes], [objects], **kwargs)
        row[policy] = f1(cal.offset, cal.seed_depth)
        row[f"{policy}_rule"] = (cal.offset, cal.seed_depth)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("maps", help="a folder of bench_real.py --save-maps files")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    rows = [study(p) for p in sorted(Path(args.maps).glob("*.npz"))]
    by_method = defaultdict(list)
    for r in rows:
        by_method[r["method"]].append(r)
        cells = "  ".join(f"{k} {r[k]:.3f}" for k in COLUMNS)
        print(f"{r['image']:20s} {r['method']:8s} paint {r['paint_seed']}  {cells}")
    for method, group in by_method.items():
        print(f"{method}: {len(group)} runs")
        for what, agg in (("mean", np.mean), ("lowest", np.min)):
            cells = "  ".join(f"{k} {agg([r[k] for r in group]):.3f}" for k in COLUMNS)
            print(f"  {what:7s} {cells}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
