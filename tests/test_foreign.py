"""bioimage.io models from other tools, run through Tessera's overlap-tile engine.

The packages here are built with the ``bioimageio.spec`` API around small networks that are
not Tessera's U-Net (ONNX and TorchScript weights). ``bioimageio.core`` is the reference for
what a package means: its own prediction pipeline must reproduce Tessera's output.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from torch import nn

from _helpers import rewrite_zip

pytest.importorskip("bioimageio.spec")
pytest.importorskip("onnxruntime")

from napari_tessera.errors import InputError, ModelFileError  # noqa: E402
from napari_tessera.foreign import ForeignModel  # noqa: E402
from napari_tessera.inference import predict_tiled, predict_whole, segment  # noqa: E402
from napari_tessera.io import load_model  # noqa: E402


class PoolNet(nn.Module):
    """Not a U-Net: two poolings (size step 4), nearest upsampling, one skip; radius < 16."""

    def __init__(self, cin: int, cout: int, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.a = nn.Conv2d(cin, 6, 3, padding=1)
        self.b = nn.Conv2d(6, 6, 3, padding=1)
        self.c = nn.Conv2d(12, cout, 1)
        sel = torch.zeros(1, cout, 1, 1)
        sel[0, min(1, cout - 1)] = 4.0  # bright pixels lean to the first object class
        self.register_buffer("sel", sel)

    def forward(self, x):
        f = torch.relu(self.a(x))
        g = nn.functional.max_pool2d(nn.functional.max_pool2d(f, 2), 2)
        g = nn.functional.interpolate(torch.relu(self.b(g)), scale_factor=4.0, mode="nearest")
        return self.c(torch.cat([f, g], 1)) + (x[:, :1] - 0.5) * self.sel


@dataclass
class Variant:
    """How a package declares its tensors."""

    cin: int = 1
    cout: int = 1
    channel_last: bool = False
    pre: str = "scale_range"  # or "zmuv", "fixed"
    post: str = "sigmoid"  # or "softmax", "none"
    halo: int = 16
    min_size: int = 40
    step: int = 4
    weights: tuple[str, ...] = ("onnx",)


class Wrapped(nn.Module):
    """The network as the package declares it: (B, C, Y, X) or (B, Y, X, C)."""

    def __init__(self, net: nn.Module, channel_last: bool):
        super().__init__()
        self.net, self.channel_last = net, channel_last

    def forward(self, x):
        if self.channel_last:
            return self.net(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.net(x)


def _axes(m, v: Variant, cin: int, names: list[str], *, out: bool):
    sz = m.ParameterizedSize(min=v.min_size, step=v.step)
    if out:
        ref = lambda a: m.SizeReference(  # noqa: E731
            tensor_id=m.TensorId("raw"), axis_id=m.AxisId(a), offset=0
        )
        sp = [m.SpaceOutputAxisWithHalo(id=m.AxisId(a), size=ref(a), halo=v.halo) for a in "yx"]
    else:
        sp = [m.SpaceInputAxis(id=m.AxisId(a), size=sz) for a in "yx"]
    ch = [m.ChannelAxis(channel_names=[m.Identifier(n) for n in names])]
    return [m.BatchAxis(), *(sp + ch if v.channel_last else ch + sp)]


def _pre(m, v: Variant):
    if v.pre == "scale_range":
        kw = m.ScaleRangeKwargs(
            axes=[m.AxisId("y"), m.AxisId("x")], min_percentile=1.0, max_percentile=99.5
        )
        return [m.ScaleRangeDescr(kwargs=kw)]
    if v.pre == "zmuv":  # joint over the channels, then a gain per channel
        kw = m.ZeroMeanUnitVarianceKwargs(axes=[m.AxisId(a) for a in ("channel", "y", "x")])
        lin = m.ScaleLinearAlongAxisKwargs(
            axis=m.AxisId("channel"), gain=[1.0 + i for i in range(v.cin)], offset=[0.0] * v.cin
        )
        return [m.ZeroMeanUnitVarianceDescr(kwargs=kw), m.ScaleLinearDescr(kwargs=lin)]
    kw = m.FixedZeroMeanUnitVarianceKwargs(mean=300.0, std=150.0)
    return [m.FixedZeroMeanUnitVarianceDescr(kwargs=kw)]


def _post(m, v: Variant):
    if v.post == "sigmoid":
        return [m.SigmoidDescr()]
    if v.post == "softmax":
        return [m.SoftmaxDescr(kwargs=m.SoftmaxKwargs(axis=m.AxisId("channel")))]
    return []


def _test_input(v: Variant, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.normal(300, 60, (v.cin, 48, 40)).astype(np.float32)
    img[:, 10:25, 8:22] += 400
    return img


def build_package(path: Path, v: Variant, *, seed=0, test_output=None) -> Path:
    """A bioimage.io package around :class:`PoolNet`, written with ``bioimageio.spec``.
    ``test_output``: the test output to declare (default: 0.5 everywhere, a placeholder)."""
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model import v0_5 as m

    d = path.parent / (path.stem + "_files")
    d.mkdir(parents=True, exist_ok=True)
    net = Wrapped(PoolNet(v.cin, v.cout, seed), v.channel_last).eval()
    raw = _test_input(v)[None]
    if v.channel_last:
        raw = raw.transpose(0, 2, 3, 1)
    np.save(d / "in.npy", raw)
    shape = list(raw.shape)
    shape[-1 if v.channel_last else 1] = v.cout
    np.save(d / "out.npy", np.full(shape, 0.5, np.float32) if test_output is None else test_output)
    (d / "README.md").write_text("a test network\n")
    weights = {}
    ex = torch.from_numpy(raw)
    if "onnx" in v.weights:
        dyn = {0: "b", 1: "y", 2: "x"} if v.channel_last else {0: "b", 2: "y", 3: "x"}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                net,
                (ex,),
                str(d / "w.onnx"),
                dynamo=False,
                opset_version=17,
                input_names=["raw"],
                output_names=["out"],
                dynamic_axes={"raw": dyn, "out": dyn},
            )
        weights["onnx"] = m.OnnxWeightsDescr(source=d / "w.onnx", opset_version=17)
    if "torchscript" in v.weights:
        torch.jit.trace(net, ex).save(str(d / "w.pt"))
        weights["torchscript"] = m.TorchscriptWeightsDescr(
            source=d / "w.pt", pytorch_version=m.Version(torch.__version__.split("+")[0])
        )
    inp = m.InputTensorDescr(
        id=m.TensorId("raw"),
        axes=_axes(m, v, v.cin, [f"c{i}" for i in range(v.cin)], out=False),
        test_tensor=m.FileDescr(source=d / "in.npy"),
        data=m.IntervalOrRatioDataDescr(type="float32"),
        preprocessing=_pre(m, v),
    )
    names = ["fg"] if v.cout == 1 else [f"k{i}" for i in range(v.cout)]
    out = m.OutputTensorDescr(
        id=m.TensorId("out"),
        axes=_axes(m, v, v.cout, names, out=True),
        test_tensor=m.FileDescr(source=d / "out.npy"),
        data=m.IntervalOrRatioDataDescr(type="float32"),
        postprocessing=_post(m, v),
    )
    import imageio.v3 as iio

    iio.imwrite(d / "cover.png", np.zeros((8, 16), np.uint8))  # else the spec makes one in /tmp
    descr = m.ModelDescr(
        name="pool net test model",
        covers=[m.FileDescr(source=d / "cover.png")],
        description="a small non-U-Net network",
        authors=[m.Author(name="Test")],
        cite=[m.CiteEntry(text="test", url="https://example.com")],
        license="MIT",
        documentation=m.FileDescr(source=d / "README.md"),
        inputs=[inp],
        outputs=[out],
        weights=m.WeightsDescr(**weights),
    )
    save_bioimageio_package(descr, output_path=path)
    return path


def tessera_whole(model, raw_cyx: np.ndarray) -> np.ndarray:
    """Tessera's reading of the package on a whole image, as the package's own pipeline
    would run it: preprocessing, one forward pass (no mirroring), postprocessing."""
    from napari_tessera.inference import probabilities
    from napari_tessera.normalize import normalize_slice

    x = normalize_slice(raw_cyx, model.config.normalization)
    with torch.inference_mode():
        logits = model(torch.from_numpy(x)[None])
    # a package without a sigmoid or softmax gives the logits themselves
    return (probabilities(logits) if model.spec.probabilities else logits)[0].numpy()


VARIANTS = {
    "scale_range_sigmoid": Variant(),
    "channel_last_zmuv_softmax": Variant(
        cin=2, cout=3, channel_last=True, pre="zmuv", post="softmax"
    ),
    "fixed_logits": Variant(pre="fixed", post="none"),
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def package(request, tmp_path_factory):
    """A package whose declared test output is Tessera's own reading of its test input."""
    v = VARIANTS[request.param]
    d = tmp_path_factory.mktemp(request.param)
    draft = build_package(d / "draft.zip", v)
    probs = tessera_whole(load_model(draft), _test_input(v))[None]
    if v.channel_last:
        probs = probs.transpose(0, 2, 3, 1)
    return v, build_package(d / "pkg.zip", v, test_output=probs.astype(np.float32))


