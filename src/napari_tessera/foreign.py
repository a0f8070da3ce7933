"""bioimage.io models from other tools, run through Tessera's own overlap-tile engine.

A package's declared input and output axes, size constraints, halo, preprocessing and
postprocessing are read with ``bioimageio.spec`` (:func:`read_spec`) and honoured:

* preprocessing with per-image statistics (percentile scaling, zero mean and unit variance,
  percentile clipping) is computed on each whole 2D slice, never on a tile, as the package's
  own pipeline computes it on the whole image; the other steps act pixel by pixel;
* tiles are planned on the package's size step, with its output halo as the halo; a tile
  below the minimum size (a small image) is mirrored up to the next valid size;
* its postprocessing runs on each tile's output (only pixel-wise steps can);
* the output's channels are read as classes (one channel: foreground probability), so the
  same instance split makes objects.

ONNX weights run with onnxruntime. TorchScript weights run only when the user trusts the
package (``trust_model``): loading TorchScript runs code stored in it. Pickle-based weights
are never loaded. No code shipped in a package runs otherwise.
"""

from __future__ import annotations

import math
import os
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ._bioimageio_read import file_name, one_line
from .errors import InputError, ModelFileError
from .images import file_sha256
from .normalize import MAX_SAMPLES, percentiles_of

#: the postprocessing of a tile's output must be pixel-wise: tiles cannot give whole-image
#: statistics
PIXELWISE_POST = {
    "binarize",
    "clip",
    "ensure_dtype",
    "fixed_zero_mean_unit_variance",
    "scale_linear",
    "sigmoid",
    "softmax",
}
_PROBABILITY_OPS = {"sigmoid", "softmax", "binarize"}
_EPS_P = 1e-7  # probabilities are kept this far from 0 and 1 when turned into logits


# -- processing steps --------------------------------------------------------------------------
# Each step maps an array with channels on axis -3 ((C, Y, X) or (N, C, Y, X)). A step with
# per-image statistics measures them on a whole (C, Y, X) slice (``stats``) and applies them
# (``__call__``); pixel-wise steps have no statistics.


def _reduce_axes(x: np.ndarray, joint: bool) -> tuple[int, ...]:
    return tuple(range(x.ndim - 3, x.ndim)) if joint else (x.ndim - 2, x.ndim - 1)


def _per_channel(values, n: int, what: str) -> np.ndarray:
    arr = np.asarray(values, np.float32).reshape(-1)
    if arr.size not in (1, n):
        raise ModelFileError(f"{what} has {arr.size} values for {n} channels")
    return arr.reshape(-1, 1, 1)


@dataclass(frozen=True)
class ScaleRange:
    low: float  # percentiles, 0-100
    high: float
    eps: float
    joint: bool  # statistics over all channels together, else per channel

    def stats(self, x: np.ndarray) -> np.ndarray:
        return percentiles_of(x, (self.low, self.high), _reduce_axes(x, self.joint))

    def __call__(self, x: np.ndarray, st: np.ndarray) -> np.ndarray:
        return (x - st[0]) / (st[1] - st[0] + self.eps)


@dataclass(frozen=True)
class ZeroMeanUnitVariance:
    eps: float
    joint: bool

    def stats(self, x: np.ndarray) -> np.ndarray:
        ax = _reduce_axes(x, self.joint)
        x64 = x.astype(np.float64)
        return np.stack([x64.mean(axis=ax, keepdims=True), x64.std(axis=ax, keepdims=True)])

    def __call__(self, x: np.ndarray, st: np.ndarray) -> np.ndarray:
        return (x - st[0]) / (st[1] + self.eps)


@dataclass(frozen=True)
class PercentileClip:
    low: float | None  # percentile, or None for a fixed bound / no bound
    high: float | None
    fixed: tuple[float | None, float | None]
    joint: bool

    def stats(self, x: np.ndarray) -> np.ndarray:
        qs = [self.low if self.low is not None else 0.0, self.high or 100.0]
        return percentiles_of(x, qs, _reduce_axes(x, self.joint))

    def __call__(self, x: np.ndarray, st: np.ndarray) -> np.ndarray:
        lo = st[0] if self.low is not None else self.fixed[0]
        hi = st[1] if self.high is not None else self.fixed[1]
        return np.clip(x, lo, hi)


