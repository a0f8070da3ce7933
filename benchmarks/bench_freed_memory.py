#!/usr/bin/env python
"""What keeping freed memory in the process changes: time and peak memory, side by side.

glibc hands large freed blocks straight back to the system, and the next large array is
fresh memory again. On a virtual machine that returns freed memory to its host, fresh memory
costs far more than reusing it. Each case runs in its own Python process, alternately with
glibc's defaults and with ``GLIBC_TUNABLES`` set so that freed memory stays in the process
(``--tunables``); each child times the case (best of ``--repeat``) and records its working
memory (the process's peak RSS, VmHWM, during the case minus its peak before it; the
input is made beforehand and loaded from a file, so the peak is the case's own):

  segment  the built-in model over a stack of synthetic nuclei (``--slices`` x ``--size``²),
           3D objects linked through Z
  link     3D objects (seed depth ``--seed-depth``) from the class maps of a synthetic nuclei
           stack (``--link-depth`` x ``--size``², Z step 1), without the network

    python benchmarks/bench_freed_memory.py --rounds 2 --json benchmarks/results/freed_memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from _results import cpu_env, report

from napari_tessera.synthetic import nuclei_3d

KEEP = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"

CHILD = r"""
import json, time
import numpy as np, torch
torch.set_num_threads({threads})
from napari_tessera import segment
from napari_tessera.io import load_model
from napari_tessera.models import default_model_path
from napari_tessera.postprocess import split_instances

def peak_mb():  # this process's own high-water mark (ru_maxrss keeps the parent's)
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) / 1024

data = np.load("{data}")
if "{case}" == "segment":
    model = load_model(default_model_path())
    segment(model, data[:1, :256, :256], axes="ZYX", device="cpu")  # warm-up
    run = lambda: segment(model, data, axes="ZYX", device="cpu", instances=True)
else:
    run = lambda: split_instances(data, seed_depth={seed_depth})
before = peak_mb()
best = float("inf")
for _ in range({repeat}):
    t0 = time.perf_counter()
    run()
    best = min(best, time.perf_counter() - t0)
print(json.dumps({{"seconds": best, "working_mb": peak_mb() - before}}))
"""


def child(case: str, data: Path, keep: bool, args) -> dict:
    env = dict(os.environ)
    env.pop("GLIBC_TUNABLES", None)
    if keep:
        env["GLIBC_TUNABLES"] = args.tunables
    code = CHILD.format(
        case=case, data=data, threads=args.threads, repeat=args.repeat, seed_depth=args.seed_depth
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=["segment", "link"])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--slices", type=int, default=8, help="slices segmented")
    ap.add_argument("--link-depth", type=int, default=32, help="slices linked")
    ap.add_argument("--seed-depth", type=float, default=2.0)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2, help="alternations of the two settings")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tunables", default=KEEP)
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = []
    tmp = Path(tempfile.mkdtemp())
    for case in args.cases:
        data = tmp / f"{case}.npy"  # made here: the children's peaks are the case's own
        if case == "segment":
            np.save(data, nuclei_3d((args.slices, args.size, args.size), seed=1).image)
        else:
            np.save(data, nuclei_3d((args.link_depth, args.size, args.size), seed=1).labels > 0)
        for r in range(args.rounds):
            got = {keep: child(case, data, keep, args) for keep in (False, True)}
            row = {
                "case": case,
                "round": r,
                "default_s": round(got[False]["seconds"], 2),
                "kept_s": round(got[True]["seconds"], 2),
                "speed_up": round(got[False]["seconds"] / got[True]["seconds"], 2),
                "default_working_mb": round(got[False]["working_mb"]),
                "kept_working_mb": round(got[True]["working_mb"]),
                "memory_ratio": round(got[True]["working_mb"] / got[False]["working_mb"], 2),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    shutil.rmtree(tmp)
    report(rows, cpu_env(), args)


if __name__ == "__main__":
    main()