def test_bioimageio_core_agrees_with_tessera(package):
    """bioimageio.core runs the package through its own pipeline (its preprocessing,
    onnxruntime, its postprocessing) and must reproduce what Tessera computed."""
    from bioimageio.core import test_model

    _, path = package
    summary = test_model(path, weight_format="onnx")
    assert summary.status == "passed", summary.format()


def test_tiles_equal_one_pass(package):
    """With the declared halo, small tiles give the same probabilities as one mirrored pass
    over the whole image; without a halo the seams show (the check has power)."""
    v, path = package
    model = load_model(path)
    assert isinstance(model, ForeignModel)
    img = np.concatenate([_test_input(v, s) for s in (1, 2)], axis=-1)  # 48 x 80
    axes = "CYX"
    ref = predict_whole(model, img)
    tiled = predict_tiled(model, img, axes=axes, tile_size=40)
    assert tiled.shape == (v.cout, 48, 80)
    np.testing.assert_allclose(tiled, ref, atol=2e-5)
    seams = predict_tiled(model, img, axes=axes, tile_size=24, halo=0)
    assert np.abs(seams - ref).max() > 1e-3


def test_cli_segments_with_a_foreign_package(package, tmp_path):
    from napari_tessera.cli import main

    v, path = package
    img = _test_input(v, 3)
    tif = tmp_path / "img.tif"
    tifffile.imwrite(tif, img if v.cin > 1 else img[0])
    out = tmp_path / "labels.tif"
    args = [str(tif), "--model", str(path), "-o", str(out), "--quiet", "--instances"]
    if v.cin > 1:
        args += ["--axes", "CYX"]
    assert main(["segment", *args]) == 0
    labels = tifffile.imread(out)
    model = load_model(path)
    axes = "CYX" if v.cin > 1 else "YX"
    expect = segment(model, img if v.cin > 1 else img[0], axes=axes, instances=True)
    np.testing.assert_array_equal(labels, expect)
    assert labels.max() >= 1


