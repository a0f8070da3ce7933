#!/usr/bin/env python
"""How the validation split affects training from sparse scribbles (an open problem).

Same set-up as bench_accuracy.py (a dozen painted nuclei and five background strokes on the
left half of a synthetic 512x512 image, instance F1 on the right half), a fixed number of
steps so that machines of different speed compare, three ways of holding out validation:

* ``blocks`` (the default): 64x64 blocks of annotations are held out and no training window
  may contain a block pixel, so annotations next to a block always sit near a window's edge;
* ``hidden``: the same blocks, but windows may show their pixels; only their labels are
  hidden from the loss (diagnostic only: labels just outside a block still train);
* ``none``: no validation (``val_fraction=0``), the last model is kept.

For each run it prints the F1 of the kept (best) model, of the last weights, and the
validation IoU history.

    python benchmarks/bench_validation_split.py --seeds 90001 90002 --steps 200
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_accuracy import score_right, scribbles  # noqa: E402

from napari_tessera import segment  # noqa: E402
from napari_tessera.synthetic import nuclei_2d  # noqa: E402
from napari_tessera.training import TrainConfig, sampling, train  # noqa: E402
from napari_tessera.training.checkpoint import load_checkpoint  # noqa: E402


def hide_validation_labels_only():
    """Patch the sampler: validation blocks stay, windows may overlap them, labels are hidden."""
    plain_init = sampling.PatchSampler.__init__

    def init(self, *a, **kw):
        plain_init(self, *a, **kw)
        self._held = [c.copy() for c in self.classes]
        self.classes = [
            np.where(v, sampling.IGNORE, c) for c, v in zip(self.classes, self._val_mask)
        ]
        self._val_mask = [np.zeros_like(v) for v in self._val_mask]
        self._candidates = self._training_candidates()

    def crop(self, r):
        return getattr(self, "_held", self.classes)[r.s][r.y0 : r.y0 + r.size, r.x0 : r.x0 + r.size]

    sampling.PatchSampler.__init__ = init
    sampling.PatchSampler._crop = crop


def run(seed: int, steps: int, variant: str) -> dict:
    s = nuclei_2d((512, 512), seed=seed, radius=(6.0, 11.0), touching=0.35)
    lab = scribbles(s.labels, np.random.default_rng(seed))
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = str(Path(tmp) / "run.ckpt.safetensors")
        cfg = TrainConfig(
            steps=steps,
            seed=seed,
            device="cpu",
            checkpoint=ckpt,
            preview_every=0.0,
            **({"val_fraction": 0.0} if variant == "none" else {}),
        )
        t0 = time.perf_counter()
        res = train(s.image, lab, config=cfg)
        took = time.perf_counter() - t0
        last = load_checkpoint(ckpt).model.eval()
    best_f1 = score_right(s.labels, segment(s.image, res.model, instances=True, device="cpu")).f1
    last_f1 = score_right(s.labels, segment(s.image, last, instances=True, device="cpu")).f1
    return {
        "seed": seed,
        "variant": variant,
        "steps": res.steps,
        "seconds": round(took, 1),
        "best_step": res.best_step,
        "kept_f1": round(best_f1, 3),
        "last_f1": round(last_f1, 3),
        "val_iou": [(h["step"], round(h["val_iou"], 3)) for h in res.history if "val_iou" in h],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, nargs="+", default=[90001, 90002])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--variant", choices=["blocks", "hidden", "none"], nargs="+",
                    default=["blocks", "none"])  # fmt: skip
    ap.add_argument("--json", help="append the results here, one JSON object per line")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if "hidden" in args.variant and len(args.variant) > 1:
        ap.error("run --variant hidden on its own (it patches the sampler for the process)")
    if args.variant == ["hidden"]:
        hide_validation_labels_only()
    for seed in args.seeds:
        for variant in args.variant:
            row = run(seed, args.steps, variant)
            print(json.dumps(row), flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