@dataclass(frozen=True)
class Pixelwise:
    """A step without statistics: ``fn(x)``."""

    name: str
    fn: Callable[[np.ndarray], np.ndarray] = field(compare=False)

    stats = None

    def __call__(self, x: np.ndarray, st=None) -> np.ndarray:
        return self.fn(x)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-3, keepdims=True))
    return e / e.sum(axis=-3, keepdims=True)


@dataclass(frozen=True)
class Processing:
    """A package's chain of processing steps, applied to 2D slices or tiles."""

    steps: tuple[Any, ...]

    def run(self, x: np.ndarray, levels: Sequence[np.ndarray] | None = None):
        """``(result, the statistics used)``; ``levels`` gives statistics measured before."""
        given = iter(levels) if levels is not None else None
        used = []
        for step in self.steps:
            st = None
            if step.stats is not None:
                st = next(given) if given is not None else step.stats(x)
                used.append(st)
            x = step(x, st)
        return x, tuple(used)

    # the normalize.SliceTransform interface: statistics of a whole slice, then any block
    def levels(self, slice_cyx) -> tuple[np.ndarray, ...]:
        h, w = np.shape(slice_cyx)[-2:]
        step = max(1, math.ceil(math.sqrt(h * w / MAX_SAMPLES)))  # as normalize.percentiles
        sample = np.asarray(slice_cyx[:, ::step, ::step], dtype=np.float32)
        return self.run(sample)[1]

    def apply(self, slice_cyx: np.ndarray, levels=None) -> np.ndarray:
        if levels is None:
            levels = self.levels(slice_cyx)
        return np.asarray(self.run(slice_cyx, levels)[0], dtype=np.float32)


# -- reading the package's description ---------------------------------------------------------
@dataclass(frozen=True)
class ForeignSpec:
    """What Tessera needs from a package's description."""

    name: str
    in_order: tuple[str, ...]  # the input's axes: "batch", "channel", "y", "x"
    out_order: tuple[str, ...]
    in_channels: int
    class_names: tuple[str, ...]
    min_size: tuple[int, int]  # y, x
    step: tuple[int, int]  # 0: a fixed size
    halo: int
    pre: Processing
    post: Processing
    probabilities: bool  # the output (after postprocessing) is already probabilities
    input_dtype: str
    batch: bool  # takes several tiles at once (a batch axis of free size)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)


def _axis_kind(axis) -> str:
    t = getattr(axis, "type", "")
    if t == "space":
        return str(axis.id)
    return t


def _joint(kwargs) -> bool:
    axes = getattr(kwargs, "axes", None)
    return axes is None or any(str(a) in ("channel", "c") for a in axes)


def _along_channel(kwargs, names: Sequence[str], n: int, what: str) -> list[np.ndarray]:
    axis = getattr(kwargs, "axis", None)
    if axis is not None and str(axis) != "channel":
        raise ModelFileError(f"{what} along axis {axis} is not supported (only 'channel')")
    return [_per_channel(getattr(kwargs, k), n, what) for k in names]


def _step(proc, n_channels: int, *, output: bool):
    """One processing step from its description."""
    pid, kw = str(proc.id), getattr(proc, "kwargs", None)
    if output and pid not in PIXELWISE_POST:
        raise ModelFileError(
            f"its postprocessing {pid!r} needs the whole output, which tiles cannot give"
        )
    if pid == "scale_range":
        if kw.reference_tensor is not None:
            raise ModelFileError("scale_range with a reference tensor is not supported")
        return ScaleRange(kw.min_percentile, kw.max_percentile, kw.eps, _joint(kw))
    if pid == "zero_mean_unit_variance":
        return ZeroMeanUnitVariance(kw.eps, _joint(kw))
    if pid == "fixed_zero_mean_unit_variance":
        mean, std = _along_channel(kw, ("mean", "std"), n_channels, pid)
        return Pixelwise(pid, lambda x: (x - mean) / (std + 1e-6))
    if pid == "scale_linear":
        gain, offset = _along_channel(kw, ("gain", "offset"), n_channels, pid)
        return Pixelwise(pid, lambda x: x * gain + offset)
    if pid == "binarize":
        (t,) = _along_channel(kw, ("threshold",), n_channels, pid)
        return Pixelwise(pid, lambda x: (x > t).astype(np.float32))
    if pid == "clip":
        if kw.min_percentile is not None or kw.max_percentile is not None:
            return PercentileClip(
                kw.min_percentile, kw.max_percentile, (kw.min, kw.max), _joint(kw)
            )
        return Pixelwise(pid, lambda x: np.clip(x, kw.min, kw.max))
    if pid == "sigmoid":
        return Pixelwise(pid, lambda x: 1.0 / (1.0 + np.exp(-x)))
    if pid == "softmax":
        if str(kw.axis) != "channel":
            raise ModelFileError(f"softmax over axis {kw.axis} is not supported (only 'channel')")
        return Pixelwise(pid, _softmax)
    if pid == "ensure_dtype":
        dtype = np.dtype(str(kw.dtype))
        return Pixelwise(pid, lambda x: x.astype(dtype))
    raise ModelFileError(f"its {'post' if output else 'pre'}processing {pid!r} is not supported")


