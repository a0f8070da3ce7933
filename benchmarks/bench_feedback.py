#!/usr/bin/env python
"""Can a user tell a good training run from a bad one without ground truth?

A trained run reports two things measured on the user's own painting: the painted objects'
mean IoU with the objects the model draws there (``calibration_score``), and the share of the
painted background the kept model calls object. A run with too much of either is told it "has
not learnt the painting" (``napari_tessera.training.agreement``). This script puts both beside
each run's true F1 on the unpainted half and the random forest's F1 on the same paint.

The runs come from ``bench_real.py --save-maps DIR --jsonl FILE``: each saved class map (the
kept model's classes on the whole image, edges where the network put them, as the run's own
check segments them) is judged with the product's ``paint_agreement``; a run's F1 is the row of
``FILE`` with the same image and method (and ``--tag``).

    python benchmarks/bench_feedback.py \
        --runs MAPS0 benchmarks/results/real_v9.jsonl v9 benchmarks/results/real_v8.jsonl v8 \
        --runs MAPS2 benchmarks/results/real_v9_paint_seeds.jsonl paint2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from napari_tessera.training.agreement import PaintAgreement, paint_agreement
from napari_tessera.training.labels import painted_background


def _rows(jsonl: str, tag: str) -> list[dict]:
    return [r for r in map(json.loads, open(jsonl)) if r.get("tag") == tag]


def judged(folder: str, jsonl: str, tag: str, forest_from: tuple[str, str] | None) -> list[dict]:
    """One row per saved scratch or fine-tuned map with its F1 and paint agreement; the
    forest's F1 on the same paint from ``jsonl`` or from ``forest_from`` (file, tag)."""
    rows = _rows(jsonl, tag)
    forest_rows = _rows(*forest_from) if forest_from else rows
    forest = {r["image"]: r["f1"] for r in forest_rows if r["method"] == "rf"}
    if folder == "-":
        return [_recorded(r, forest) for r in rows if r["method"] != "rf"]
    out = []
    for path in sorted(Path(folder).glob("*_p*_r*.npz")):
        name, method, paint, rep = path.stem.rsplit("_", 3)
        key = (name, method, int(rep[1:]))
        match = [r for r in rows if (r["image"], r["method"], r["repeat"]) == key]
        if method == "rf" or not match:
            continue
        saved = np.load(path)
        background = painted_background(saved["painted"], "sparse")
        r = match[0]
        a = paint_agreement([saved["classes"]], [background], r.get("calibration_score"))
        out.append(
            {
                "image": name,
                "method": method,
                "paint": paint,
                "f1": r["f1"],
                "rf": forest.get(name),
                "objects_iou": a.objects_iou,
                "background_wrong": a.background_wrong,
                "learnt": a.learnt,
            }
        )
    return out


def _recorded(row: dict, forest: dict) -> dict:
    """A run judged by what ``bench_real.py`` recorded of its paint check (rows written
    since it records ``paint_background_wrong``)."""
    if "paint_background_wrong" not in row:
        raise SystemExit(f"{row['image']}: no recorded paint check in this file; pass MAPS")
    a = PaintAgreement(row["paint_background_wrong"], 1, row.get("calibration_score"))
    return {
        "image": row["image"],
        "method": row["method"],
        "paint": f"p{row.get('paint_seed', 0)}",
        "f1": row["f1"],
        "rf": forest.get(row["image"]),
        "objects_iou": a.objects_iou,
        "background_wrong": a.background_wrong,
        "learnt": a.learnt,
    }


