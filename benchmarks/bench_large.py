#!/usr/bin/env python
"""Stacks larger than memory: peak memory against stack depth, zarr in and out (issue B5 for
lazy data), against the in-memory path; and a dask LocalCluster against one process.

Each case runs in its own Python process, so peaks do not mix. The input is a ZYX uint16 zarr
array (one chunk per slice) of synthetic nuclei slices; "zarr" segments it with
`segment_to_zarr` (lazy input, labels written slice by slice), "in memory" reads the whole stack
and runs `segment` (labels for the whole stack in memory), "dask" runs the zarr path on a
LocalCluster (`--workers` single-threaded processes; torch threads split between them).
Peak = the process's maximum resident memory (VmHWM), everything included (Python, torch,
the model). Built-in model, default settings (``--halo`` sets the halo), CPU.

    python benchmarks/bench_large.py --size 1024 --depths 4 16 64 --workers 2 \
        --json benchmarks/results/large.json
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, time
import numpy as np, torch, zarr
torch.set_num_threads({threads})
from napari_tessera.io import load_model
from napari_tessera.models import default_model_path
from napari_tessera.chunked import segment_to_zarr
from napari_tessera.images import open_image
from napari_tessera.inference import segment

def main():
    model = load_model(default_model_path())
    t0 = time.perf_counter()
    axes = "{axes}"
    if "{mode}" == "in memory":
        img, _ = open_image("{src}")
        img = np.asarray(img[...])
        labels = segment(model, img, axes=axes, device="cpu", halo={halo!r})
    else:
        if "{mode}" == "dask":
            from napari_tessera.cluster import segment_to_zarr as on_cluster

            on_cluster(model, "{src}", "{out}", axes=axes, device="cpu", halo={halo!r},
                       scheduler="local", workers={workers})
        else:
            block = {block} if "{mode}" == "zarr blocks" else None
            segment_to_zarr(model, "{src}", "{out}", axes=axes, device="cpu", halo={halo!r},
                            block_size=block)
    seconds = time.perf_counter() - t0
    with open("/proc/self/status") as f:  # VmHWM: ru_maxrss keeps the parent's peak
        peak = next(int(v.split()[1]) for v in f if v.startswith("VmHWM")) / 1024
    print(json.dumps(dict(peak_mb=round(peak, 1), seconds=round(seconds, 1))))

if __name__ == "__main__":
    main()
"""


def make_stack(path: Path, depth: int, size: int) -> None:
    import numpy as np
    import zarr

    from napari_tessera.synthetic import nuclei_2d

    z = zarr.open_array(
        str(path), mode="w", shape=(depth, size, size), chunks=(1, size, size), dtype="u2"
    )
    tiles = [nuclei_2d((512, 512), seed=s).image for s in range(4)]
    reps = -(-size // 512)
    for d in range(depth):
        z[d] = np.tile(tiles[d % 4], (reps, reps))[:size, :size]
    z.attrs["axes"] = "ZYX"


def run(
    mode: str, src: Path, out: Path, threads: int, workers: int, axes="ZYX", block=0, halo="auto"
) -> dict:
    code = CHILD.format(
        mode=mode, src=src, out=out, threads=threads, workers=workers, axes=axes, block=block,
        halo=halo,
    )  # fmt: skip
    script = out.parent / "child.py"
    script.write_text(code)
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(res.stderr[-2000:])
    shutil.rmtree(out, ignore_errors=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--depths", type=int, nargs="+", default=[4, 16, 64])
    ap.add_argument("--memory-depths", type=int, nargs="+", default=None)
    ap.add_argument("--dask-depth", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--plane", type=int, default=0, help="also one 2D plane of this side")
    ap.add_argument("--block", type=int, default=4096, help="block side for --plane")
    ap.add_argument("--halo", default="auto", help="auto, exact or pixels")
    ap.add_argument("--json")
    args = ap.parse_args()
    halo = int(args.halo) if args.halo.isdigit() else args.halo
    import torch

    results = []
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        for depth in sorted(set(args.depths) | {args.dask_depth}):
            src = d / f"stack{depth}.zarr"
            make_stack(src, depth, args.size)
            modes = []
            if depth in args.depths:
                modes.append("zarr")
            if depth in (args.memory_depths or args.depths):
                modes.append("in memory")
            if depth == args.dask_depth:
                modes.append("dask")
            for mode in modes:
                r = run(mode, src, d / "out.zarr", args.threads, args.workers, halo=halo)
                r.update(mode=mode, depth=depth, size=args.size)
                mp = depth * args.size**2 / 1e6
                r["mp_per_s"] = round(mp / r["seconds"], 3)
                results.append(r)
                print(json.dumps(r), flush=True)
            shutil.rmtree(src)
        if args.plane:
            import zarr

            src = d / "plane.zarr"
            make_stack(src, 1, args.plane)
            z = zarr.open_array(str(src), mode="r")
            plane = zarr.open_array(
                str(d / "plane2d.zarr"), mode="w", shape=z.shape[1:], chunks=(2048, 2048),
                dtype=z.dtype,
            )  # fmt: skip
            plane[...] = z[0]
            plane.attrs["axes"] = "YX"
            for mode in ("zarr blocks", "in memory"):
                r = run(
                    mode, d / "plane2d.zarr", d / "out.zarr", args.threads, 1, "YX", args.block,
                    halo,
                )  # fmt: skip
                r.update(mode=mode, plane=args.plane, block=args.block if "blocks" in mode else 0)
                r["mp_per_s"] = round(args.plane**2 / 1e6 / r["seconds"], 3)
                results.append(r)
                print(json.dumps(r), flush=True)
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "threads": args.threads,
        "workers": args.workers,
        "halo": halo,
    }
    print("env", json.dumps(env))
    if args.json:
        Path(args.json).write_text(json.dumps({"env": env, "results": results}, indent=1))


if __name__ == "__main__":
    main()
