"""bioimage.io model packages (RDF spec 0.5): export a Tessera model, import one back.

Export writes a zip that any bioimage.io consumer can run: ``pytorch_state_dict`` weights
(a self-contained architecture file plus the U-Net config as its kwargs), ``torchscript`` and
``onnx`` weights, declared pre-/postprocessing (per-sample percentile ``scale_range`` with the
model's percentiles; ``softmax`` over the channel axis, or ``sigmoid`` for a one-class model),
a real test input with the output of Tessera's own forward pass, a cover image, a README and
citations. Every weight format outputs the network's raw class scores (logits), exactly like
``UNet.forward``; the probabilities come from the declared postprocessing.

The package also carries the Tessera model file itself (safetensors, as an attachment), which
is what :func:`load_package` reads back: nothing in the package is unpickled or run.

Needs the optional extra ``napari-tessera[bioimageio]`` (``bioimageio.spec``, ``onnx``;
``onnxruntime`` and ``bioimageio.core`` to test a package).
"""

from __future__ import annotations

import getpass
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from ._bioimageio_read import MODEL_ATTACHMENT, _need_spec, one_line
from .errors import InputError

TESSERA_URL = "https://github.com/napari-tessera/napari-tessera"
UNET_DOI = "10.1007/978-3-319-24574-4_28"
ARCH_FILE = "tessera_unet.py"
ARCH_CALLABLE = "TesseraUNet"
ONNX_OPSET = 17
TEST_SIZE = 256  # side of the test input crop (rounded to what the network takes)

# A standalone forward pass that needs torch only; appended to the source of model/blocks.py.
_ARCH_TAIL = '''

class TesseraUNet(nn.Module):
    """napari-tessera's U-Net (Ronneberger et al., 2015), standalone: returns class logits.

    The keyword arguments are napari-tessera's UNetConfig; ``checkpointing`` and
    ``normalization`` do not change the network (normalisation is declared as preprocessing).
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 2,
        base_channels: int = 64,
        depth: int = 4,
        upsampling: str = "transpose",
        padding: str = "same",
        dropout: float = 0.0,
        checkpointing: bool = False,
        normalization=None,
    ):
        super().__init__()
        pad = 1 if padding == "same" else 0
        ch = [base_channels * 2**i for i in range(depth + 1)]
        deep = {depth, depth - 1}
        self.inc = DoubleConv(in_channels, ch[0], padding=pad)
        self.downs = nn.ModuleList(
            [
                Down(ch[i], ch[i + 1], padding=pad, dropout=dropout if i + 1 in deep else 0.0)
                for i in range(depth)
            ]
        )
        self.ups = nn.ModuleList(
            [Up(ch[i + 1], ch[i], mode=upsampling, padding=pad) for i in reversed(range(depth))]
        )
        self.outc = OutConv(ch[0], n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = skips.pop()
        for up in self.ups:
            x = up(x, skips.pop())
        return self.outc(x)
'''


def architecture_source() -> str:
    """Source of a self-contained module defining ``TesseraUNet`` (torch only)."""
    blocks = (Path(__file__).parent / "model" / "blocks.py").read_text(encoding="utf-8")
    return blocks + _ARCH_TAIL


