"""Training on several processes (one per GPU, or CPU processes) with PyTorch
DistributedDataParallel, as launched by ``torchrun``.

How the work is shared, so that a run on N processes does what one process does with the
same global batch:

- every rank builds the same patch sampler from the seed, so the validation regions are the
  same everywhere and every rank draws the same global batch; rank ``r`` trains on its
  ``r``-th share of it (DDP averages the gradients);
- the validation numbers of rank 0 decide for everyone (broadcast), so all ranks keep the
  same best step and stop early together;
- every stop (Ctrl-C or SIGTERM on any rank, time limit, early stop, step count) is agreed on
  before each step with an all-reduce, so no rank waits forever in a collective; the same
  all-reduce gives every rank the same clock, hence the same learning rate under a time limit;
- only rank 0 writes checkpoints and the model file.

On GPUs BatchNorm layers become SyncBatchNorm (statistics over the global batch). On the CPU
(gloo) PyTorch has no SyncBatchNorm, so each rank's BatchNorm statistics come from its share
of the batch and results differ from a single process (about as much as a run with a
different batch would).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ..errors import InputError


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env() -> DistContext | None:
    """The torchrun context of this process, or None when it runs alone."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError as err:
        raise InputError(f"bad torchrun environment: {err}") from err
    if world <= 1:
        return None
    return DistContext(rank=rank, world_size=world, local_rank=local)


def collective_timeout() -> timedelta:
    """How long a rank waits for the others in one collective before it gives up with an
    error (``TESSERA_DIST_TIMEOUT`` seconds; PyTorch's default, 30 minutes, otherwise)."""
    text = os.environ.get("TESSERA_DIST_TIMEOUT", "1800")
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise InputError(f"TESSERA_DIST_TIMEOUT must be a positive number of seconds, got {text!r}")
    return timedelta(seconds=seconds)


def setup(ctx: DistContext, device: torch.device) -> torch.device:
    """Join the process group (NCCL on CUDA, gloo otherwise); returns this rank's device."""
    if device.type == "cuda":
        if ctx.local_rank >= torch.cuda.device_count():
            raise InputError(
                f"process {ctx.rank} wants GPU {ctx.local_rank} but this machine has "
                f"{torch.cuda.device_count()}; start at most that many processes per node"
            )
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo", timeout=collective_timeout()
        )
    return device


def teardown(*, together: bool = False) -> None:
    """Leave the process group; ``together``: first wait until every rank gets here (a
    normal end), so no rank closes its connections while another still uses them."""
    if dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The model wrapped for DistributedDataParallel (SyncBatchNorm on GPUs)."""
    from torch.nn.parallel import DistributedDataParallel

    if device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DistributedDataParallel(model, device_ids=[device.index])
    return DistributedDataParallel(model)


def agree(flag: bool, elapsed: float, device: torch.device) -> tuple[bool, float]:
    """One all-reduce per step: whether any rank wants to stop, and the longest elapsed time
    (the clock every rank then uses for the time limit and the learning-rate schedule)."""
    t = torch.tensor([1.0 if flag else 0.0, float(elapsed)], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t[0].item() > 0), float(t[1].item())


def mean(value: float, device: torch.device) -> float:
    """The average of ``value`` over the ranks."""
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def from_rank0(values: tuple[float, ...], device: torch.device) -> tuple[float, ...]:
    """Rank 0's ``values`` on every rank."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return tuple(float(v) for v in t.tolist())


def share(batch: int, ctx: DistContext) -> slice:
    """The part of a global batch of ``batch`` patches that rank ``ctx.rank`` trains on."""
    if batch % ctx.world_size:
        raise InputError(
            f"the batch size ({batch}) must be a multiple of the number of processes "
            f"({ctx.world_size}); --batch-size is the global batch"
        )
    n = batch // ctx.world_size
    return slice(ctx.rank * n, (ctx.rank + 1) * n)