def table(rows: list[dict]) -> None:
    head = "image | paint | F1 | forest F1 | painted objects' IoU | painted background as object"
    print(f"| {head} |")
    print("|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["image"], r["paint"])):
        rf = f"{r['rf']:.3f}" if r["rf"] is not None else "-"
        iou = f"{r['objects_iou']:.2f}" if r["objects_iou"] is not None else "-"
        flag = "" if r["learnt"] else " (**not learnt**)"
        print(
            f"| {r['image']} | {r['paint']} | {r['f1']:.3f} | {rf} | {iou} | "
            f"{r['background_wrong']:.2f}{flag} |"
        )


def summary(rows: list[dict]) -> None:
    real = [r for r in rows if not r["image"].startswith("synthetic")]
    for kind, group in (("real", real), ("all", rows)):
        if len(group) < 3:
            continue
        f1 = np.array([r["f1"] for r in group])
        print(f"\n{kind}: {len(group)} runs; Spearman's rank correlation with F1:")
        iou = [r["objects_iou"] for r in group]
        bg = np.array([r["background_wrong"] for r in group])
        if None not in iou:
            both = np.array(iou) * (1 - bg)
            print(f"  painted objects' IoU                 {spearmanr(iou, f1)[0]:+.2f}")
            print(f"  IoU x (1 - background called object) {spearmanr(both, f1)[0]:+.2f}")
        print(f"  -(background called object)          {spearmanr(-bg, f1)[0]:+.2f}")
        learnt = np.array([r["learnt"] for r in group])
        for said, keep in (("learnt", learnt), ("not learnt", ~learnt)):
            if keep.any():
                vs = [r for r, k in zip(group, keep) if k and r["rf"] is not None]
                below = sum(r["f1"] < r["rf"] for r in vs)
                print(
                    f"  told '{said}': {int(keep.sum())} runs, F1 mean {f1[keep].mean():.3f}, "
                    f"lowest {f1[keep].min():.3f}; below the forest in {below} of {len(vs)}"
                )


def paint_score(row: dict) -> float:
    """One number from the two checks: the painted objects' IoU times the share of the
    painted background the model gets right."""
    return (row["objects_iou"] or 0.0) * (1.0 - row["background_wrong"])


def pick(groups: list[list[dict]]) -> None:
    """Per image, the run (one per group) with the highest :func:`paint_score`: the F1 of
    each group, of the picked runs and of always the best run."""
    by_image = [{r["image"]: r for r in g} for g in groups]
    images = sorted(set.intersection(*(set(g) for g in by_image)))
    f1 = np.array([[g[i]["f1"] for g in by_image] for i in images])
    chosen = [max(by_image, key=lambda g, i=i: paint_score(g[i]))[i] for i in images]
    picked = np.array([r["f1"] for r in chosen])
    forest = [r["rf"] for r in chosen]
    print(f"\n{len(images)} images, one run per group:")
    for k in range(f1.shape[1]):
        print(f"  run {k + 1}: mean F1 {f1[:, k].mean():.3f}, lowest {f1[:, k].min():.3f}")
    below = sum(p < rf for p, rf in zip(picked, forest) if rf is not None)
    print(
        f"  picked by the paint check: mean {picked.mean():.3f}, lowest {picked.min():.3f}, "
        f"the better run on {int(np.sum(picked == f1.max(1)))}; below the forest on {below}"
    )
    print(f"  always the better run: mean {f1.max(1).mean():.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--runs",
        nargs="+",
        action="append",
        required=True,
        metavar="ARG",
        help="MAPS JSONL TAG [FOREST_JSONL FOREST_TAG]: a --save-maps folder (or -: the paint "
        "check the rows recorded), the --jsonl file of the same runs and their --tag; the "
        "forest's rows on the same paint when they are in another file",
    )
    ap.add_argument(
        "--pick",
        action="store_true",
        help="each --runs group holds one run per image: keep the run the paint check prefers",
    )
    args = ap.parse_args()
    groups = []
    for run in args.runs:
        if len(run) not in (3, 5):
            ap.error("--runs takes MAPS JSONL TAG [FOREST_JSONL FOREST_TAG]")
        forest = (run[3], run[4]) if len(run) == 5 else None
        groups.append(judged(run[0], run[1], run[2], forest))
    if args.pick:
        pick(groups)
        return
    rows = [r for g in groups for r in g]
    table(rows)
    summary(rows)


if __name__ == "__main__":
    main()