def _channels(axes, what: str) -> list[str]:
    for a in axes:
        if getattr(a, "type", "") == "channel":
            return [str(n) for n in a.channel_names]
    return [what]


def _check_axes(order: tuple[str, ...], where: str) -> None:
    other = [a for a in order if a not in ("batch", "channel", "y", "x")]
    if other or "y" not in order or "x" not in order:
        seen = ", ".join(order)
        kind = "3D" if "z" in order else "not 2D"
        raise ModelFileError(
            f"its {where} axes ({seen}) are {kind}: Tessera runs 2D (or 2D-per-slice) models"
        )


def _sizes(axes) -> tuple[tuple[int, int], tuple[int, int]]:
    mins, steps = [], []
    for a in [a for a in axes if _axis_kind(a) in ("y", "x")]:
        size = a.size
        if isinstance(size, int):
            mins.append(size)
            steps.append(0)
        elif hasattr(size, "step"):
            mins.append(int(size.min))
            steps.append(int(size.step))
        else:
            raise ModelFileError(f"input axis {a.id} has a size Tessera cannot meet: {size}")
    return tuple(mins), tuple(steps)  # type: ignore[return-value]


def _output_halo(out_axes, in_id) -> int:
    halo = 0
    for a in [a for a in out_axes if _axis_kind(a) in ("y", "x")]:
        size = a.size
        same = (
            getattr(size, "tensor_id", None) == in_id
            and str(getattr(size, "axis_id", "")) == str(a.id)
            and getattr(size, "offset", 0) == 0
            and float(getattr(a, "scale", 1.0)) == 1.0
        )
        if not same:
            raise ModelFileError(
                f"its output axis {a.id} is not the input's size: Tessera needs an output the "
                "size of its input"
            )
        halo = max(halo, int(getattr(a, "halo", 0) or 0))
    return halo


def _is_probability(out, post_ids: list[str]) -> bool:
    """Whether the package's output, after its postprocessing, is probabilities: it ends in
    a sigmoid, softmax or binarize (then perhaps a clip or a cast), or declares a range
    within [0, 1]. Anything else is read as logits."""
    if post_ids and post_ids[-1] in _PROBABILITY_OPS | {"clip", "ensure_dtype"}:
        if any(p in _PROBABILITY_OPS for p in post_ids):
            return True
    rng = getattr(getattr(out, "data", None), "range", None) or (None, None)
    return rng[0] is not None and rng[1] is not None and 0 <= rng[0] and rng[1] <= 1


def read_spec(descr, name: str) -> ForeignSpec:
    """The :class:`ForeignSpec` of a bioimage.io model description; a one-line
    :class:`ModelFileError` for a package Tessera cannot run."""
    if len(descr.inputs) != 1 or len(descr.outputs) < 1:
        raise ModelFileError(f"{name}: Tessera runs models with one input tensor")
    tin, tout = descr.inputs[0], descr.outputs[0]
    in_order = tuple(_axis_kind(a) for a in tin.axes)
    out_order = tuple(_axis_kind(a) for a in tout.axes)
    try:
        _check_axes(in_order, "input")
        _check_axes(out_order, "output")
        in_names = _channels(tin.axes, "c0")
        out_names = _channels(tout.axes, "foreground")
        min_size, step = _sizes(tin.axes)
        halo = _output_halo(tout.axes, tin.id)
        pre = Processing(tuple(_step(p, len(in_names), output=False) for p in tin.preprocessing))
        post = Processing(tuple(_step(p, len(out_names), output=True) for p in tout.postprocessing))
    except ModelFileError as err:
        raise ModelFileError(f"{name}: {err}") from None
    data = tin.data if not isinstance(tin.data, Sequence) else tin.data[0]
    return ForeignSpec(
        name=name,
        in_order=in_order,
        out_order=out_order,
        in_channels=len(in_names),
        class_names=tuple(out_names),
        min_size=min_size,
        step=step,
        halo=halo,
        pre=pre,
        post=post,
        probabilities=_is_probability(tout, [str(p.id) for p in tout.postprocessing]),
        input_dtype=str(getattr(data, "type", "float32")),
        batch=any(getattr(a, "type", "") == "batch" and a.size != 1 for a in tin.axes),
    )


