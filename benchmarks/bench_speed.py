#!/usr/bin/env python
"""Tiled inference speed against its ceiling and against MONAI, side by side in one run.

For each network (base width 16 and 64, depth 4, random weights with non-trivial BatchNorm
statistics) on one synthetic fluorescence image, in one process, alternating between the
settings on every repeat (best of --repeats kept, so background load hits all alike):

  B0  forward only: the fast (folded-BatchNorm, channels-last) network on a batch of tiles of
      the default tile size (auto halo), no tiling work; megapixels of kept tile cores per
      second. This is the ceiling for predict_tiled's default tiles.
  B1  whole: predict_whole, the plain network once over the whole reflect-padded image.
  B2  tessera: predict_tiled with its defaults (auto halo, crop blending, fast network), with
      the exact halo, and with fast=False (the same network as given); against
      monai.inferers.sliding_window_inference (roi 512, overlap 0.25, gaussian blending,
      reflect padding, sw_batch_size 1 and 4) on the same network, with the same percentile
      normalisation and softmax inside the timing.
      Also: the default with its auto halo measured inside the timed call (what a network
      without a stored halo costs the first time), a 512-pixel core with the exact halo,
      a 32-px halo and bf16 autocast (approximate; fast where the CPU has bf16
      units, e.g. AMX).
  B3  end to end: segment() on the uint16 image (normalise, tile, infer, argmax) -> labels.
  B6  agreement: share of pixels whose label (argmax) equals one whole-image pass.

Random weights make the deep levels nearly silent, so a small halo agrees with the whole-image
pass almost perfectly on them; ``--widths builtin`` runs the trained built-in model, and a
``.safetensors`` path any trained model: their agreement numbers are the ones that mean
something for approximate settings.

Megapixels per second count image pixels (not tile pixels). Ratios are against MONAI's better
setting. Example:

    python benchmarks/bench_speed.py --size 2048 --widths 16 64 --repeats 3 \
        --json benchmarks/results/speed.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch
from _results import report  # noqa: E402  (benchmarks/, on sys.path when run)

from napari_tessera import UNet, UNetConfig, __version__
from napari_tessera.axes import layout
from napari_tessera.halo import AUTO_HALOS, measure_halo, read_probes
from napari_tessera.inference import predict_tiled, predict_whole, prepare, run_halo, segment
from napari_tessera.model.fast import inference_copy
from napari_tessera.normalize import normalize_slice
from napari_tessera.options import SegmentOptions
from napari_tessera.synthetic import nuclei_2d


def make_network(width: int, depth: int, seed: int = 0) -> UNet:
    """A U-Net with random weights and BatchNorm statistics like a trained one's."""
    torch.manual_seed(seed)
    model = UNet(UNetConfig(base_channels=width, depth=depth))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return model.eval()


def monai_runner(model, image: np.ndarray, sw_batch_size: int):
    from monai.inferers import sliding_window_inference

    def run():
        x = torch.from_numpy(normalize_slice(image[None], model.config.normalization))[None]
        with torch.inference_mode():
            logits = sliding_window_inference(
                x,
                roi_size=(512, 512),
                sw_batch_size=sw_batch_size,
                predictor=model,
                overlap=0.25,
                mode="gaussian",
                padding_mode="reflect",
            )
            return torch.softmax(logits, dim=1)[0].numpy()

    return run


