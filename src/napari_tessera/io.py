"""Model files (safetensors + JSON, never pickle) and image files, written atomically."""

from __future__ import annotations

import contextlib
import json
import math
import os
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .axes import normalize_axes
from .config import UNetConfig
from .errors import ConfigError, InputError, ModelFileError

FORMAT = "napari-tessera"
FORMAT_VERSION = "1"
_MAX_HEADER = 16 * 1024 * 1024  # a safetensors JSON header larger than this is not ours
_PICKLE_HINT = (
    "Tessera never unpickles model files because unpickling can run arbitrary code. "
    "If you trust the file and it holds a U-Net state_dict, convert it once with "
    "`tessera convert-weights FILE.pt -o MODEL.safetensors` (tensors only, weights_only=True)"
)


# -- atomic writes ------------------------------------------------------------------------------
def check_output_folder(path: str | os.PathLike) -> None:
    """The one check that the folder an output goes into exists."""
    parent = Path(path).parent
    if not parent.is_dir():
        raise InputError(f"output folder does not exist: {parent}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    On any error or interruption (Ctrl-C included) the temporary file is removed and ``path``
    is left as it was: never a half-written file under the final name.
    """
    path = Path(path)
    check_output_folder(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# -- model files --------------------------------------------------------------------------------
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
    """Config and metadata of a model file, validated, without loading weights."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
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
    from .postprocess import check_edge_offset, check_seed_depth

    for key, check, what in (
        ("edge_offset", check_edge_offset, "its edge offset"),
        ("seed_depth", check_seed_depth, "its seed depth"),
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


def load_model(path: str | os.PathLike, *, device: str = "cpu"):
    """Load a model written by :func:`save_model`. Never unpickles anything.

    The config is validated (types and sizes) before anything is built; every tensor's name
    and shape is checked against the network's (built on the "meta" device, no memory) and its
    data against the file's size before the network is allocated and weights are read.
    """
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .model import UNet

    path = Path(path)
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


# -- images -------------------------------------------------------------------------------------
def physical_memory() -> int | None:
    """This machine's memory in bytes (None where it cannot be told)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows) or no such name
        pass
    with contextlib.suppress(Exception):  # Windows: GlobalMemoryStatusEx
        import ctypes

        names = ("total", "avail", "page", "apage", "virt", "avirt", "ext")

        class _Status(ctypes.Structure):
            _fields_ = [("length", ctypes.c_ulong), ("load", ctypes.c_ulong)]
            _fields_ += [(n, ctypes.c_ulonglong) for n in names]

        status = _Status()
        status.length = ctypes.sizeof(_Status)
        kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
        if kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):
            return int(status.total)
    return None


def _nbytes_text(n: int) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def _array_text(shape, dtype) -> str:
    """``200000x200000 float32 (149.0 GiB)``"""
    n = math.prod(int(d) for d in shape) * np.dtype(dtype).itemsize
    return f"{'x'.join(str(int(d)) for d in shape)} {np.dtype(dtype)} ({_nbytes_text(n)})"


def check_fits_in_memory(path: str | os.PathLike, shape, dtype) -> None:
    """Refuse to read a whole image that is larger than this machine's memory."""
    memory = physical_memory()
    nbytes = math.prod(int(d) for d in shape) * np.dtype(dtype).itemsize
    if memory is not None and nbytes > memory:
        raise InputError(
            f"{Path(path).name} is a {_array_text(shape, dtype)} image, more than this "
            f"machine's memory ({_nbytes_text(memory)}); segment it into a .zarr output "
            "(-o labels.zarr), which reads it slice by slice"
        )


def check_npy(path: Path) -> tuple[tuple[int, ...], np.dtype] | None:
    """Refuse a .npy file whose header declares more data than the file holds; returns its
    shape and dtype (None for a header that np.load alone can judge)."""
    from numpy.lib import format as npy

    try:
        with open(path, "rb") as f:
            version = npy.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = npy.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = npy.read_array_header_2_0(f)
            else:
                return None  # a newer header: np.load decides
            offset = f.tell()
    except (ValueError, OSError, SyntaxError, TypeError) as err:
        raise InputError(f"{path.name} is not a readable .npy image: {err}") from err
    if dtype.hasobject:
        return None  # np.load refuses it (no pickles)
    need = offset + math.prod(shape) * dtype.itemsize
    size = path.stat().st_size
    if size < need:
        raise InputError(
            f"{path.name} is truncated or corrupt: its header declares a "
            f"{_array_text(shape, dtype)} array but the file holds {size - offset} bytes of data"
        )
    return shape, dtype


def check_tiff_data(path: Path, series) -> None:
    """Refuse a TIFF whose strips or tiles lie beyond the end of the file, or whose
    uncompressed image is larger than the file: it is truncated or its header lies."""
    size = path.stat().st_size

    def refuse():
        raise InputError(
            f"{path.name} is truncated or corrupt: it declares a "
            f"{_array_text(series.shape, series.dtype)} image whose data is not in the file "
            f"({_nbytes_text(size)})"
        )

    def stored(page, nbytes: int) -> int:  # least bytes the uncompressed data takes
        key = getattr(page, "keyframe", None) or page
        if key.compression != 1 or key.dtype is None or getattr(key, "is_subsampled", False):
            return 0
        return nbytes * key.bitspersample // (8 * np.dtype(key.dtype).itemsize)

    if series.dataoffset is not None:  # contiguous uncompressed data
        if series.dataoffset + stored(series.keyframe, series.nbytes) > size:
            refuse()
        return
    total = 0
    for page in series:
        if page is None:
            continue
        offsets = np.asarray(page.dataoffsets, dtype=np.uint64)
        counts = np.asarray(page.databytecounts, dtype=np.uint64)
        if len(offsets) != len(counts) or np.any((counts > 0) & (offsets + counts > size)):
            refuse()
        total += stored(page, page.nbytes)
        if total > size:
            refuse()


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, str | None]:
    """Read a TIFF, .npy or zarr image into memory; returns ``(array, axes or None)``.

    Axes come from the TIFF's ImageJ/OME/shaped metadata when it names only axes Tessera knows
    (T, Z, C, Y, X; S = samples is read as C); otherwise None and the caller guesses.

    Nothing is allocated for a file whose header declares more data than it holds (a truncated
    or hostile .npy or TIFF) or an image larger than this machine's memory: both are an
    :class:`InputError` before any pixel is read.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"input file not found: {path}")
    if path.suffix.lower() == ".zarr":
        from .chunked import open_image

        lazy, axes = open_image(path)
        check_fits_in_memory(path, lazy.shape, lazy.dtype)
        return np.asarray(lazy[...]), axes
    if path.is_dir():
        raise InputError(f"input is a folder, not an image file: {path}")
    if path.suffix.lower() == ".npy":
        declared = check_npy(path)
        if declared is not None:
            check_fits_in_memory(path, *declared)
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as err:
            raise InputError(f"{path.name} is not a readable .npy image: {err}") from err
        return arr, None
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            check_tiff_data(path, series)
            check_fits_in_memory(path, series.shape, series.dtype)
            arr = series.asarray()
            axes = series.axes.upper()
    except InputError:
        raise
    except (tifffile.TiffFileError, ValueError, IndexError, OSError, struct.error) as err:
        raise InputError(f"{path.name} is not a readable TIFF image ({err})") from err
    axes = normalize_axes(axes)
    if len(axes) != arr.ndim or set(axes) - set("TZCYX"):
        # drop length-1 axes tifffile adds, then give up on unknown letters
        axes = None
    return arr, axes


def write_tiff(path: str | os.PathLike, data: np.ndarray, *, axes: str | None = None) -> Path:
    """Write a (zlib-compressed) TIFF atomically: temp file, then rename."""
    import tifffile

    path = Path(path)
    meta = {"axes": axes} if axes else {}
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, data, metadata=meta, compression="zlib", photometric="minisblack")
    return path
