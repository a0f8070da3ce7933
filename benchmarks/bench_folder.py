#!/usr/bin/env python
"""A folder run against one call per image: time per image, and how often the model loads.

N small synthetic images (default 200 of 128 x 128) are written to a temporary folder, then
segmented with the built-in model (instances, CPU) in two ways, in one process, side by side:

  folder    ``tessera segment FOLDER -o OUT``: one run over every file
  per-file  ``tessera segment FILE -o OUT_FILE``: one call per image (in-process, so Python and
            torch start once; a shell loop of separate commands also pays both every time)
  cluster   ``tessera segment FOLDER -o OUT --scheduler local --workers W``: each file a
            task on a local dask cluster (with --cluster-workers W; the cluster's start-up
            is included)

    python benchmarks/bench_folder.py --json benchmarks/results/folder.json
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import tifffile
import torch
from _results import cpu_env, report

import napari_tessera.io as tio
from napari_tessera import cli
from napari_tessera.synthetic import nuclei_2d


def counted_loads():
    """Count model loads (the CLI's loader reads the model file through io.load_model)."""
    calls = []
    real = tio.load_model

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    tio.load_model = counting
    return calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("-n", type=int, default=200, help="images")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--cluster-workers", type=int, default=0, help="also the cluster way")
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    tmp = Path(tempfile.mkdtemp(prefix="tessera-folder-"))
    raw = tmp / "raw"
    raw.mkdir()
    for k in range(args.n):
        tifffile.imwrite(raw / f"img_{k:04d}.tif", nuclei_2d((args.size, args.size), seed=k).image)
    loads = counted_loads()
    rows = []
    ways = ["per-file", "folder"] + (["cluster"] if args.cluster_workers else [])
    for way in ways * 2:  # alternated: the machine drifts
        out = tmp / f"out-{way}-{len(rows)}"
        out.mkdir()
        loads.clear()
        t0 = time.perf_counter()
        opts = ["--instances", "--device", "cpu", "-q"]
        if way == "folder":
            assert cli.main(["segment", str(raw), "-o", str(out), *opts]) == 0
        elif way == "cluster":
            dask = ["--scheduler", "local", "--workers", str(args.cluster_workers)]
            assert cli.main(["segment", str(raw), "-o", str(out), *opts, *dask]) == 0
        else:
            for f in sorted(raw.iterdir()):
                target = out / f"{f.stem}_labels.tif"
                assert cli.main(["segment", str(f), "-o", str(target), *opts]) == 0
        seconds = time.perf_counter() - t0
        per_image = round(1000 * seconds / args.n, 1)
        rows.append(
            {"way": way, "images": args.n, "seconds": round(seconds, 2),
             "ms_per_image": per_image, "model_loads": len(loads)}
        )  # fmt: skip
        print(rows[-1], flush=True)
    report(rows, cpu_env(), args)


if __name__ == "__main__":
    main()
