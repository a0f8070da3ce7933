"""Training checkpoints for resuming: safetensors tensors plus JSON state, never pickle."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelFileError
from ..images import atomic_path
from ..io import FORMAT, check_weight_shapes, expected_shapes, read_model_info

CHECKPOINT_FORMAT = "napari-tessera-checkpoint"


@dataclass
class CheckpointState:
    model: Any
    optimizer: dict[str, Any]
    step: int
    elapsed: float
    best_state: dict[str, torch.Tensor]
    best_step: int
    best_val_iou: float | None
    best_score: tuple[float, float] | None
    history: list[dict[str, Any]]
    rng_state: dict[str, Any]
    run_config: dict[str, Any]
    average_state: dict[str, torch.Tensor] | None = None  # the run's mean of its late weights
    averaged_steps: list[int] = field(default_factory=list)
    start_score: tuple[float, float] | None = None  # a good fine-tuning start's (loss, IoU)


def save_checkpoint(
    path: str | os.PathLike,
    model,
    optimizer: torch.optim.Optimizer,
    *,
    step: int,
    elapsed: float,
    best_state: dict[str, torch.Tensor],
    best_step: int,
    best_val_iou: float | None,
    best_score,
    history: list[dict[str, Any]],
    rng_state: dict[str, Any],
    run_config: dict[str, Any],
    average_state: dict[str, torch.Tensor] | None = None,
    averaged_steps: list[int] | None = None,
    start_score: tuple[float, float] | None = None,
) -> Path:
    """Write everything needed to resume a run, atomically."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        tensors[f"model.{k}"] = v.detach().cpu().contiguous()
    for k, v in best_state.items():
        tensors[f"best.{k}"] = v.detach().cpu().clone().contiguous()
    for k, v in (average_state or {}).items():
        tensors[f"average.{k}"] = v.detach().cpu().clone().contiguous()
    opt = optimizer.state_dict()
    opt_scalars: dict[str, dict[str, Any]] = {}
    for idx, st in opt["state"].items():
        for name, value in st.items():
            if torch.is_tensor(value):
                tensors[f"opt.{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                opt_scalars.setdefault(str(idx), {})[name] = value
    meta = {
        "format": FORMAT,
        "format_version": "1",
        "kind": CHECKPOINT_FORMAT,
        "config": json.dumps(model.config.to_dict()),
        "metadata": json.dumps(getattr(model, "metadata", {}) or {}),
        "state": json.dumps(
            {
                "step": step,
                "elapsed": elapsed,
                "best_step": best_step,
                "best_val_iou": best_val_iou,
                "best_score": list(best_score) if best_score is not None else None,
                "history": history,
                "rng_state": rng_state,
                "run_config": run_config,
                "averaged_steps": list(averaged_steps or []),
                "start_score": list(start_score) if start_score is not None else None,
                "param_groups": opt["param_groups"],
                "opt_scalars": opt_scalars,
            }
        ),
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def load_checkpoint(path: str | os.PathLike) -> CheckpointState:
    """Read a checkpoint written by :func:`save_checkpoint` (config validated first)."""
    from safetensors import safe_open

    from ..model import UNet

    path = Path(path)
    config, metadata = read_model_info(path)  # validates format and config, refuses pickles
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("kind") != CHECKPOINT_FORMAT:
                raise ModelFileError(f"{path.name} is a model file, not a training checkpoint")
            state = json.loads(meta["state"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except ModelFileError:
        raise
    except Exception as err:  # safetensors raises its own error types
        raise ModelFileError(f"{path.name} is not a readable checkpoint: {err}") from err
    if not isinstance(state, dict):
        raise ModelFileError(f"{path.name} is not a readable checkpoint (bad state)")
    weights = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    # names and shapes first (no memory used): the network is only allocated for a file that
    # really holds its weights
    check_weight_shapes(
        path.name, expected_shapes(config), {k: tuple(v.shape) for k, v in weights.items()}
    )
    model = UNet(config, metadata=metadata)
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise ModelFileError(f"{path.name}: weights do not match the config") from err
    try:
        best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
        average = {k[8:]: v for k, v in tensors.items() if k.startswith("average.")}
        opt_state: dict[int, dict[str, Any]] = {}
        for k, v in tensors.items():
            if k.startswith("opt."):
                _, idx, name = k.split(".", 2)
                opt_state.setdefault(int(idx), {})[name] = v
        for idx, values in state.get("opt_scalars", {}).items():
            opt_state.setdefault(int(idx), {}).update(values)
        score = state.get("best_score")
        return CheckpointState(
            model=model,
            optimizer={"state": opt_state, "param_groups": state["param_groups"]},
            step=int(state["step"]),
            elapsed=float(state["elapsed"]),
            best_state=best,
            best_step=int(state["best_step"]),
            best_val_iou=state.get("best_val_iou"),
            best_score=tuple(score) if score is not None else None,
            history=list(state.get("history", [])),
            rng_state=state["rng_state"],
            run_config=dict(state.get("run_config", {})),
            average_state=average or None,
            averaged_steps=[int(v) for v in state.get("averaged_steps", [])],
            start_score=_pair(state.get("start_score")),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ModelFileError(
            f"{path.name} is not a readable checkpoint (bad state: {err!r})"
        ) from err


def _pair(value) -> tuple[float, float] | None:
    return (float(value[0]), float(value[1])) if value is not None else None
