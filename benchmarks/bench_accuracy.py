#!/usr/bin/env python
"""Accuracy from a few painted nuclei: Tessera against scikit-image's trainable segmentation.

For each synthetic fluorescence-nuclei image (blur, Poisson + read noise, uneven lighting,
touching nuclei; seeds the built-in model never saw):
  * paint ~12 nuclei (label 2) and a few background strokes (label 1) on the LEFT half only;
  * train Tessera on 2 CPU threads for at most --time-limit seconds, from scratch and
    fine-tuned from the built-in model;
  * train scikit-image's random forest on multiscale_basic_features with the same scribbles;
  * split foreground into objects the same way for all (distance-transform watershed);
  * score the RIGHT half: instance F1 with objects matched at IoU >= 0.5.
Also scores the built-in model with no training at all on whole held-out images.

    python benchmarks/bench_accuracy.py --time-limit 120 --images 3
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from _results import cpu_env
from scipy import ndimage as ndi
from skimage import feature, future
from skimage.draw import line
from sklearn.ensemble import RandomForestClassifier

from napari_tessera import segment
from napari_tessera.io import load_model
from napari_tessera.metrics import match_instances
from napari_tessera.models import default_model_path
from napari_tessera.postprocess import split_instances
from napari_tessera.synthetic import nuclei_2d
from napari_tessera.training import TrainConfig, train


def scribbles(truth: np.ndarray, rng: np.random.Generator, n_nuclei: int = 12, strokes: int = 5):
    """Sparse labels on the left half: whole nuclei (2) and background strokes (1)."""
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


def score_right(truth, pred):
    half = truth.shape[1] // 2
    return match_instances(truth[:, half:], pred[:, half:])


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


def rf_baseline(image, labels, seed):
    inst, _ = split_instances(rf_classes(image, labels, seed) == 1)
    return inst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--time-limit", type=float, default=120.0)
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--first-seed", type=int, default=90_000, help="image seeds count up from it")
    ap.add_argument(
        "--methods",
        nargs="+",
        choices=["default", "scratch", "finetune", "rf"],
        default=["default", "scratch", "finetune", "rf"],
    )
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    torch.set_num_threads(2)
    default = load_model(default_model_path())
    rows = []
    for k in range(args.images):
        seed = args.first_seed + k
        s = nuclei_2d((args.size, args.size), seed=seed, radius=(6.0, 11.0), touching=0.35)
        rng = np.random.default_rng(seed)
        lab = scribbles(s.labels, rng)
        row = {
            "seed": seed,
            "nuclei": int(s.labels.max()),
            "painted_nuclei": int(ndi.label(lab == 2)[1]),
            "painted_px": int((lab > 0).sum()),
        }
        if "default" in args.methods:  # no training: the built-in model on the whole image
            pred = segment(s.image, default, instances=True, device="cpu")
            row["default_whole_f1"] = match_instances(s.labels, pred).f1
            row["default_right_f1"] = score_right(s.labels, pred).f1
        # Tessera from scratch and fine-tuned, same scribbles, same time budget
        for name, start in (("scratch", None), ("finetune", load_model(default_model_path()))):
            if name not in args.methods:
                continue
            t0 = time.perf_counter()
            res = train(
                s.image,
                lab,
                config=TrainConfig(time_limit=args.time_limit, seed=seed, device="cpu"),
                model=start,
            )
            t_train = time.perf_counter() - t0
            pred = segment(s.image, res.model, instances=True, device="cpu")
            m = score_right(s.labels, pred)
            row[f"{name}_f1"] = m.f1
            row[f"{name}_precision"] = m.precision
            row[f"{name}_recall"] = m.recall
            row[f"{name}_steps"] = res.steps
            row[f"{name}_train_s"] = round(t_train, 1)
        if "rf" in args.methods:
            t0 = time.perf_counter()
            pred = rf_baseline(s.image, lab, seed)
            row["rf_s"] = round(time.perf_counter() - t0, 1)
            row["rf_f1"] = score_right(s.labels, pred).f1
        rows.append(row)
        print(json.dumps(row), flush=True)
    keys = ["default_whole_f1", "default_right_f1", "scratch_f1", "finetune_f1", "rf_f1"]
    summary = {k: float(np.mean([r[k] for r in rows])) for k in keys if k in rows[0]}
    summary.update({f"{k}_min": float(min(r[k] for r in rows)) for k in keys if k in rows[0]})
    env = cpu_env()
    print("summary", json.dumps(summary))
    print("env", json.dumps(env))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"rows": rows, "summary": summary, "env": env, "args": vars(args)}, f, indent=1
            )


if __name__ == "__main__":
    main()
