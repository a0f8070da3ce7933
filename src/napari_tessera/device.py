"""Devices, precision and the network's output: what inference, halo measurement and
training share about running a network."""

from __future__ import annotations

import contextlib

import torch

from .errors import InputError

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """ "auto" picks CUDA, then Apple MPS, then the CPU; an unavailable device is an error."""
    if isinstance(device, torch.device):
        return device
    name = str(device).lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as err:
        raise InputError(f"unknown device {device!r}; use auto, cpu, cuda or mps") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' asked for, but no CUDA GPU is available")
    if dev.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise InputError("device 'mps' asked for, but Apple MPS is not available")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"unsupported device {device!r}; use auto, cpu, cuda or mps")
    return dev


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed precision for ``dtype`` on ``device`` (nothing for float32)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities of a network's output: sigmoid for one class, else softmax."""
    logits = logits.float()
    if logits.shape[1] == 1:
        return torch.sigmoid(logits)
    return torch.softmax(logits, dim=1)


def is_out_of_memory(err: BaseException) -> bool:
    """True for a device (or host) allocation failure that a smaller job may avoid."""
    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    if isinstance(err, oom):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and (
        "out of memory" in text.lower() or "can't allocate memory" in text
    )


def release_device_memory(device: torch.device) -> None:
    """Give cached device memory back after an out-of-memory error."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()
