"""Convert a trusted PyTorch ``.pt``/``.pth`` state_dict into a Tessera model file.

Tessera itself never unpickles a model file. This explicit, separate step is for weights the
user trusts (their own training runs, a colleague's lab): it reads the file with
``torch.load(weights_only=True)``, which rebuilds only tensors and plain containers (dict,
list, numbers, strings) and refuses any other Python object, so a whole pickled model or a
file that tries to run code is rejected rather than executed. What it still trusts is
PyTorch's restricted unpickler itself (hence torch >= 2.6, which fixed a known escape from
it). The result is a safetensors file that can never carry code.

Two key layouts are understood: Tessera's own (``inc.0.weight``, ``downs.0.1.0.weight``, ...)
and the widely used PyTorch-UNet layout (``inc.double_conv.0.weight``,
``down1.maxpool_conv.1.double_conv.0.weight``, ``up1.up.weight``, ``outc.conv.weight``) with
transposed-convolution upsampling. The architecture is read from the tensor shapes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .config import Normalization, UNetConfig
from .errors import ConfigError, ModelFileError
from .images import file_sha256

MIN_TORCH = (2, 6)
_WRAPPERS = ("state_dict", "model_state_dict", "model", "net", "network", "weights")
_PREFIXES = ("module.", "_orig_mod.", "model.")
_PYTORCH_UNET = [  # (pattern, replacement) from the PyTorch-UNet layout to Tessera's
    (re.compile(r"^inc\.double_conv\.(\d+)\.(.+)$"), lambda m: f"inc.{m[1]}.{m[2]}"),
    (
        re.compile(r"^down(\d+)\.maxpool_conv\.1\.double_conv\.(\d+)\.(.+)$"),
        lambda m: f"downs.{int(m[1]) - 1}.1.{m[2]}.{m[3]}",
    ),
    (re.compile(r"^up(\d+)\.up\.(weight|bias)$"), lambda m: f"ups.{int(m[1]) - 1}.up.{m[2]}"),
    (
        re.compile(r"^up(\d+)\.conv\.double_conv\.(\d+)\.(.+)$"),
        lambda m: f"ups.{int(m[1]) - 1}.conv.{m[2]}.{m[3]}",
    ),
    (re.compile(r"^outc\.conv\.(weight|bias)$"), lambda m: f"outc.{m[1]}"),
]


def _torch_version() -> tuple[int, int]:
    import torch

    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int(re.match(r"\d+", minor)[0])


def load_trusted_state_dict(path: str | os.PathLike) -> dict[str, Any]:
    """Tensors of a trusted ``.pt``/``.pth`` file via ``torch.load(weights_only=True)``."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"file not found: {path}")
    if _torch_version() < MIN_TORCH:
        raise ModelFileError(
            f"converting needs torch >= {MIN_TORCH[0]}.{MIN_TORCH[1]} (older versions of "
            f"torch.load(weights_only=True) can be escaped); this is torch {torch.__version__}"
        )
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{":
        raise ModelFileError(f"{path.name} is already a safetensors file; nothing to convert")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ModelFileError(
            f"{path.name} holds Python objects other than tensors, so it was not loaded "
            f"({first[:160]}). Only a state_dict can be converted: where the file was made, "
            "save model.state_dict() instead of the whole model"
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as err:
        raise ModelFileError(f"{path.name} is not a readable PyTorch file ({err})") from err
    return _find_state_dict(obj, path.name)


def _find_state_dict(obj: Any, name: str) -> dict[str, Any]:
    import torch

    if isinstance(obj, Mapping):
        for key in _WRAPPERS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and any(
                isinstance(v, torch.Tensor) for v in inner.values()
            ):
                obj = inner
                break
    if not isinstance(obj, Mapping):
        raise ModelFileError(f"{name} does not hold a state_dict (found {type(obj).__name__})")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelFileError(f"{name} holds no tensors")
    return tensors


def to_tessera_keys(state: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Rename keys to Tessera's layout; returns the renamed dict and the layout found."""
    out = {}
    for k, v in state.items():
        for p in _PREFIXES:
            while k.startswith(p):
                k = k[len(p) :]
        out[k] = v
    if any(k.startswith("inc.double_conv.") for k in out):
        renamed = {}
        for k, v in out.items():
            for pattern, repl in _PYTORCH_UNET:
                m = pattern.match(k)
                if m:
                    renamed[repl(m)] = v
                    break
            else:
                raise ModelFileError(f"unexpected weight {k!r} for a PyTorch-UNet state_dict")
        return renamed, "PyTorch-UNet"
    return out, "Tessera"


def infer_config(state: dict[str, Any], **overrides) -> UNetConfig:
    """The U-Net architecture that matches the tensor shapes (padding etc. from overrides)."""
    try:
        first = state["inc.0.weight"]
        out = state["outc.weight"]
    except KeyError as err:
        raise ModelFileError(
            f"not a U-Net state_dict of a known layout (no {err.args[0]!r})"
        ) from None
    if first.ndim != 4 or out.ndim != 4:
        raise ModelFileError("not a 2D U-Net state_dict (convolution weights must be 4D)")
    depth = len({k.split(".")[1] for k in state if k.startswith("downs.")})
    bilinear = any(k.startswith("ups.") and ".up.1." in k for k in state)
    try:
        return UNetConfig(
            in_channels=int(first.shape[1]),
            n_classes=int(out.shape[0]),
            base_channels=int(first.shape[0]),
            depth=depth,
            upsampling="bilinear" if bilinear else "transpose",
            **overrides,
        )
    except (ConfigError, TypeError) as err:
        raise ModelFileError(f"the weights describe an unsupported network: {err}") from err


def convert_weights(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    padding: str = "same",
    normalization: tuple[float, float] | None = None,
    class_names: list[str] | None = None,
) -> Path:
    """Convert a trusted PyTorch state_dict file into a Tessera ``.safetensors`` model."""
    from .io import save_model
    from .model import UNet

    src, dst = Path(src), Path(dst)
    state, layout_name = to_tessera_keys(load_trusted_state_dict(src))
    extra: dict[str, Any] = {"padding": padding}
    try:
        if normalization is not None:
            extra["normalization"] = Normalization(*normalization)
    except ConfigError as err:
        raise ModelFileError(str(err)) from err
    config = infer_config(state, **extra)
    model = UNet(config)
    expected = model.state_dict()
    for k in sorted(state.keys() - expected.keys()):
        raise ModelFileError(f"{src.name}: unexpected weight {k!r} for {_describe(config)}")
    for k in sorted(expected.keys() - state.keys()):
        if k.endswith("num_batches_tracked"):
            continue  # a counter, not a weight; some exports drop it
        raise ModelFileError(f"{src.name}: missing weight {k!r} for {_describe(config)}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise ModelFileError(
                f"{src.name}: weight {k!r} has shape {tuple(v.shape)}, "
                f"{_describe(config)} needs {tuple(expected[k].shape)}"
            )
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=False)
    n = config.n_classes
    names = class_names or (
        ["background", "object"] if n == 2 else [f"class {i}" for i in range(n)]
    )
    if len(names) != n:
        raise ModelFileError(f"{len(names)} class names given for {n} classes")
    model.metadata = {
        "class_names": names,
        "provenance": {
            "name": src.stem,
            "converted_from": src.name,
            "sha256": file_sha256(src),
            "layout": layout_name,
            "how": "tessera convert-weights: torch.load(weights_only=True), tensors only",
        },
    }
    return save_model(model.eval(), dst)


def _describe(config: UNetConfig) -> str:
    return (
        f"a U-Net of depth {config.depth}, width {config.base_channels}, "
        f"{config.in_channels} channel(s) in, {config.n_classes} out"
    )