def _import_arch(path: Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("_tessera_bioimageio_arch", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return getattr(mod, ARCH_CALLABLE)


def min_size(model) -> int:
    """Smallest input side declared in a package: the network's smallest input, and in "same"
    mode more than twice the halo (so something is left once the halo is cropped)."""
    lo = model.valid_input_size(1)
    if model.config.padding == "same":
        m = model.size_multiple
        lo = max(lo, (2 * model.exact_halo() // m + 1) * m)
    return lo


def _test_image(model, test_image) -> np.ndarray:
    """A real ``(C, Y, X)`` slice cropped to a size the network takes."""
    cfg = model.config
    lo = min_size(model)
    if test_image is None:
        from ._sample_data import SIZE_2D
        from .synthetic import nuclei_2d

        side = max(SIZE_2D[0], lo)
        img = nuclei_2d((side, side), seed=0).image
    else:
        img = np.asarray(test_image)
    if img.ndim == 2:
        img = np.repeat(img[None], cfg.in_channels, axis=0)
    if img.ndim != 3 or img.shape[0] != cfg.in_channels:
        raise InputError(
            f"test image must be YX or CYX with {cfg.in_channels} channel(s), got shape {img.shape}"
        )
    m = model.size_multiple
    side = []
    for n in img.shape[1:]:
        want = max(min(n, max(TEST_SIZE, lo)), lo)
        if n < lo:
            raise InputError(f"test image is too small: {n} px, the network needs {lo} px")
        side.append(lo + (want - lo) // m * m)
    y0, x0 = (img.shape[1] - side[0]) // 2, (img.shape[2] - side[1]) // 2
    return np.ascontiguousarray(img[:, y0 : y0 + side[0], x0 : x0 + side[1]]).astype(np.float32)


def _forward(model, raw_cyx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tessera's own normalisation and forward pass: ``(logits, probabilities)``, NCYX."""
    import torch

    from .device import probabilities
    from .normalize import normalize_slice

    x = torch.from_numpy(normalize_slice(raw_cyx, model.config.normalization))[None]
    net = model.cpu().eval()
    with torch.no_grad():
        logits = net(x).float()
        probs = probabilities(logits)
    return logits.numpy(), probs.numpy()


def _cover(raw: np.ndarray, probs: np.ndarray, path: Path) -> None:
    """Input (grey) beside the foreground probability, 2:1, as a PNG."""
    from PIL import Image

    img = raw[0].astype(np.float64)
    lo, hi = np.percentile(img, [1, 99.8])
    left = np.clip((img - lo) / max(hi - lo, 1e-12), 0, 1)
    fg = probs[0, 0] if probs.shape[1] == 1 else 1.0 - probs[0, 0]
    h = min(left.shape[0], fg.shape[0])
    w = min(left.shape[1], fg.shape[1])
    dy, dx = (left.shape[0] - h) // 2, (left.shape[1] - w) // 2
    left = left[dy : dy + h, dx : dx + w]
    grey = np.stack([left] * 3, -1)
    heat = np.stack([fg, fg * 0.6, 0.2 * (1 - fg)], -1)
    out = (np.concatenate([grey, heat], axis=1) * 255).round().astype(np.uint8)
    Image.fromarray(out).save(path)


def _readme(model, name: str, description: str, postproc: str, halo: int) -> str:
    cfg = model.config
    meta = getattr(model, "metadata", {}) or {}
    classes = meta.get("class_names") or [f"class {i}" for i in range(cfg.n_classes)]
    lines = [
        f"# {name}",
        "",
        description,
        "",
        "A U-Net (Ronneberger et al., 2015) trained and exported with "
        f"[napari-tessera]({TESSERA_URL}).",
        "",
        "## Use",
        "",
        f"- input: `(batch, channel, y, x)`, {cfg.in_channels} channel(s), any intensity range;",
        f"  y and x: at least {min_size(model)} px, in steps of {model.size_multiple}",
        "  px (2**depth).",
        f"- preprocessing: per-sample, per-channel percentile scaling "
        f"({cfg.normalization.low} to {cfg.normalization.high} percentile to 0..1).",
        f"- the network outputs class scores (logits); postprocessing: {postproc}.",
        f"- output channels: {', '.join(map(str, classes))}.",
    ]
    if cfg.padding == "same":
        lines.append(
            f"- tile with a halo of {halo} px on each side for results identical to running "
            "on the whole image."
        )
    else:
        lines.append(f"- valid padding: the output is {model.margin} px smaller on each side.")
    lines += [
        "",
        "## Validation",
        "",
        "The test output is the output of napari-tessera's own normalisation, forward pass and",
        "softmax/sigmoid on the test input (a synthetic nuclei image unless a training image was",
        "given); napari-tessera's tests check that every weight format reproduces it.",
        "",
        "## Architecture",
        "",
        "```json",
        json.dumps(cfg.to_dict(), indent=2),
        "```",
        "",
        "## Training",
        "",
        "```json",
        json.dumps(meta, indent=2, default=str),
        "```",
        "",
    ]
    return "\n".join(lines)


def export_bioimageio(
    model,
    path: str | os.PathLike,
    *,
    name: str | None = None,
    description: str | None = None,
    authors: list[str] | str | None = None,
    license: str = "CC-BY-4.0",  # noqa: A002
    tags: list[str] | None = None,
    test_image: np.ndarray | None = None,
) -> Path:
    """Write ``model`` as a bioimage.io model package (zip, RDF spec 0.5); return its path.

    ``test_image``: a ``(Y, X)`` or ``(C, Y, X)`` slice to use as the package's test input
    (default: the built-in 2D nuclei sample). The zip is written atomically.
    """
    _need_spec()
    from bioimageio.spec import save_bioimageio_package

    from .images import atomic_path

    path = Path(path)
    cfg = model.config
    authors = _authors(authors)
    if not name:
        stem = path.stem.replace("_", " ").replace(".", " ").strip()
        name = stem if len(stem) >= 5 else f"Tessera U-Net {stem}".strip()
    postproc = "sigmoid (one class)" if cfg.n_classes == 1 else "softmax over the channel axis"
    description = description or (
        f"U-Net segmentation of {cfg.in_channels}-channel 2D microscopy into "
        f"{cfg.n_classes} class(es), trained with napari-tessera. The network returns logits; "
        f"{postproc} is declared as postprocessing."
    )
    halo = model.exact_halo() if cfg.padding == "same" else 0
    raw = _test_image(model, test_image)
    with tempfile.TemporaryDirectory(prefix="tessera-bioimageio-") as tmpd:
        d = Path(tmpd)
        _write_files(model, d, raw)
        (d / "README.md").write_text(
            _readme(model, name, description, postproc, halo), encoding="utf-8"
        )
        descr = _model_descr(model, d, name, description, authors, license, tags, halo)
        with atomic_path(path) as tmp:
            zip_tmp = tmp.with_name(tmp.name + ".zip")  # the spec writer wants a .zip name
            try:
                save_bioimageio_package(descr, output_path=zip_tmp)
                os.replace(zip_tmp, tmp)
            finally:
                zip_tmp.unlink(missing_ok=True)
    return path


def _authors(authors) -> list[str]:
    """Author names: given (a list, or comma-separated), else the login name."""
    if isinstance(authors, str):
        authors = [a.strip() for a in authors.split(",") if a.strip()]
    if authors:
        return list(authors)
    try:
        return [getpass.getuser()]
    except Exception:  # noqa: BLE001 (no user name: any failure)
        return ["anonymous"]


def _write_files(model, d: Path, raw: np.ndarray) -> None:
    """The package's files in ``d``: the architecture, the weights in three formats, the
    Tessera model file, test and sample tensors (the output from Tessera's own forward
    pass) and the cover."""
    import warnings

    import tifffile
    import torch

    from .io import save_model

    _, probs = _forward(model, raw)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    arch = d / ARCH_FILE
    arch.write_text(architecture_source(), encoding="utf-8")
    net = _import_arch(arch)(**model.config.to_dict()).eval()
    net.load_state_dict(state, strict=True)
    torch.save(state, d / "weights.pt")
    save_model(model, d / MODEL_ATTACHMENT)
    torch.jit.script(net).save(str(d / "weights_torchscript.pt"))
    example = torch.from_numpy(raw[None].copy())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (example,),
            str(d / "weights.onnx"),
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={
                "input": {0: "batch", 2: "y", 3: "x"},
                "output": {0: "batch", 2: "y", 3: "x"},
            },
        )
    np.save(d / "test_input.npy", raw[None])
    np.save(d / "test_output.npy", probs.astype(np.float32))
    tifffile.imwrite(d / "sample_input.tif", raw)
    tifffile.imwrite(d / "sample_output.tif", probs[0].astype(np.float32))
    _cover(raw, probs, d / "cover.png")


def _tensors(model, d: Path, halo: int):
    """The input and output tensor descriptions: axes with the size step (2**depth) and the
    halo, percentile scaling before, softmax (or sigmoid) after."""
    from bioimageio.spec.model import v0_5 as m

    cfg = model.config
    classes = (model.metadata or {}).get("class_names")
    if not (isinstance(classes, list) and len(classes) == cfg.n_classes):
        classes = ["background"] + [f"class{i}" for i in range(1, cfg.n_classes)]
        if cfg.n_classes == 1:
            classes = ["foreground"]
    size = m.ParameterizedSize(min=min_size(model), step=model.size_multiple)
    in_axes = [
        m.BatchAxis(),
        m.ChannelAxis(channel_names=[m.Identifier(f"c{i}") for i in range(cfg.in_channels)]),
        m.SpaceInputAxis(id=m.AxisId("y"), size=size),
        m.SpaceInputAxis(id=m.AxisId("x"), size=size),
    ]
    tin = m.TensorId("input")

    def out_axis(a: str):
        ref = m.SizeReference(tensor_id=tin, axis_id=m.AxisId(a), offset=-2 * model.margin)
        if halo:
            return m.SpaceOutputAxisWithHalo(id=m.AxisId(a), size=ref, halo=halo)
        return m.SpaceOutputAxis(id=m.AxisId(a), size=ref)

    out_axes = [
        m.BatchAxis(),
        m.ChannelAxis(channel_names=[m.Identifier(_ident(c)) for c in classes]),
        out_axis("y"),
        out_axis("x"),
    ]
    pre = [
        m.ScaleRangeDescr(
            kwargs=m.ScaleRangeKwargs(
                axes=[m.AxisId("y"), m.AxisId("x")],
                min_percentile=float(cfg.normalization.low),
                max_percentile=float(cfg.normalization.high),
            )
        ),
    ]
    post = (
        [m.SigmoidDescr()]
        if cfg.n_classes == 1
        else [m.SoftmaxDescr(kwargs=m.SoftmaxKwargs(axis=m.AxisId("channel")))]
    )
    inputs = [
        m.InputTensorDescr(
            id=tin,
            axes=in_axes,
            test_tensor=m.FileDescr(source=d / "test_input.npy"),
            sample_tensor=m.FileDescr(source=d / "sample_input.tif"),
            data=m.IntervalOrRatioDataDescr(type="float32"),
            preprocessing=pre,
        )
    ]
    outputs = [
        m.OutputTensorDescr(
            id=m.TensorId("output"),
            axes=out_axes,
            test_tensor=m.FileDescr(source=d / "test_output.npy"),
            sample_tensor=m.FileDescr(source=d / "sample_output.tif"),
            data=m.IntervalOrRatioDataDescr(type="float32"),
            postprocessing=post,
        )
    ]
    return inputs, outputs


def _weights(model, d: Path):
    """The weights in three formats; the architecture is a file of its own, with kwargs."""
    import torch
    from bioimageio.spec.model import v0_5 as m

    arch, kwargs = d / ARCH_FILE, model.config.to_dict()
    torch_version = m.Version(torch.__version__.split("+")[0])
    weights = m.WeightsDescr(
        pytorch_state_dict=m.PytorchStateDictWeightsDescr(
            source=d / "weights.pt",
            architecture=m.ArchitectureFromFileDescr(
                source=arch, callable=m.Identifier(ARCH_CALLABLE), kwargs=kwargs
            ),
            pytorch_version=torch_version,
        ),
        torchscript=m.TorchscriptWeightsDescr(
            source=d / "weights_torchscript.pt",
            parent="pytorch_state_dict",
            pytorch_version=torch_version,
        ),
        onnx=m.OnnxWeightsDescr(
            source=d / "weights.onnx", parent="pytorch_state_dict", opset_version=ONNX_OPSET
        ),
    )
    return weights


def _model_descr(model, d: Path, name, description, authors, license, tags, halo):  # noqa: A002
    """The package's description (the RDF), its files in ``d``."""
    from bioimageio.spec.model import v0_5 as m

    from . import __version__

    cfg, meta = model.config, dict(getattr(model, "metadata", {}) or {})
    inputs, outputs = _tensors(model, d, halo)
    weights = _weights(model, d)
    descr = _build(
        m.ModelDescr,
        name=name,
        description=description,
        authors=[m.Author(name=a) for a in authors],
        license=license,
        tags=list(tags or []) + ["napari-tessera", "unet", "segmentation", "2d"],
        documentation=m.FileDescr(source=d / "README.md"),
        covers=[m.FileDescr(source=d / "cover.png")],
        cite=[
            m.CiteEntry(
                text="Ronneberger, Fischer, Brox. U-Net: Convolutional Networks for "
                "Biomedical Image Segmentation. MICCAI 2015.",
                doi=m.Doi(UNET_DOI),
            ),
            m.CiteEntry(text="napari-tessera", url=TESSERA_URL),
        ],
        attachments=[m.FileDescr(source=d / MODEL_ATTACHMENT)],
        inputs=inputs,
        outputs=outputs,
        weights=weights,
        git_repo=TESSERA_URL,
        config={
            "napari_tessera": {
                "version": __version__,
                "unet_config": cfg.to_dict(),
                "metadata": json.loads(json.dumps(meta, default=str)),
                "halo": halo,
                "size_multiple": model.size_multiple,
                "model_file": MODEL_ATTACHMENT,
            }
        },
    )
    return descr


def _build(cls, **fields):
    """``cls(**fields)``; a field the spec refuses (licence, name, ...) is a one-line error."""
    from pydantic import ValidationError

    try:
        return cls(**fields)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(map(str, first.get("loc", ()))) or "package"
        raise InputError(
            f"cannot build the bioimage.io package: {where}: {one_line(first.get('msg'))}"
        ) from None


def _ident(text: str) -> str:
    """A bioimage.io identifier (letters, digits, underscores) from a class name."""
    out = "".join(c if c.isalnum() or c == "_" else "_" for c in str(text)) or "c"
    return out if out[0].isalpha() else f"c{out}"


# -- import: see _bioimageio_read.py (it must not import io.py, which calls it) --------------
