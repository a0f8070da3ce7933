#!/usr/bin/env python
"""Which step a training run should keep: every validated step scored on the real images.

One training run per image (the paint, score and defaults of bench_real.py). At every
validation the weights are saved with the validation numbers; afterwards each saved step is
calibrated and scored as if the run had kept it (instance F1 on the unpainted right half).
Training does not depend on which step is kept, so one run shows every rule for choosing:

  loss       the lowest validation loss over all held-out regions taken as one batch
  loss_batch the lowest mean of the per-batch validation losses
  iou        the highest validation IoU
  last       the last step
  average    the mean of the weights (and normalisation statistics) validated in the second
             half of the run
For fine-tuning, a start that validates at IoU >= 0.8 competes as step 0 under each rule
but ``last``, and ``last_or_start`` keeps such a start when its loss is lower than the last
step's.

    python benchmarks/bench_keep_step.py --images real synthetic_90000 synthetic_90001 \
        synthetic_90002 --method scratch --jsonl benchmarks/results/keep_step.jsonl
"""

from __future__ import annotations

import argparse
import copy

import torch
from _results import append_row, cpu_env
from bench_real import image_names, load_case, score

from napari_tessera import segment
from napari_tessera.io import load_model
from napari_tessera.models import default_model_path
from napari_tessera.postprocess import SplitRule
from napari_tessera.training import TrainConfig, loop, train
from napari_tessera.training.losses import segmentation_loss

GOOD = 0.8  # the validation IoU from which a start competed, when these rules were measured


class Recorder:
    """Wraps the run's validation: the weights and numbers of every validated step."""

    def __init__(self):
        self.steps: list[dict] = []
        self.run = None
        self._validate = loop._Run.validate

    def validate(self, run):
        out = self._validate(run)
        self.run = run
        self.steps.append(
            {
                "step": run.step_no,
                "loss": out[0],
                "iou": out[1],
                "loss_batch": batch_loss(run),
                "state": copy.deepcopy(run.model.state_dict()),
            }
        )
        return out


def batch_loss(run) -> float:
    """The mean of the per-batch validation losses (each batch's own Dice)."""
    model = run.model
    ctx, val_batch = run.validation_batching(model)
    was = model.training
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for x, y, w in run.sampler.validation_batches(val_batch, ctx):
            logits = model(torch.from_numpy(x)).float()
            wt = torch.from_numpy(w) if w is not None else None
            total += float(
                segmentation_loss(logits, torch.from_numpy(y), wt, balance=run.balance)
            ) * len(x)
            n += len(x)
    model.train(was)
    return total / max(n, 1)


def step_f1(res, rec: Recorder, state, image, truth) -> dict:
    model = copy.deepcopy(res.model)
    model.load_state_dict(state)
    run = rec.run
    # as the run's finish does: the halo of these weights, then the calibration with it
    model.metadata = {k: v for k, v in model.metadata.items() if k != "halo"}
    run._store_halo(model)
    edges, _ = run.judge(model)
    rule = SplitRule(True, edges.offset, edges.seed_depth, edges.min_size)
    classes = segment(model, image, instances=False, device="cpu")
    return {**score(truth, rule.labels(classes)[0]), "calibration_score": edges.score}


def average(states: list[dict]) -> dict:
    """The element-wise mean of several state dicts (integer counters from the last)."""
    out = {}
    for k, v in states[-1].items():
        if v.is_floating_point():
            out[k] = torch.stack([s[k] for s in states]).mean(0)
        else:
            out[k] = v.clone()
    return out


def choose(steps: list[dict], fine_tune: bool) -> dict[str, int]:
    """The index each rule keeps."""
    start = steps[0] if fine_tune else None
    rest = steps[1:] if fine_tune else steps
    pool = list(range(1 if fine_tune else 0, len(steps)))
    if start is not None and start["iou"] >= GOOD:
        pool = [0, *pool]
    picks = {
        "loss": min(pool, key=lambda i: (steps[i]["loss"], -steps[i]["iou"])),
        "loss_batch": min(pool, key=lambda i: (steps[i]["loss_batch"], -steps[i]["iou"])),
        "iou": max(pool, key=lambda i: (steps[i]["iou"], -steps[i]["loss"])),
        "last": len(steps) - 1,
    }
    if fine_tune:
        good = start["iou"] >= GOOD and start["loss"] < rest[-1]["loss"]
        picks["last_or_start"] = 0 if good else len(steps) - 1
    return picks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", nargs="+", default=["real", "synthetic"])
    ap.add_argument("--method", choices=["scratch", "finetune"], default="scratch")
    ap.add_argument("--start", help="fine-tune from this model file (default: the built-in)")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jsonl")
    args = ap.parse_args()
    torch.set_num_threads(2)
    env = cpu_env()
    for name in image_names(args.images):
        image, truth, painted = load_case(name, 0)
        rec = Recorder()
        loop._Run.validate = lambda run, rec=rec: rec.validate(run)
        start = None
        if args.method == "finetune":
            start = load_model(args.start or default_model_path())
        try:
            res = train(
                image,
                painted,
                config=TrainConfig(steps=args.steps, seed=args.seed, device="cpu"),
                model=start,
            )
        finally:
            loop._Run.validate = rec._validate
        fine = args.method == "finetune"
        f1 = [step_f1(res, rec, s["state"], image, truth) for s in rec.steps]
        picks = choose(rec.steps, fine)
        late = [s["state"] for s in rec.steps if s["step"] > res.steps // 2]
        avg = step_f1(res, rec, average(late), image, truth)
        row = {
            "image": name,
            "method": args.method,
            "start": args.start,
            "kept_by_run": res.best_step,
            "steps": [
                {k: v for k, v in s.items() if k != "state"} | f for s, f in zip(rec.steps, f1)
            ],
            "picks": {
                k: {"step": rec.steps[i]["step"], "f1": f1[i]["f1"]} for k, i in picks.items()
            }
            | {"average": {"step": len(late), "f1": avg["f1"]}},
            "average": avg,
            "env": env,
        }
        append_row(row, args.jsonl, hide=("env", "steps"))


if __name__ == "__main__":
    main()
