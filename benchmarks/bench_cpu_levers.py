#!/usr/bin/env python
"""CPU levers beyond the fast path, on one tile: what each buys, side by side in one process.

The network's forward pass on one tile (the exact default: 1248 x 1248, batch 1, fp32),
random weights with trained-like BatchNorm statistics, depth 4:

* ``fast``: Tessera's inference copy (BatchNorm folded, channels-last), what predict_tiled runs;
* ``fused_relu``: ``fast`` with each convolution + ReLU as one oneDNN call
  (``torch.ops.mkldnn._convolution_pointwise``, a private PyTorch op);
* ``torchscript``: ``torch.jit.optimize_for_inference(torch.jit.freeze(trace(fast)))``;
* ``inductor``: ``torch.compile`` with ``torch._inductor.config.freezing = True`` (needs a C++
  compiler; the compile time is reported separately).

Also prints where the time of ``fast`` goes (torch.profiler, by operator).

    python benchmarks/bench_cpu_levers.py --widths 16 64 --tile 1248 --repeats 3
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
import warnings

import torch
from _results import report  # noqa: E402  (benchmarks/, on sys.path when run)
from torch import nn

from napari_tessera import UNet, UNetConfig
from napari_tessera.model.blocks import DoubleConv
from napari_tessera.model.fast import inference_copy


class _ConvReLU(nn.Module):
    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.args = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
        self.register_buffer("weight", conv.weight.detach())
        self.register_buffer("bias", conv.bias.detach())

    def forward(self, x):
        return torch.ops.mkldnn._convolution_pointwise(
            x, self.weight, self.bias, *self.args, "relu", [], ""
        )


def fused_relu(fast: nn.Module) -> nn.Module:
    net = copy.deepcopy(fast)
    for blk in net.modules():
        if isinstance(blk, DoubleConv):
            for i in range(len(blk) - 2):
                conv, bn, relu = blk[i], blk[i + 1], blk[i + 2]
                if (
                    isinstance(conv, nn.Conv2d)
                    and isinstance(bn, nn.Identity)
                    and isinstance(relu, nn.ReLU)
                ):
                    blk[i], blk[i + 2] = _ConvReLU(conv), nn.Identity()
    return net


def network(width: int) -> UNet:
    torch.manual_seed(0)
    m = UNet(UNetConfig(base_channels=width, depth=4)).eval()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--widths", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--tile", type=int, default=1248)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    ap.add_argument("--json")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(2)
    rows = []
    for width in args.widths:
        fast = inference_copy(network(width), torch.device("cpu"))
        x = torch.randn(1, 1, args.tile, args.tile).contiguous(memory_format=torch.channels_last)
        variants: dict[str, nn.Module] = {"fast": fast, "fused_relu": fused_relu(fast)}
        prep: dict[str, float] = {}
        with torch.no_grad():
            t0 = time.perf_counter()
            ts = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(fast, x)))
            ts(x)
            prep["torchscript"] = time.perf_counter() - t0
            variants["torchscript"] = ts
            if not args.no_compile:
                import torch._inductor.config as inductor_config

                inductor_config.freezing = True
                t0 = time.perf_counter()
                compiled = torch.compile(copy.deepcopy(fast))
                compiled(x)
                prep["inductor"] = time.perf_counter() - t0
                variants["inductor"] = compiled
            ref = fast(x)
            diff = {k: float((f(x) - ref).abs().max()) for k, f in variants.items()}
            best = dict.fromkeys(variants, float("inf"))
            for _ in range(args.repeats):  # alternating, best of the repeats
                for k, f in variants.items():
                    t0 = time.perf_counter()
                    f(x)
                    best[k] = min(best[k], time.perf_counter() - t0)
            with torch.profiler.profile() as prof:
                fast(x)
        total = sum(e.self_cpu_time_total for e in prof.key_averages())
        share = {
            e.key: round(e.self_cpu_time_total / total, 3)
            for e in prof.key_averages()
            if e.self_cpu_time_total / total >= 0.01
        }
        for k in variants:
            row = {
                "width": width,
                "tile": args.tile,
                "variant": k,
                "seconds": round(best[k], 3),
                "speed_vs_fast": round(best["fast"] / best[k], 2),
                "max_abs_diff": diff[k],
                "prepare_s": round(prep.get(k, 0.0), 1),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
        print(json.dumps({"width": width, "fast_time_by_operator": share}), flush=True)
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
    }
    report(rows, env, args)


if __name__ == "__main__":
    main()