def forward_only(model, image: np.ndarray, batch_size: int, halo):
    """B0: the fast network on ``batch_size`` default tiles; returns (run, core megapixels)."""
    lay = layout(image.shape, "YX")
    options = SegmentOptions(halo=halo, device="cpu")
    st = prepare(model, lay, options, run_halo(model, image, lay, options)[0])
    ty, tx = st.plan.tile_shape
    core = st.plan.y.core * st.plan.x.core
    fast = inference_copy(model, torch.device("cpu"))
    x = torch.randn(batch_size, 1, ty, tx).contiguous(memory_format=torch.channels_last)

    def run():
        with torch.inference_mode():
            return fast(x)

    return run, batch_size * core / 1e6, (ty, tx), st.plan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument(
        "--widths",
        nargs="+",
        default=["16", "64"],
        help="base widths of random networks, 'builtin' for the trained built-in model, or a "
        "model file (.safetensors)",
    )
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fast-halo", type=int, default=32)
    ap.add_argument("--skip-whole", action="store_true", help="no whole-image pass (B1)")
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    image = nuclei_2d((args.size, args.size), seed=1).image  # uint16
    mp = image.size / 1e6
    rows = []
    for width in args.widths:
        if width == "builtin" or width.endswith(".safetensors"):  # trained weights: what
            from napari_tessera.io import load_model  # halo agreement means in practice
            from napari_tessera.models import default_model_path

            model = load_model(default_model_path() if width == "builtin" else width)
        else:
            model = make_network(int(width), args.depth)
        stored = model.metadata.get("halo")
        probes = lambda m=model: read_probes(m, image, layout(image.shape, "YX"))  # noqa: E731
        t0 = time.perf_counter()
        if stored:  # measured for the record; the runs use the stored number
            found = measure_halo(model, probes())
        else:  # measured and cached, as a first predict_tiled call would
            AUTO_HALOS.pixels(model, probes)
            found = AUTO_HALOS.latest(model)
        measure_s = time.perf_counter() - t0
        auto = stored["pixels"] if stored else found.pixels
        b0, b0_mp, tile, plan = forward_only(model, image, batch_size=1, halo=auto)
        exact_plan = forward_only(model, image, batch_size=1, halo="exact")[3]

        def measured_in_call(m=model, stored=stored):
            m.metadata.pop("halo", None)
            AUTO_HALOS.forget()  # measured again in the call
            try:
                return predict_tiled(m, image, device="cpu")
            finally:
                if stored:
                    m.metadata["halo"] = stored

        runs = {
            "B0 forward only (1 tile)": b0,
            "B2 tessera predict_tiled (default)": lambda m=model: predict_tiled(
                m, image, device="cpu"
            ),
            "B2 tessera default, halo measured in the call": measured_in_call,
            "B2 tessera halo exact": lambda m=model: predict_tiled(
                m, image, device="cpu", halo="exact"
            ),
            "B2 tessera predict_tiled fast=False": lambda m=model: predict_tiled(
                m, image, device="cpu", fast=False
            ),
            "B2 monai sliding_window sw_batch 1": monai_runner(model, image, 1),
            "B2 monai sliding_window sw_batch 4": monai_runner(model, image, 4),
            "B3 tessera segment (uint16 -> labels)": lambda m=model: segment(
                m, image, device="cpu"
            ),
            "B2 tessera core 512, exact": lambda m=model, h=exact_plan: predict_tiled(
                m, image, device="cpu", halo="exact", tile_size=512 + 2 * h.y.keep_offset
            ),
            f"B2 tessera halo {args.fast_halo} (approximate)": lambda m=model: predict_tiled(
                m, image, device="cpu", halo=args.fast_halo
            ),
            "B2 tessera bf16 autocast": lambda m=model: predict_tiled(
                m, image, device="cpu", precision="bf16"
            ),
        }
        if not args.skip_whole:
            runs["B1 whole-image pass"] = lambda m=model: predict_whole(m, image)
        best = {k: float("inf") for k in runs}
        out = {}
        for _ in range(args.repeats):
            for name, fn in runs.items():
                t0 = time.perf_counter()
                out[name] = fn()
                best[name] = min(best[name], time.perf_counter() - t0)
        ref = out.get("B1 whole-image pass")
        ref_labels = ref.argmax(0) if ref is not None else None
        monai_best = min(
            best["B2 monai sliding_window sw_batch 1"], best["B2 monai sliding_window sw_batch 4"]
        )
        for name in runs:
            pixels = b0_mp if name.startswith("B0") else mp
            row = {
                "width": width,
                "size": args.size,
                "run": name,
                "seconds": round(best[name], 3),
                "mp_per_s": round(pixels / best[name], 3),
            }
            if not name.startswith("B0"):
                row["speed_vs_monai_best"] = round(monai_best / best[name], 2)
            if ref_labels is not None and not name.startswith("B0"):
                labels = out[name] if name.startswith("B3") else out[name].argmax(0)
                row["label_agreement_with_whole"] = round(float((labels == ref_labels).mean()), 6)
                if not name.startswith("B3"):
                    row["max_abs_diff_vs_whole"] = float(np.abs(out[name] - ref).max())
            rows.append(row)
            print(json.dumps(row), flush=True)
        info = {
            "width": width,
            "auto_halo": auto,
            "auto_halo_stored": bool(stored),
            "exact_halo": found.exact,
            "auto_halo_measured_here": found.pixels,
            "auto_halo_measure_s": round(measure_s, 3),
            "profile_at_auto": found.at(auto),
            "exact_tile_shape": exact_plan.tile_shape,
            "exact_tiling_overhead": round(exact_plan.overhead, 3),
            "tile_shape": tile,
            "core": [plan.y.core, plan.x.core],
            "tiles_per_image": plan.n_tiles,
            "tiling_overhead": round(plan.overhead, 3),
        }
        rows.append(info)
        print(json.dumps(info), flush=True)
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": __import__("monai").__version__,
        "numpy": np.__version__,
        "tessera": __version__,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "threads": args.threads,
    }
    report(rows, env, args)


if __name__ == "__main__":
    main()
