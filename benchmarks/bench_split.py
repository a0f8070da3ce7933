#!/usr/bin/env python
"""The split rule with a seed depth on real images: objects by the basins each pixel climbs
into (Tessera's) against scikit-image's flooding from the same seeds.

Two foregrounds per real development image (``../shared/realdata.py``): the human mask's
(touching cells merged into one foreground, so the split alone decides the objects) and the
built-in model's class map. Each is split at several seed depths both ways; instance F1 at
IoU 0.5 against the human mask, the share of foreground pixels given the same id by both,
and the time of each (best of ``--repeat``).

    python benchmarks/bench_split.py --json benchmarks/results/split_by_basins.json
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext
from unittest import mock

import numpy as np
import torch
from _results import cpu_env, report
from bench_real import realdata

from napari_tessera import load_model, maxima, segment
from napari_tessera.metrics import match_instances
from napari_tessera.models import default_model_path
from napari_tessera.postprocess import split_instances


def flooding(flood: bool = True):
    """A context in which a split with a seed depth floods every component with
    scikit-image's watershed from the same seeds (the basins give no seeds)."""
    if not flood:
        return nullcontext()
    return mock.patch.object(maxima.Basins, "seeds", lambda self, markers: None)


def _split(fg: np.ndarray, depth: float, flood: bool, repeat: int) -> tuple[np.ndarray, float]:
    """The labels of ``split_instances`` and its least time; ``flood``: by the flooding."""
    best, labels = float("inf"), None
    with flooding(flood):
        for _ in range(repeat):
            t0 = time.perf_counter()
            labels, _ = split_instances(fg, seed_depth=depth)
            best = min(best, time.perf_counter() - t0)
    return labels, best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--depths", type=float, nargs="+", default=[0.5, 1.0, 2.0, 4.0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    rd = realdata()
    model = load_model(default_model_path())
    rows = []
    for name in rd.NAMES:
        image, mask = rd.load(name)
        model_fg = segment(model, image, device="cpu") > 0
        for source, fg in (("human mask", mask > 0), ("built-in model", model_fg)):
            for depth in args.depths:
                flooded, flood_s = _split(fg, depth, True, args.repeat)
                climbed, climb_s = _split(fg, depth, False, args.repeat)
                row = {
                    "image": name,
                    "foreground": source,
                    "seed_depth": depth,
                    "f1_flooding": round(match_instances(mask, flooded).f1, 4),
                    "f1_basins": round(match_instances(mask, climbed).f1, 4),
                    "objects_flooding": int(flooded.max()),
                    "objects_basins": int(climbed.max()),
                    "same_id": round(float(np.mean(flooded[fg] == climbed[fg])), 4),
                    "flooding_s": round(flood_s, 4),
                    "basins_s": round(climb_s, 4),
                }
                rows.append(row)
                print(row, flush=True)
    for source in ("human mask", "built-in model"):
        for depth in args.depths:
            sel = [r for r in rows if r["foreground"] == source and r["seed_depth"] == depth]
            mean = {k: np.mean([r[k] for r in sel]) for k in ("f1_flooding", "f1_basins")}
            change = [r["f1_basins"] - r["f1_flooding"] for r in sel]
            print(
                f"{source}, seed depth {depth}: F1 flooding {mean['f1_flooding']:.4f}, basins "
                f"{mean['f1_basins']:.4f} (per image {min(change):+.4f} to {max(change):+.4f}); "
                f"same id {np.mean([r['same_id'] for r in sel]):.4f}; time "
                f"{sum(r['basins_s'] for r in sel) / sum(r['flooding_s'] for r in sel):.2f}x"
            )
    report(rows, cpu_env(), args)


if __name__ == "__main__":
    main()
