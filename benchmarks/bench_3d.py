#!/usr/bin/env python
"""3D objects from 2D slices: instance F1 of linked objects against per-slice ids and plain
3D connected components, per anisotropy; and what linking costs next to segmenting.

Synthetic nuclei stacks (``synthetic.nuclei_3d``: ellipsoids, half of them placed against a
neighbour in any direction, so many touch in Z), segmented with the built-in model on the CPU.
For each anisotropy (the Z step over the pixel size) the same physical scene is sampled with
fewer slices. Scored as 3D instance F1 at IoU 0.5 against the true 3D labels.

    python benchmarks/bench_3d.py --json benchmarks/results/linking.json
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import numpy as np
import torch
from _results import cpu_env, report
from bench_split import flooding
from scipy import ndimage as ndi

from napari_tessera import load_model, segment
from napari_tessera.inference import split_rule
from napari_tessera.metrics import match_instances
from napari_tessera.models import default_model_path
from napari_tessera.options import SegmentOptions
from napari_tessera.postprocess import link_through_z
from napari_tessera.synthetic import nuclei_3d


def _time(fn, *args, repeat: int = 1):
    """``fn(*args)`` and its least time over ``repeat`` runs (the machine is shared)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - t0)
    return out, best


def _per_slice(classes, rule):
    out = np.zeros(classes.shape, np.uint32)
    nxt = 1
    for z in range(classes.shape[0]):
        out[z], nxt = rule.labels(classes[z], nxt)
    return out


def _mean_f1_2d(truth, per_slice) -> float:
    """Mean 2D instance F1 over the slices that hold objects."""
    return float(np.mean([match_instances(t, p).f1 for t, p in zip(truth, per_slice) if t.any()]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--depth", type=int, default=64, help="slices at anisotropy 1")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--anisotropy", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--no-score", action="store_true", help="times only (for large stacks)")
    ap.add_argument("--seed-depth", type=float, help="seed depth (default: the model's)")
    ap.add_argument("--repeat", type=int, default=1, help="time splitting and linking N times")
    ap.add_argument(
        "--flooding",
        action="store_true",
        help="also split and link by scikit-image's flooding from the same seeds (a seed"
        " depth's rule), alternating with the basins on every repeat",
    )
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    model = load_model(default_model_path())
    rows = []
    for a in args.anisotropy:
        for seed in args.seeds:
            s = nuclei_3d((args.depth // a, args.size, args.size), anisotropy=a, seed=seed)
            classes, seg_s = _time(partial(segment, model, s.image, axes="ZYX", device="cpu"))
            opts = SegmentOptions(
                instances=True, voxel_size=(a, 1, 1), device="cpu", seed_depth=args.seed_depth
            )
            rule = split_rule(model, opts)
            n = classes.shape[0]
            link = partial(link_through_z, classes, "Z", (n,), rule, opts.spacing)
            ways = ("basins", "flooding") if args.flooding else ("basins",)
            best = {way: [float("inf"), float("inf")] for way in ways}
            out = {}
            for _ in range(args.repeat):  # the ways alternate: load hits them alike
                for way in ways:
                    with flooding(way == "flooding"):
                        out[way] = [_time(_per_slice, classes, rule), _time(link)]
                    best[way] = [min(b, t) for b, (_, t) in zip(best[way], out[way])]
            (per_slice, _), (linked, _) = out["basins"]
            split_s, link_s = best["basins"]
            row = {
                "anisotropy": a,
                "seed": seed,
                "seed_depth": rule.seed_depth,
                "shape": list(s.image.shape),
                "true_objects": int(s.labels.max()),
                "segment_s": round(seg_s, 2),  # the class maps
                "split_2d_s": round(split_s, 2),  # each slice's own objects (--instances 2d)
                "link_s": round(link_s, 2),  # 3D objects instead (--instances)
                # what 3D objects cost over --instances 2d, as a share of that run's time
                "linking_adds": round((link_s - split_s) / (seg_s + split_s), 3),
            }
            if args.flooding:
                split_f, link_f = best["flooding"]
                row["split_2d_flooding_s"] = round(split_f, 2)
                row["link_flooding_s"] = round(link_f, 2)
                row["linking_adds_flooding"] = round((link_f - split_f) / (seg_s + split_f), 3)
                if not args.no_score:
                    row["f1_linked_flooding"] = round(
                        match_instances(s.labels, out["flooding"][1][0]).f1, 3
                    )
            if not args.no_score:
                cc, _ = ndi.label(classes > 0, np.ones((3, 3, 3)))
                row["f1_linked"] = round(match_instances(s.labels, linked).f1, 3)
                row["f1_per_slice"] = round(match_instances(s.labels, per_slice).f1, 3)
                row["f1_connected_components"] = round(match_instances(s.labels, cc).f1, 3)
                # the same split rule in 2D: each slice's objects against that slice's truth
                row["f1_2d_mean_per_slice"] = round(_mean_f1_2d(s.labels, per_slice), 3)
            rows.append(row)
            print(row, flush=True)
    report(rows, cpu_env(), args)


if __name__ == "__main__":
    main()
