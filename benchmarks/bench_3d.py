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

import numpy as np
import torch
from _results import cpu_env, report
from scipy import ndimage as ndi

from napari_tessera import load_model, segment
from napari_tessera.inference import split_rule
from napari_tessera.metrics import match_instances
from napari_tessera.models import default_model_path
from napari_tessera.options import SegmentOptions
from napari_tessera.postprocess import link_through_z
from napari_tessera.synthetic import nuclei_3d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--depth", type=int, default=64, help="slices at anisotropy 1")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    model = load_model(default_model_path())
    rows = []
    for a in (1, 2, 4):
        for seed in args.seeds:
            s = nuclei_3d((args.depth // a, args.size, args.size), anisotropy=a, seed=seed)
            t0 = time.perf_counter()
            classes = segment(model, s.image, axes="ZYX", device="cpu")
            seg_s = time.perf_counter() - t0
            opts = SegmentOptions(instances=True, voxel_size=(a, 1, 1), device="cpu")
            rule = split_rule(model, opts)
            t0 = time.perf_counter()
            lay = classes.shape[0]
            linked = link_through_z(classes, "Z", (lay,), rule, opts.spacing)
            link_s = time.perf_counter() - t0
            per_slice = np.zeros(classes.shape, np.int64)
            nxt = 1
            for z in range(lay):
                per_slice[z], nxt = rule.labels(classes[z], nxt)
            cc, _ = ndi.label(classes > 0, np.ones((3, 3, 3)))
            rows.append(
                {
                    "anisotropy": a,
                    "seed": seed,
                    "shape": list(s.image.shape),
                    "true_objects": int(s.labels.max()),
                    "f1_linked": round(match_instances(s.labels, linked).f1, 3),
                    "f1_per_slice": round(match_instances(s.labels, per_slice).f1, 3),
                    "f1_connected_components": round(match_instances(s.labels, cc).f1, 3),
                    "segment_s": round(seg_s, 2),
                    "link_s": round(link_s, 2),
                }
            )
            print(rows[-1], flush=True)
    report(rows, cpu_env(), args)


if __name__ == "__main__":
    main()
