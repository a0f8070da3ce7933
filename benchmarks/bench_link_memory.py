#!/usr/bin/env python
"""Peak memory and time of segmenting a zarr Z stack into 3D objects, against its depth.

Each case runs in its own Python process (peaks do not mix). The input is a zarr stack of
synthetic nuclei (``synthetic.nuclei_3d``, Z step 2 pixels) written beforehand; the child opens
it lazily, records its resident memory, runs ``segment_to_zarr(..., instances=True)`` with the
built-in model on the CPU (3D objects: the slices' class maps, then linking through Z in slabs
when the stack does not fit ``--link-memory``) and records the peak RSS (``VmHWM``).

    python benchmarks/bench_link_memory.py --depths 32 128 --size 512 --link-memory 1024 \
        --json benchmarks/results/link_memory.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from _results import cpu_env, report

CHILD = r"""
import json, sys, time
import torch
torch.set_num_threads({threads})
from napari_tessera import chunked, load_model
from napari_tessera.chunked import plan_slabs, segment_to_zarr
from napari_tessera.images import open_image
from napari_tessera.axes import layout
from napari_tessera.models import default_model_path

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

chunked.LINK_MEMORY = {link_memory} << 20
model = load_model(default_model_path())
image, _ = open_image({src!r})
slabs = plan_slabs(layout(image.shape, "ZYX"), 2.0)
before = rss_mb()
t0 = time.perf_counter()
segment_to_zarr(model, image, {out!r}, axes="ZYX", instances=True, voxel_size=(2, 1, 1),
                device="cpu")
seconds = time.perf_counter() - t0
with open("/proc/self/status") as f:  # VmHWM: ru_maxrss keeps the parent's peak
    peak = next(int(v.split()[1]) for v in f if v.startswith("VmHWM")) / 1024
print(json.dumps(dict(before_mb=round(before), peak_mb=round(peak),
                      working_mb=round(peak - before), seconds=round(seconds, 1),
                      slabs=[slabs.depth, slabs.overlap] if slabs else None)))
"""


def _write_stack(path: Path, depth: int, size: int) -> None:
    import numpy as np
    import zarr

    from napari_tessera.synthetic import nuclei_3d

    block = nuclei_3d((32, size, size), anisotropy=2.0, seed=1).image
    z = zarr.open_array(
        str(path), mode="w", shape=(depth, size, size), chunks=(1, size, size), dtype=block.dtype
    )
    for z0 in range(0, depth, 32):  # the 32-slice scene repeated, mirrored every other time
        part = block if (z0 // 32) % 2 == 0 else block[::-1]
        z[z0 : z0 + 32] = np.asarray(part[: depth - z0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--depths", type=int, nargs="+", default=[32, 128])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--link-memory", type=int, default=1024, help="MB for linking (LINK_MEMORY)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for depth in args.depths:
            src, out = Path(tmp) / f"in{depth}.zarr", Path(tmp) / f"out{depth}.zarr"
            _write_stack(src, depth, args.size)
            code = CHILD.format(
                threads=args.threads, link_memory=args.link_memory, src=str(src), out=str(out)
            )
            res = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=True
            )
            row = {"depth": depth, "size": args.size, **json.loads(res.stdout.splitlines()[-1])}
            rows.append(row)
            print(row, flush=True)
    report(rows, cpu_env(), args)


if __name__ == "__main__":
    main()
