#!/usr/bin/env python
"""Peak memory of `segment` against image size and stack depth (B5).

Each case runs in its own Python process (so peaks do not mix), which builds a uint16 image
(a 512x512 synthetic nuclei image repeated to the size asked), records its resident memory
(RSS) before segmenting, runs `segment` with the default settings (or ``--halo``) on the CPU
and records the peak RSS (``VmHWM``). "working" = peak - before: what segmenting costs on
top of the image already in memory. What must scale with the image is the output labels (and,
for one 2D image, the per-slice buffers); what must not scale is anything per stack slice.

    python benchmarks/bench_memory.py --sizes 2048 4096 8192 --depths 1 4 16 --halo exact \
        --json benchmarks/results/memory.json
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys

from _results import report  # noqa: E402  (benchmarks/, on sys.path when run)

CHILD = r"""
import json, sys, time
import numpy as np, torch
torch.set_num_threads({threads})
from napari_tessera import UNet, UNetConfig
from napari_tessera.inference import segment
from napari_tessera.synthetic import nuclei_2d

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

torch.manual_seed(0)
model = UNet(UNetConfig(base_channels={width}, depth=4)).eval()
tile = nuclei_2d((512, 512), seed=1).image
reps = -(-{size} // 512)
img = np.tile(tile, (reps, reps))[: {size}, : {size}]
img = np.ascontiguousarray(np.broadcast_to(img, ({depth}, {size}, {size})))
axes = "ZYX"
if {depth} == 1:
    img, axes = img[0].copy(), "YX"
before = rss_mb()
t0 = time.perf_counter()
labels = segment(model, img, axes=axes, device="cpu", batch_size={batch}, halo={halo!r})
seconds = time.perf_counter() - t0
with open("/proc/self/status") as f:  # VmHWM: ru_maxrss keeps the parent's peak
    peak = next(int(v.split()[1]) for v in f if v.startswith("VmHWM")) / 1024
print(json.dumps(dict(before_mb=round(before, 1), peak_mb=round(peak, 1),
      working_mb=round(peak - before, 1), image_mb=round(img.nbytes / 2**20, 1),
      labels_mb=round(labels.nbytes / 2**20, 1), seconds=round(seconds, 1))))
"""


def run(size: int, depth: int, width: int, batch: int, threads: int, halo="auto") -> dict:
    code = CHILD.format(
        size=size, depth=depth, width=width, batch=batch, threads=threads, halo=halo
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096, 8192])
    ap.add_argument("--depths", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--stack-size", type=int, default=1024)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--halo", default="auto", help="auto, exact or pixels")
    ap.add_argument("--json")
    args = ap.parse_args()
    halo = int(args.halo) if args.halo.isdigit() else args.halo
    rows = []
    for size in args.sizes:
        r = {
            "case": f"2D {size}x{size}",
            "size": size,
            "depth": 1,
            **run(size, 1, args.width, args.batch_size, args.threads, halo),
        }
        rows.append(r)
        print(json.dumps(r), flush=True)
    for depth in args.depths:
        s = args.stack_size
        r = {
            "case": f"ZYX {depth}x{s}x{s}",
            "size": s,
            "depth": depth,
            **run(s, depth, args.width, args.batch_size, args.threads, halo),
        }
        rows.append(r)
        print(json.dumps(r), flush=True)
    env = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": args.threads,
        "width": args.width,
        "batch_size": args.batch_size,
        "halo": halo,
    }
    report(rows, env, args)


if __name__ == "__main__":
    main()
