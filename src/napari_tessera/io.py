"""Model files: safetensors + JSON, never pickle, written atomically."""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Any

from .config import UNetConfig
from .errors import ConfigError, InputError, ModelFileError
from .images import atomic_path

FORMAT = "napari-tessera"
FORMAT_VERSION = "1"
_MAX_HEADER = 16 * 1024 * 1024  # a safetensors JSON header larger than this is not ours
_PICKLE_HINT = (
    "Tessera never unpickles model files because unpickling can run arbitrary code. "
    "If you trust the file and it holds a U-Net state_dict, convert it once with "
    "`tessera convert-weights FILE.pt -o MODEL.safetensors` (tensors only, weights_only=True)"
)


# -- model files --------------------------------------------------------------------------------
def require_tessera_model(model, path, action: str) -> None:
    """A one-line error when ``model`` (loaded from ``path``) is a bioimage.io model from
    another tool: those segment, but ``action`` (train, export) needs a Tessera U-Net."""
    from .model import UNet

    if not isinstance(model, UNet):
        raise InputError(
            f"{Path(path).name} is a bioimage.io model from another tool: Tessera segments with "
            f"it but cannot {action} it"
        )


def save_model(model, path: str | os.PathLike, *, half: bool = False) -> Path:
    """Write weights and config (architecture, normalisation, class names, provenance).

    The file is a safetensors file whose metadata holds the JSON config; it cannot carry code.
    ``half=True`` stores weights as float16 (half the size; loaded back as float32).
    """
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        if half and v.is_floating_point():
            v = v.half()
        tensors[k] = v.contiguous()
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": json.dumps(model.config.to_dict()),
        "metadata": json.dumps(getattr(model, "metadata", {}) or {}),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def _read_header(path: Path) -> dict[str, Any]:
    """Parse a safetensors header without reading tensors; refuse pickles and garbage."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
            size = path.stat().st_size
            # A safetensors file: 8-byte header length, then a JSON object ("{"). The length
            # bytes may be anything, so a pickle is recognised only when that JSON is absent.
            looks_safetensors = len(head) == 9 and head[8:9] == b"{"
            if not looks_safetensors and (head[:2] == b"PK" or head[:1] == b"\x80"):
                raise ModelFileError(
                    f"refusing {path.name}: it is a pickle-based file. {_PICKLE_HINT}"
                )
            head = head[:8]
            f.seek(8)
            if len(head) < 8:
                raise ModelFileError(f"{path.name} is not a model file (too short)")
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER or n + 8 > size:
                raise ModelFileError(
                    f"{path.name} is not a valid safetensors model file (corrupt or truncated; "
                    "pickle-based .pt/.pth files are never loaded)"
                )
            raw = f.read(n)
    except OSError as err:
        raise ModelFileError(f"cannot read model file {path}: {err.strerror}") from err
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFileError(
            f"{path.name} is not a valid safetensors model file (bad header)"
        ) from err
    bad = not isinstance(header, dict) or not isinstance(header.get("__metadata__", {}), dict)
    if not bad:
        for k, v in header.items():
            if k == "__metadata__":
                continue
            shape = v.get("shape") if isinstance(v, dict) else None
            if not isinstance(shape, list) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
            ):
                bad = True
                break
    if bad:
        raise ModelFileError(f"{path.name} is not a valid safetensors model file (bad header)")
    return header


def read_model_info(path: str | os.PathLike) -> tuple[UNetConfig, dict[str, Any]]:
    """Config and metadata of a model file, validated, without loading weights (of a
    bioimage.io package that Tessera exported: of the model file it carries)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    if path.suffix.lower() == ".zip":
        from ._bioimageio_read import extracted_model_file

        with extracted_model_file(path) as (inner, _):
            return read_model_info(inner)
    header = _read_header(path)
    meta = header.get("__metadata__") or {}
    if meta.get("format") != FORMAT or not isinstance(meta.get("config"), str):
        raise ModelFileError(
            f"{path.name} is a safetensors file but not a Tessera model (no config)"
        )
    try:
        config = UNetConfig.from_dict(json.loads(meta.get("config", "")))
        metadata = json.loads(meta.get("metadata", "{}"))
    except json.JSONDecodeError as err:
        raise ModelFileError(f"{path.name}: model config is not valid JSON") from err
    except (ConfigError, TypeError) as err:
        raise ModelFileError(f"{path.name}: invalid model config: {err}") from err
    if not isinstance(metadata, dict):
        raise ModelFileError(f"{path.name}: model metadata must be a JSON object")
    from .postprocess import check_edge_offset, check_min_size, check_seed_depth

    for key, check, what in (
        ("edge_offset", check_edge_offset, "its edge offset"),
        ("seed_depth", check_seed_depth, "its seed depth"),
        ("min_size", check_min_size, "its smallest object size"),
    ):
        if key in metadata:
            try:
                check(metadata[key], what)
            except InputError as err:
                raise ModelFileError(f"{path.name}: {err}") from err
    if "channels" in metadata:
        ch = metadata["channels"]
        ok = isinstance(ch, list) and all(type(c) is int and 0 <= c < 4096 for c in ch)
        if not ok or len(ch) != config.in_channels:
            raise ModelFileError(
                f"{path.name}: its channels must be {config.in_channels} channel number(s), "
                f"got {ch!r}"
            )
    return config, metadata


