#!/usr/bin/env python
"""Training from a dozen painted objects, on real microscopy and on synthetic nuclei.

Real images: the development set of ``../shared/realdata.py`` (15 fluorescence images with
human-drawn whole-cell masks, three groups; the green channel). Synthetic: ``nuclei_2d`` images
with seeds 90000, 90001, ... For every image the same paint is used by every method: a dozen
whole objects (2) and background strokes (1) on the LEFT half; the RIGHT half, which nobody
painted, is scored as instance F1 with objects matched at IoU >= 0.5.

Methods (each on 2 CPU threads):
  default   the built-in nuclei model, no training
  scratch   ``tessera``'s default training from scratch
  finetune  the default training, starting from the built-in model
  auto      the CLI's and the Train widget's default: the built-in model where it already
            segments the painted objects, else a new network (``start_if_fits``)
  fit       the built-in model as ``default``, and how the default start judges it on the
            paint (``start_fit``), without training
  rf        scikit-image's multiscale_basic_features + a random forest, same instance split

One JSON line per (image, method, repeat) goes to ``--jsonl``; ``--summarize FILE ...`` prints the
table (mean, lowest, per image) of results files.

    python ../shared/realdata.py   # once: fetch the real images
    python benchmarks/bench_real.py --images real synthetic --methods scratch finetune rf \
        --jsonl benchmarks/results/real.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _results import append_row, cpu_env, settings
from scipy import ndimage as ndi
from skimage import feature, future
from skimage.draw import line
from sklearn.ensemble import RandomForestClassifier

from napari_tessera import segment
from napari_tessera.io import load_model, save_model
from napari_tessera.metrics import match_instances
from napari_tessera.models import default_model_path
from napari_tessera.postprocess import SplitRule
from napari_tessera.synthetic import nuclei_2d
from napari_tessera.training import TrainConfig, TrainImage, train
from napari_tessera.training.edges import calibrate_edges, painted_objects
from napari_tessera.training.start import judge_start

SHARED = Path(os.environ.get("TESSERA_SHARED", Path(__file__).resolve().parents[2] / "shared"))
SYNTHETIC_SEEDS = [90_000 + k for k in range(6)]


def realdata():
    sys.path.insert(0, str(SHARED))
    import realdata as rd  # noqa: PLC0415 - lives outside the repository

    return rd


def image_names(groups: list[str]) -> list[str]:
    names: list[str] = []
    for g in groups:
        if g == "real":
            names += realdata().NAMES
        elif g == "synthetic":
            names += [f"synthetic_{s}" for s in SYNTHETIC_SEEDS]
        else:
            names.append(g)
    return names


def synthetic_scribbles(
    truth: np.ndarray, rng: np.random.Generator, n_nuclei: int = 12, strokes: int = 5
):
    """Paint for a synthetic image, on its left half: whole nuclei (2), background strokes (1)."""
    H, W = truth.shape
    half = W // 2
    labels = np.zeros(truth.shape, np.uint8)
    left = truth[:, : half - 8]
    ids = np.unique(left[left > 0])
    # whole nuclei that lie entirely in the left half
    inside = [i for i in ids if not (truth[:, half - 8 :] == i).any()]
    for i in rng.choice(inside, size=min(n_nuclei, len(inside)), replace=False):
        labels[truth == i] = 2
    away = ~ndi.binary_dilation(truth > 0, iterations=2)
    for _ in range(strokes):
        y0, y1 = rng.integers(0, H, size=2)
        x0, x1 = rng.integers(0, half - 8, size=2)
        rr, cc = line(int(y0), int(x0), int(y1), int(x1))
        stroke = np.zeros(truth.shape, bool)
        stroke[rr, cc] = True
        stroke = ndi.binary_dilation(stroke, iterations=1) & away
        labels[stroke] = 1
    return labels


def load_case(name: str, paint_seed: int):
    """``(image, truth, painted)`` for an image name."""
    if name.startswith("synthetic_"):
        seed = int(name.split("_")[1])
        s = nuclei_2d((512, 512), seed=seed, radius=(6.0, 11.0), touching=0.35)
        return s.image, s.labels, synthetic_scribbles(s.labels, np.random.default_rng(seed))
    rd = realdata()
    image, truth = rd.load(name)
    return image.astype(np.float32), truth, rd.scribbles(truth, seed=paint_seed)


def right_half(a: np.ndarray) -> np.ndarray:
    return a[:, a.shape[1] // 2 :]


def score(truth: np.ndarray, pred: np.ndarray) -> dict:
    m = match_instances(right_half(truth), right_half(pred))
    t, p = right_half(truth) > 0, right_half(pred) > 0
    return {
        "f1": m.f1,
        "precision": m.precision,
        "recall": m.recall,
        "fg_iou": float((t & p).sum() / max((t | p).sum(), 1)),
        "objects_true": int(len(np.unique(right_half(truth))) - 1),
        "objects_pred": int(len(np.unique(right_half(pred))) - 1),
    }


def rf_classes(image, labels, seed):
    """scikit-image's trainable segmentation: multiscale_basic_features and a random forest
    fitted on the painted pixels; per-pixel classes (0 = background, as Tessera's)."""
    feats = feature.multiscale_basic_features(
        image.astype(np.float32),
        intensity=True,
        edges=True,
        texture=True,
        sigma_min=1,
        sigma_max=16,
    )
    clf = RandomForestClassifier(
        n_estimators=50, n_jobs=2, max_depth=10, max_samples=0.05, random_state=seed
    )
    clf = future.fit_segmenter(labels, feats, clf)
    return future.predict_segmenter(feats, clf) - 1


def random_forest(classes, painted) -> tuple[np.ndarray, dict]:
    """The forest's objects: its class map split by the same rule Tessera uses, calibrated
    the same way on the painted objects."""
    cal = calibrate_edges([classes], [painted_objects(painted, "sparse")])
    rule = SplitRule(True, cal.offset, cal.seed_depth, cal.min_size)
    return rule.labels(classes)[0], {
        "edge_offset": cal.offset,
        "seed_depth": cal.seed_depth,
        "min_size": cal.min_size,
        "calibration_score": cal.score,
    }


def run_method(method: str, image, painted, cfg: TrainConfig) -> tuple[np.ndarray, dict, Any]:
    """Instance labels of the whole image, facts about the run, and what segments: the
    trained model, or the random forest's class map."""
    if method == "rf":
        classes = rf_classes(image, painted, cfg.seed)
        return (*random_forest(classes, painted), classes)
    if method in ("default", "fit"):
        model = load_model(default_model_path())
        facts = {}
        if method == "fit":  # how the default start judges the built-in model, no training
            item = [TrainImage(image, painted)]
            fit = judge_start(item, model, mode="sparse", channels=None, device="cpu", name="it")
            facts = {"start_fit": fit.as_metadata()}
        return segment(model, image, instances=True, device="cpu"), facts, model
    start = load_model(default_model_path()) if method in ("finetune", "auto") else None
    if method == "auto":
        cfg = replace(cfg, start_if_fits=True)
    t0 = time.perf_counter()
    res = train(image, painted, config=cfg, model=start)
    facts = {
        "train_s": round(time.perf_counter() - t0, 1),
        "steps": res.steps,
        "kept_step": res.best_step,
        "kept": res.describe_kept().lstrip(", "),
        "stopped": res.stopped,
        "edge_offset": res.model.metadata.get("edge_offset", 0.0),
        "seed_depth": res.model.metadata.get("seed_depth", 0.0),
        "min_size": res.model.metadata.get("min_size", 8),
        "calibration_score": res.edges.score if res.edges is not None else None,
        "calibration": res.edges.reason if res.edges is not None else None,
        **agreement_facts(res.agreement),
        **({"start_fit": res.start_fit.as_metadata()} if res.start_fit is not None else {}),
    }
    return segment(res.model, image, instances=True, device="cpu"), facts, res.model


def agreement_facts(agreement) -> dict:
    """How far the kept model agrees with the painting, as the run reports it."""
    if agreement is None:
        return {}
    return {
        "paint_background_wrong": agreement.background_wrong,
        "paint_learnt": agreement.learnt,
    }


def save_map(folder: str, case: tuple, image, painted, how, facts: dict) -> None:
    """The class map of the whole image (the model's, or the forest's), the paint and the
    split rule the run chose, for studying split rules without training again
    (``NAME_METHOD_pPAINT_rREPEAT.npz``; ``case``: name, method, paint seed, repeat), and a
    trained model beside it (``.safetensors``)."""
    raw = {"edge_offset": 0.0}  # the network's classes, edges where it put them
    classes = how if isinstance(how, np.ndarray) else segment(how, image, device="cpu", **raw)
    name, method, paint_seed, rep = case
    path = Path(folder) / f"{name}_{method}_p{paint_seed}_r{rep}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = ("edge_offset", "seed_depth", "min_size")
    np.savez_compressed(
        path,
        classes=np.asarray(classes, np.uint8),
        painted=np.asarray(painted, np.uint8),
        **{k: np.float64(facts[k]) for k in keys if k in facts},
    )
    if not isinstance(how, np.ndarray):  # the trained model too, to study inference later
        save_model(how, path.with_suffix(".safetensors"))


def summarize(paths: list[str], tag: str | None = None) -> None:
    """A markdown table: one row per image, one column per method (F1; repeats, and runs
    from several files, joined by /), then the mean and the lowest over the real and over
    the synthetic images (of each image's mean)."""
    rows = [json.loads(line) for path in paths for line in open(path)]
    rows = [r for r in rows if tag is None or r.get("tag") == tag]
    f1 = defaultdict(lambda: defaultdict(list))
    for r in rows:
        f1[r["image"]][r["method"]].append(r["f1"])
    methods = [
        m
        for m in ("default", "rf", "scratch", "finetune", "auto")
        if any(m in v for v in f1.values())
    ]
    print("| image | " + " | ".join(methods) + " |")
    print("|---" * (1 + len(methods)) + "|")
    for image, per in f1.items():
        cells = ["/".join(f"{x:.3f}" for x in per[m]) if m in per else "-" for m in methods]
        print(f"| {image} | " + " | ".join(cells) + " |")
    for kind in ("real", "synthetic"):
        group = [i for i in f1 if i.startswith("synthetic") == (kind == "synthetic")]
        if not group:
            continue
        for what, agg in (("mean", np.mean), ("lowest", np.min)):
            cells = []
            for m in methods:
                vals = [np.mean(f1[i][m]) for i in group if m in f1[i]]
                cells.append(f"{agg(vals):.3f}" if vals else "-")
            print(f"| **{kind}: {what}** ({len(group)}) | " + " | ".join(cells) + " |")
    feedback(rows)


def feedback(rows: list[dict]) -> None:
    """How well the score a trained run reports (its painted objects' mean IoU) ranks the
    runs by their true F1 on the unpainted half: Spearman's rank correlation."""
    from scipy.stats import spearmanr

    runs = [r for r in rows if r.get("calibration_score") is not None and "steps" in r]
    if len(runs) < 3:
        return
    rho = spearmanr([r["calibration_score"] for r in runs], [r["f1"] for r in runs])[0]
    low = [r["f1"] for r in runs if r["calibration_score"] < 0.6]
    high = [r["f1"] for r in runs if r["calibration_score"] >= 0.6]
    print(f"\nreported score against F1, {len(runs)} trained runs: Spearman {rho:.2f}")
    for what, f1 in (("under 0.6", low), ("0.6 or more", high)):
        if f1:
            print(f"  runs reporting {what}: {len(f1)}, mean F1 {np.mean(f1):.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--images",
        nargs="+",
        default=["real", "synthetic"],
        help="'real', 'synthetic', or image names (kc167_095, synthetic_90000, ...)",
    )
    ap.add_argument(
        "--methods",
        nargs="+",
        default=["default", "scratch", "finetune", "rf"],
        choices=["default", "fit", "scratch", "finetune", "auto", "rf"],
    )
    ap.add_argument("--time-limit", type=float, default=120.0)
    ap.add_argument("--steps", type=int, help="a fixed number of steps instead of the default")
    ap.add_argument("--seed", type=int, default=0, help="training seed")
    ap.add_argument("--paint-seed", type=int, default=0, help="realdata.scribbles seed")
    ap.add_argument("--repeats", type=int, default=1, help="runs of the same command per image")
    ap.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="TrainConfig fields to override"
    )
    ap.add_argument("--tag", default="", help="a label stored with every row")
    ap.add_argument("--jsonl", help="append one JSON line per run here")
    ap.add_argument("--save-maps", metavar="DIR", help="save each run's class map here (npz)")
    ap.add_argument(
        "--summarize", nargs="+", metavar="FILE", help="print the table of results files"
    )
    ap.add_argument("--only-tag", help="with --summarize: only rows with this tag")
    args = ap.parse_args()
    if args.summarize:
        summarize(args.summarize, args.only_tag)
        return
    torch.set_num_threads(2)
    env = cpu_env()
    cfg = TrainConfig(
        time_limit=args.time_limit,
        steps=args.steps,
        seed=args.seed,
        device="cpu",
        **settings(args.set),
    )
    for name in image_names(args.images):
        image, truth, painted = load_case(name, args.paint_seed)
        for method in args.methods:
            repeats = args.repeats if method in ("scratch", "finetune", "auto") else 1
            for rep in range(repeats):
                pred, facts, how = run_method(method, image, painted, cfg)
                if args.save_maps:
                    case = (name, method, args.paint_seed, rep)
                    save_map(args.save_maps, case, image, painted, how, facts)
                row = {
                    "image": name,
                    "method": method,
                    "repeat": rep,
                    "tag": args.tag,
                    "seed": args.seed,
                    "paint_seed": args.paint_seed,
                    **score(truth, pred),
                    **facts,
                    "set": args.set,
                    "env": env,
                }
                append_row(row, args.jsonl)


if __name__ == "__main__":
    main()