def test_torchscript_only_needs_trust(tmp_path, capsys):
    from napari_tessera.cli import main

    v = Variant(weights=("torchscript",))
    path = build_package(tmp_path / "ts.zip", v)
    onnx_twin = build_package(tmp_path / "onnx.zip", Variant())
    with pytest.raises(InputError, match="--trust-model"):
        load_model(path)
    tif = tmp_path / "img.tif"
    tifffile.imwrite(tif, _test_input(v, 4)[0])
    out = tmp_path / "labels.tif"
    assert main(["segment", str(tif), "--model", str(path), "-o", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--trust-model" in err and "\n" not in err and not out.exists()
    args = ["segment", str(tif), "--model", str(path), "-o", str(out), "--quiet", "--trust-model"]
    assert main(args) == 0
    twin = segment(load_model(onnx_twin), _test_input(v, 4)[0])
    np.testing.assert_array_equal(tifffile.imread(out), twin)


def _rdf_edit(src: Path, dst: Path, edit) -> Path:
    import yaml

    def change(name, data):
        if name != "rdf.yaml":
            return data
        rdf = yaml.safe_load(data)
        edit(rdf)
        return yaml.safe_dump(rdf).encode()

    return rewrite_zip(src, dst, change)


def _three_d(rdf):
    for t in (rdf["inputs"][0], rdf["outputs"][0]):
        z = dict(t["axes"][-1])
        z["id"] = "z"
        t["axes"].append(z)


def _stardist(rdf):
    rdf["outputs"][0]["postprocessing"] = [{"id": "scale_range", "kwargs": {"axes": ["y", "x"]}}]


def test_packages_tessera_cannot_run_are_one_line_errors(tmp_path, capsys):
    from napari_tessera.cli import main

    good = build_package(tmp_path / "good.zip", Variant())
    bad = {
        "3D": _rdf_edit(good, tmp_path / "three_d.zip", _three_d),
        "tiles cannot give": _rdf_edit(good, tmp_path / "post.zip", _stardist),
        "missing": rewrite_zip(
            good, tmp_path / "gone.zip", lambda n, d: None if n == "w.onnx" else d
        ),
        "sha256": rewrite_zip(
            good, tmp_path / "tampered.zip", lambda n, d: d[:-8] + bytes(8) if n == "w.onnx" else d
        ),
        "neither": _rdf_edit(
            good,
            tmp_path / "keras.zip",
            lambda r: r.update(
                weights={"keras_hdf5": {"source": "w.onnx", "tensorflow_version": "2.15"}}
            ),
        ),
    }
    tif = tmp_path / "img.tif"
    tifffile.imwrite(tif, _test_input(Variant(), 5)[0])
    for words, path in bad.items():
        with pytest.raises(ModelFileError, match=words):
            load_model(path)
        out = tmp_path / f"{path.stem}.tif"
        assert main(["segment", str(tif), "--model", str(path), "-o", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and "\n" not in err and not out.exists(), (words, err)


def test_wrong_channel_count_is_a_one_line_error(tmp_path, capsys):
    from napari_tessera.cli import main

    path = build_package(tmp_path / "two.zip", VARIANTS["channel_last_zmuv_softmax"])
    tif = tmp_path / "img.tif"
    tifffile.imwrite(tif, _test_input(Variant(), 6)[0])
    out = tmp_path / "labels.tif"
    assert main(["segment", str(tif), "--model", str(path), "-o", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "channel" in err and "\n" not in err and not out.exists()


def test_foreign_models_are_not_trained_or_exported(tmp_path, capsys):
    from napari_tessera.cli import main

    path = build_package(tmp_path / "f.zip", Variant())
    img = _test_input(Variant(), 7)[0]
    tifffile.imwrite(tmp_path / "img.tif", img)
    tifffile.imwrite(tmp_path / "paint.tif", (img > 500).astype(np.uint8) + 1)
    train = [
        "train",
        str(tmp_path / "img.tif"),
        str(tmp_path / "paint.tif"),
        "-o",
        str(tmp_path / "m.safetensors"),
        "--from",
        str(path),
        "--steps",
        "2",
        "--quiet",
    ]
    export = ["export", str(path), "-o", str(tmp_path / "again.zip")]
    for args, word in ((train, "train"), (export, "export")):
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert "another tool" in err and f"cannot {word}" in err and "\n" not in err