def expected_shapes(config: UNetConfig) -> dict[str, tuple[int, ...]]:
    """Name and shape of every tensor of ``UNet(config)``, without allocating its weights.

    The network is built on PyTorch's "meta" device, so a config that is valid but enormous
    (depth 7 with 256 base channels: about 60 GB of weights) costs nothing to inspect.
    """
    import torch

    from .model import UNet

    with torch.device("meta"):
        net = UNet(config)
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def check_weight_shapes(
    name: str, expected: dict[str, tuple[int, ...]], stored: dict[str, tuple[int, ...]]
) -> None:
    """Refuse stored tensors whose names or shapes differ from what the config needs."""
    if stored.keys() != expected.keys():
        missing = sorted(expected.keys() - stored.keys())
        extra = sorted(stored.keys() - expected.keys())
        what = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
        raise ModelFileError(f"{name}: weights do not match the model config ({what})")
    for k, shape in expected.items():
        if stored[k] != shape:
            raise ModelFileError(
                f"{name}: weight {k} has shape {stored[k]}, the config needs {shape}"
            )


def _check_data_fits(path: Path, header: dict[str, Any]) -> None:
    """Every tensor's bytes lie inside the file, at least one byte per element.

    So the network built from a file that passes is never much larger than the file itself,
    whatever its header claims.
    """
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
    body = path.stat().st_size - 8 - n
    for k, v in header.items():
        if k == "__metadata__":
            continue
        offsets = v.get("data_offsets")
        ok = (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        )
        if ok:
            begin, end = offsets
            ok = 0 <= begin <= end <= body and end - begin >= math.prod(v["shape"])
        if not ok:
            raise ModelFileError(
                f"{path.name} is corrupt or truncated: the data of weight {k} is not in the file"
            )


def load_model(path: str | os.PathLike, *, device: str = "cpu", trust_model: bool = False):
    """Load a model written by :func:`save_model`. Never unpickles anything.

    A ``.zip`` is read as a bioimage.io package (needs the ``[bioimageio]`` extra). One that
    Tessera exported loads natively: the Tessera model file it carries is checked and loaded.
    A model from another tool becomes a :class:`~napari_tessera.foreign.ForeignModel` that
    segments (not trains) through the same engine: from its ONNX weights, or from its
    TorchScript weights when ``trust_model`` (TorchScript runs code stored in the package).

    The config is validated (types and sizes) before anything is built; every tensor's name
    and shape is checked against the network's (built on the "meta" device, no memory) and its
    data against the file's size before the network is allocated and weights are read.
    """
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .model import UNet

    path = Path(path)
    if path.suffix.lower() == ".zip":  # a bioimage.io package
        from ._bioimageio_read import extracted_model_file, read_package, tessera_attachment

        descr = read_package(path)
        if tessera_attachment(descr) is None:
            from .foreign import load_foreign

            return load_foreign(path, descr, device=device, trust_model=trust_model)
        with extracted_model_file(path, descr) as (inner, kwargs_config):
            if read_model_info(inner)[0] != kwargs_config:
                raise ModelFileError(f"{path.name}: its weights do not match its architecture")
            return load_model(inner, device=device)
    config, metadata = read_model_info(path)
    header = _read_header(path)
    stored = {k: tuple(v.get("shape", ())) for k, v in header.items() if k != "__metadata__"}
    check_weight_shapes(path.name, expected_shapes(config), stored)
    _check_data_fits(path, header)
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelFileError(f"{path.name} is corrupt: {err}") from err
    model = UNet(config, metadata=metadata)
    if "halo" in metadata:
        from .halo import stored_halo

        try:
            stored_halo(model)
        except ModelFileError as err:
            raise ModelFileError(f"{path.name}: {err}") from err
    sd = model.state_dict()
    tensors = {k: v.to(sd[k].dtype) for k, v in tensors.items()}
    model.load_state_dict(tensors, strict=True)
    return model.to(torch.device(device)).eval()
