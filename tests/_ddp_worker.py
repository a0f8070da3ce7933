"""A training run for tests/test_distributed_training.py, alone or as one torchrun process.

    python tests/_ddp_worker.py OUT_DIR [--duplicate-halves] [--steps N] [--batch N]
    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/_ddp_worker.py ...

Trains a tiny network on a synthetic image with `iter_train` and writes, per rank,
``OUT_DIR/rank{R}.safetensors`` (final parameters), ``OUT_DIR/rank{R}.start.safetensors`` (the
parameters before the first step) and ``OUT_DIR/rank{R}.json`` (losses and a fingerprint of
every batch share this rank trained on). With ``--duplicate-halves`` every
global batch is made of two equal halves, so each process of a 2-process run sees exactly the
statistics a single process sees: the runs must then agree to float precision. With
``--per-sample-norm`` BatchNorm becomes a per-sample, per-channel normalisation and the Dice
term and the class balance are off, so no patch's gradient depends on the other patches of
its batch: a 2-process run
must then equal a 1-process run with the same global batch although the processes train on
different patches. With ``--late-stop R:S`` rank R's stop request is set at step S just after
the ranks have agreed to go on (a Ctrl-C landing at the worst moment): every rank must still
stop after the same step.
"""

from __future__ import annotations

import argparse
import json
import threading
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from napari_tessera.synthetic import nuclei_2d
from napari_tessera.training import TrainConfig, iter_train, loop
from napari_tessera.training import distributed as ddp
from napari_tessera.training.sampling import PatchSampler


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--duplicate-halves", action="store_true")
    ap.add_argument("--per-sample-norm", action="store_true")
    ap.add_argument("--late-stop", metavar="R:S")
    args = ap.parse_args()
    torch.set_num_threads(1)
    ctx = ddp.from_env()
    rank = ctx.rank if ctx else 0
    seen: list[float] = []

    if args.duplicate_halves:
        plain_sample = PatchSampler.sample

        def sample(self, n):
            batch = plain_sample(self, n)
            h = n // 2
            for part in batch:
                if part is not None:
                    part[h:] = part[:h]
            return batch

        PatchSampler.sample = sample

    if args.per_sample_norm:
        plain_unet = loop.UNet

        def per_sample_unet(*a, **kw):
            net = plain_unet(*a, **kw)
            for mod in list(net.modules()):
                for name, child in mod.named_children():
                    if isinstance(child, torch.nn.BatchNorm2d):
                        c = child.num_features
                        setattr(mod, name, torch.nn.GroupNorm(c, c))
            return net

        loop.UNet = per_sample_unet

    stop = threading.Event()
    if args.late_stop:
        stop_rank, stop_step = (int(v) for v in args.late_stop.split(":"))
        plain_agree = ddp.agree
        agreed = [0]

        def agree(*a, **kw):
            result = plain_agree(*a, **kw)
            if rank == stop_rank and agreed[0] == stop_step:
                stop.set()  # after the all-reduce: this step goes on everywhere
            agreed[0] += 1
            return result

        ddp.agree = agree

    plain_step = loop.train_step

    start: dict[str, torch.Tensor] = {}

    def step(net, opt, scaler, x, y, w, *rest, **kw):
        if not start:  # the weights before the first update
            plain = getattr(net, "module", net)
            start.update({k: v.detach().clone() for k, v in plain.named_parameters()})
        seen.append(float(np.asarray(x, dtype=np.float64).sum()))
        return plain_step(net, opt, scaler, x, y, w, *rest, **kw)

    loop.train_step = step
    s = nuclei_2d((128, 128), seed=5)
    labels = np.where(s.labels > 0, 2, 1).astype(np.uint8)
    cfg = TrainConfig(
        steps=args.steps,
        batch_size=args.batch,
        patch_size=32,
        base_channels=4,
        depth=2,
        val_fraction=0.0,
        seed=0,
        device="cpu",
        preview_every=0.0,
        dice=0.0 if args.per_sample_norm else 1.0,
        balance=not args.per_sample_norm,
    )
    losses = []
    gen = iter_train(s.image, labels, config=cfg, stop=stop, dist_ctx=ctx)
    while True:
        try:
            losses.append(next(gen).loss)
        except StopIteration as done:
            result = done.value
            break
    out = Path(args.out)
    params = {k: v.detach().contiguous() for k, v in result.model.named_parameters()}
    save_file(params, str(out / f"rank{rank}.safetensors"))
    save_file(start, str(out / f"rank{rank}.start.safetensors"))
    info = {"losses": losses, "seen": seen, "steps": result.steps, "stopped": result.stopped}
    (out / f"rank{rank}.json").write_text(json.dumps(info))
    if ctx is not None:
        ddp.teardown(together=True)


if __name__ == "__main__":
    main()