# -- the model ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ForeignConfig:
    """The part of a U-Net's config the engine reads, for a model from another tool."""

    in_channels: int
    n_classes: int
    normalization: Processing
    padding: str = "same"
    upsampling: str = "none"


def _valid_size(n: int, minimum: int, step: int) -> int:
    if step == 0:
        return minimum
    return minimum + max(0, math.ceil((n - minimum) / step)) * step


class ForeignModel(nn.Module):
    """A bioimage.io model from another tool, shaped like a :class:`~napari_tessera.UNet` for
    the tiling engine: ``forward`` maps a normalised ``(N, C, Y, X)`` float tile to logits
    (the package's probabilities are turned back into logits, so the engine's sigmoid or
    softmax gives them again). Not trainable; it runs as it is (no inference copy)."""

    runs_as_is = True

    def __init__(self, spec: ForeignSpec, runner, weights_sha256: str):
        super().__init__()
        self.spec = spec
        self.config = ForeignConfig(spec.in_channels, spec.n_classes, spec.pre)
        self.metadata = {
            "class_names": list(spec.class_names),
            "halo": {"pixels": self.exact_halo(), "profile": [], "declared": True},
            "bioimageio": spec.name,
        }
        self._sha = weights_sha256
        if isinstance(runner, nn.Module):
            self.net = runner  # TorchScript: moves with the model
            self._session = None
        else:
            self.net = None
            self._session = runner
        # the engine reads the device of a model's parameters
        self._anchor = nn.Parameter(torch.zeros(1), requires_grad=False)

    @property
    def size_multiple(self) -> int:
        steps = [s for s in self.spec.step if s]
        return max(steps) if steps else 1

    def exact_halo(self) -> int:
        """The package's declared halo, on the size grid: all Tessera knows of its context."""
        m = self.size_multiple
        return -(-self.spec.halo // m) * m

    @property
    def tile_limit(self) -> int | None:
        """The largest tile side: the input size, when the package fixes it."""
        fixed = [s for s, st in zip(self.spec.min_size, self.spec.step) if st == 0]
        return min(fixed) if fixed else None

    def digest(self) -> str:
        return self._sha

    def _to_declared(self, x: np.ndarray) -> np.ndarray:
        order = list(self.spec.in_order)
        arr = x if "channel" in order else x[:, 0]
        src = ["batch", "channel", "y", "x"] if "channel" in order else ["batch", "y", "x"]
        if "batch" not in order:
            arr, src = arr[0], src[1:]
        return np.transpose(arr, [src.index(a) for a in order])

    def _from_declared(self, y: np.ndarray) -> np.ndarray:
        order = list(self.spec.out_order)
        if "batch" not in order:
            y, order = y[None], ["batch", *order]
        if "channel" not in order:
            y, order = y[..., None], [*order, "channel"]
        return np.transpose(y, [order.index(a) for a in ("batch", "channel", "y", "x")])

    def _run_one(self, x: np.ndarray) -> np.ndarray:
        """The network on a batch ``(N, C, Y, X)`` of valid size, as the package runs it."""
        arr = self._to_declared(x).astype(self.spec.input_dtype)
        if self._session is not None:
            inp = self._session.get_inputs()[0].name
            out = self._session.run(None, {inp: arr})[0]
        else:
            dev = self._anchor.device
            with torch.inference_mode():
                out = self.net(torch.from_numpy(np.ascontiguousarray(arr)).to(dev)).cpu().numpy()
        return self._from_declared(np.asarray(out, np.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        arr = x.detach().float().cpu().numpy()
        hy = _valid_size(h, self.spec.min_size[0], self.spec.step[0])
        wx = _valid_size(w, self.spec.min_size[1], self.spec.step[1])
        if hy < h or wx < w:
            raise InputError(f"tile {h}x{w} is larger than {self.spec.name}'s fixed input size")
        if (hy, wx) != (h, w):  # mirror a small tile up to a size the package accepts
            arr = np.pad(arr, ((0, 0), (0, 0), (0, hy - h), (0, wx - w)), mode="symmetric")
        batches = [arr] if self.spec.batch else [arr[i : i + 1] for i in range(n)]
        out = np.concatenate([self._run_one(b) for b in batches])
        if out.shape[-2:] != arr.shape[-2:] or out.shape[1] != self.spec.n_classes:
            raise InputError(
                f"{self.spec.name} gave an output of shape {out.shape[1:]} for an input of "
                f"{arr.shape[1:]}; it does not match its description"
            )
        out = self.spec.post.run(out[:, :, :h, :w])[0].astype(np.float32)
        if self.spec.probabilities:  # back to logits: the engine's sigmoid/softmax undo this
            p = np.clip(out, _EPS_P, 1 - _EPS_P)
            out = np.log(p / (1 - p)) if out.shape[1] == 1 else np.log(p)
        return torch.from_numpy(np.ascontiguousarray(out)).to(x.device)


# -- loading -----------------------------------------------------------------------------------
def _extract(path: Path, zf: zipfile.ZipFile, weights, tmpd: str, what: str) -> Path:
    """The weight file of ``weights`` (a weights description), extracted and sha256-checked."""
    name = file_name(weights.source)
    if name not in zf.namelist():
        raise ModelFileError(f"{path.name}: its {what} weights file {name} is missing")
    out = Path(tmpd) / name
    with zf.open(name) as src, open(out, "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
    if weights.sha256 is not None and file_sha256(out) != str(weights.sha256):
        raise ModelFileError(f"{path.name}: sha256 mismatch for its weights file {name}")
    return out


def _onnx_session(path: Path, file: Path):
    try:
        import onnxruntime as ort
    except ImportError as err:
        from .errors import MissingExtra

        raise MissingExtra(
            "ONNX models need onnxruntime: pip install 'napari-tessera[bioimageio]'"
        ) from err
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(file), opts, providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 (any onnxruntime failure: a bad weight file)
        msg = f"{path.name}: onnxruntime cannot load its weights: {one_line(err)}"
        raise ModelFileError(msg) from None


def package_spec(path: str | os.PathLike) -> ForeignSpec | None:
    """The :class:`ForeignSpec` of a bioimage.io package from another tool (checked, without
    loading its weights); None for a package Tessera exported."""
    from ._bioimageio_read import read_package, tessera_attachment

    descr = read_package(path)
    if tessera_attachment(descr) is not None:
        return None
    return read_spec(descr, Path(path).name)


def load_foreign(path: str | os.PathLike, descr, *, device: str = "cpu", trust_model: bool = False):
    """A :class:`ForeignModel` for a package from another tool: its ONNX weights, or its
    TorchScript weights when ``trust_model``. Raises a one-line :class:`ModelFileError`
    (:class:`InputError` for TorchScript without trust)."""
    path = Path(path)
    spec = read_spec(descr, path.name)
    w = descr.weights
    if w.onnx is None and w.torchscript is None:
        raise ModelFileError(
            f"{path.name}: Tessera runs a bioimage.io model from another tool from its ONNX "
            "weights (or TorchScript, trusted); this package has neither"
        )
    if w.onnx is None and not trust_model:
        raise InputError(
            f"{path.name} has only TorchScript weights, which run code stored in the package: "
            "run it with `tessera segment --trust-model` if you trust where it came from"
        )
    with tempfile.TemporaryDirectory(prefix="tessera-bioimageio-") as tmpd:
        with zipfile.ZipFile(path) as zf:
            if w.onnx is not None:
                file = _extract(path, zf, w.onnx, tmpd, "ONNX")
                runner = _onnx_session(path, file)
            else:
                file = _extract(path, zf, w.torchscript, tmpd, "TorchScript")
                try:
                    runner = torch.jit.load(str(file), map_location="cpu").eval()
                except Exception as err:  # noqa: BLE001
                    raise ModelFileError(
                        f"{path.name}: cannot load its TorchScript weights: {one_line(err)}"
                    ) from None
        model = ForeignModel(spec, runner, file_sha256(file))
    return model.to(torch.device(device)).eval()
