"""A bioimage.io model from another tool, run by Tessera's tiling engine and by the field's own
runner (``bioimageio.core.predict``, with its blocking) on the same image, side by side.

    python bench_foreign.py PACKAGE.zip [--size 2048] [--json results/foreign.json]

The image is the package's own test input, mirrored out to ``--size`` pixels square (real
microscopy when the package's test input is). Reports the time of each and how far apart the
probabilities are, over the image and away from its border (where Tessera mirrors and the
package's own runner pads as its network does).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def _image(path: Path, size: int) -> np.ndarray:
    import zipfile

    from bioimageio.spec import load_description

    descr = load_description(path, format_version="latest")
    name = descr.inputs[0].test_tensor.source
    name = str(getattr(name, "path", name)).rsplit("/", 1)[-1]
    with zipfile.ZipFile(path) as zf, zf.open(name) as f:
        raw = np.load(f).squeeze().astype(np.float32)
    if raw.ndim != 2:
        raise SystemExit("this benchmark takes packages with one 2D input channel")
    reps = [(0, max(0, size - n)) for n in raw.shape]
    return np.pad(raw, reps, mode="symmetric")[:size, :size]


def _core_predict(path: Path, image: np.ndarray) -> np.ndarray:
    from bioimageio.core import predict
    from bioimageio.spec import load_description

    descr = load_description(path, format_version="latest")
    tin = descr.inputs[0]
    x = image[None, None]
    fixed = {str(a.id): a.size for a in tin.axes if isinstance(getattr(a, "size", None), int)}
    blocks = {
        tin.id: {a.id: a.size for a in tin.axes if str(a.id) in ("y", "x") and str(a.id) in fixed}
    }
    out = predict(model=descr, inputs={tin.id: x}, input_block_shape=blocks if fixed else None)
    (arr,) = [t.data.values for t in out.members.values()]
    return np.asarray(arr, np.float32).squeeze()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("package")
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--json")
    args = ap.parse_args()

    import bioimageio.core
    import onnxruntime
    from _results import cpu_env, report

    from napari_tessera.inference import predict_tiled
    from napari_tessera.io import load_model

    args.package = Path(args.package)
    image = _image(args.package, args.size)
    model = load_model(args.package)
    predict_tiled(model, image[:600, :600])  # warm up both
    _core_predict(args.package, image[:600, :600])
    t = time.perf_counter()
    ours = predict_tiled(model, image)[0]
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    theirs = _core_predict(args.package, image)
    t_core = time.perf_counter() - t
    b = model.spec.halo
    diff = np.abs(ours - theirs)
    inner = diff[b:-b, b:-b]
    res = {
        "package": args.package.name,
        "image": list(image.shape),
        "tessera_s": round(t_ours, 2),
        "bioimageio_core_s": round(t_core, 2),
        "time_ratio_core_over_tessera": round(t_core / t_ours, 2),
        "max_abs_diff": float(diff.max()),
        "max_abs_diff_inside": float(inner.max()),
        "mean_abs_diff_inside": float(inner.mean()),
        "foreground_agreement": float(((ours > 0.5) == (theirs > 0.5)).mean()),
    }
    env = {
        **cpu_env(),
        "onnxruntime": onnxruntime.__version__,
        "bioimageio.core": bioimageio.core.__version__,
    }
    args.package = str(args.package)
    report([res], env, args)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
