#!/usr/bin/env python
"""Does the same command give the same model? Three runs of `tessera train` per image, one of
them while another process keeps the CPU busy, each followed by `tessera segment --instances`
and scored as in bench_real.py (instance F1 at IoU 0.5 on the unpainted right half).

    python benchmarks/bench_repeat.py --images kc167_095 synthetic_90002 \
        --jsonl benchmarks/results/repeat.jsonl
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing as mp
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tifffile
from _results import append_row, cpu_env
from bench_real import load_case, score
from safetensors.numpy import load_file


def _spin(stop_at: float) -> None:
    x = 0
    while time.time() < stop_at:
        x += 1


def weights_digest(path: Path) -> str:
    h = hashlib.sha256()
    for k, v in sorted(load_file(str(path)).items()):
        h.update(k.encode())
        h.update(v.tobytes())
    return h.hexdigest()[:16]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", nargs="+", default=["kc167_095", "synthetic_90002"])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--busy-run", type=int, default=1, help="this run shares the CPU")
    ap.add_argument("--extra", nargs="*", default=[], help="more `tessera train` arguments")
    ap.add_argument("--jsonl")
    args = ap.parse_args()
    env = cpu_env()
    tessera = [sys.executable, "-m", "napari_tessera.cli"]
    for name in args.images:
        image, truth, painted = load_case(name, 0)
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            tifffile.imwrite(d / "image.tif", image)
            tifffile.imwrite(d / "painted.tif", painted)
            for run in range(args.runs):
                hog = None
                if run == args.busy_run:  # a busy neighbour for the whole run
                    hog = mp.Process(target=_spin, args=(time.time() + 3600,))
                    hog.start()
                model, labels = d / f"m{run}.safetensors", d / f"l{run}.tif"
                t0 = time.perf_counter()
                cmd = ["train", str(d / "image.tif"), str(d / "painted.tif"), "-o", str(model)]
                train = subprocess.run(
                    [*tessera, *cmd, "--seed", "0", "-q", *args.extra], capture_output=True
                )
                seconds = time.perf_counter() - t0
                if hog is not None:
                    hog.terminate()
                if train.returncode:
                    raise SystemExit(train.stderr.decode())
                seg = ["segment", str(d / "image.tif"), "-o", str(labels), "--model", str(model)]
                subprocess.run([*tessera, *seg, "--instances", "-q"], check=True)
                row = {
                    "image": name,
                    "run": run,
                    "busy": hog is not None,
                    "train_s": round(seconds, 1),
                    "weights": weights_digest(model),
                    **score(truth, tifffile.imread(labels)),
                    "extra": args.extra,
                    "env": env,
                }
                append_row(row, args.jsonl)


if __name__ == "__main__":
    main()
