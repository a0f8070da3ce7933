"""bioimage.io model packages: export (validated by bioimageio.spec/.core), weight formats
that agree with Tessera's own forward pass, the ``tessera export`` command, and import."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch

from _helpers import rewrite_zip

pytest.importorskip("bioimageio.spec")

from napari_tessera.bioimageio import export_bioimageio  # noqa: E402
from napari_tessera.config import UNetConfig  # noqa: E402
from napari_tessera.errors import ModelFileError  # noqa: E402
from napari_tessera.io import load_model, save_model  # noqa: E402
from napari_tessera.model import UNet  # noqa: E402
from napari_tessera.normalize import normalize_slice  # noqa: E402

TOL = 1e-4


def _model(padding="same", n_classes=2, seed=0):
    torch.manual_seed(seed)
    m = UNet(
        UNetConfig(base_channels=4, depth=2, padding=padding, n_classes=n_classes),
        metadata={"class_names": [f"k{i}" for i in range(n_classes)], "epochs": 3},
    )
    # non-trivial BatchNorm statistics, so eval-mode normalisation is exercised
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
    return m.eval()


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    model = _model()
    path = export_bioimageio(
        model, tmp_path_factory.mktemp("bio") / "my_model.zip", authors=["Ada", "Grace"]
    )
    return model, path


def test_package_is_valid(package):
    from bioimageio.spec import load_description
    from bioimageio.spec.model import v0_5

    model, path = package
    descr = load_description(path)
    assert isinstance(descr, v0_5.ModelDescr), descr.validation_summary.format()
    assert descr.validation_summary.status in ("passed", "valid-format")
    assert {"pytorch_state_dict", "torchscript", "onnx"} <= {
        k for k, v in descr.weights if v is not None
    }
    (inp,), (out,) = descr.inputs, descr.outputs
    (pre,) = [p for p in inp.preprocessing if p.id != "ensure_dtype"]
    assert pre.id == "scale_range"
    assert pre.kwargs.min_percentile == model.config.normalization.low
    assert pre.kwargs.max_percentile == model.config.normalization.high
    assert [p.id for p in out.postprocessing if p.id != "ensure_dtype"] == ["softmax"]
    y = inp.axes[2]
    assert y.size.step == model.size_multiple
    assert out.axes[2].halo == model.exact_halo()
    assert [str(a.name) for a in descr.authors] == ["Ada", "Grace"]
    assert any(str(c.doi) == "10.1007/978-3-319-24574-4_28" for c in descr.cite)
    assert descr.config.model_dump()["napari_tessera"]["metadata"]["epochs"] == 3
    names = set(zipfile.ZipFile(path).namelist())
    assert {"cover.png", "README.md", "test_input.npy", "test_output.npy"} <= names


def test_bioimageio_core_test_model(package):
    core = pytest.importorskip("bioimageio.core")
    _, path = package
    summary = core.test_model(path)
    assert summary.status == "passed", summary.format()


def _extract(path, name, tmp_path):
    with zipfile.ZipFile(path) as zf:
        return zf.extract(name, tmp_path)


def test_weight_formats_match_tessera(package, tmp_path):
    """Every weight format's output (logits) equals UNet.forward to 1e-4 on the test input."""
    model, path = package
    raw = np.load(_extract(path, "test_input.npy", tmp_path))
    x = normalize_slice(raw[0], model.config.normalization)[None]
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    expected = np.load(_extract(path, "test_output.npy", tmp_path))
    np.testing.assert_allclose(torch.softmax(torch.from_numpy(ref), 1).numpy(), expected, atol=TOL)

    ts = torch.jit.load(_extract(path, "weights_torchscript.pt", tmp_path))
    with torch.no_grad():
        got = ts(torch.from_numpy(x)).numpy()
    assert np.abs(got - ref).max() < TOL

    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(
        _extract(path, "weights.onnx", tmp_path), providers=["CPUExecutionProvider"]
    )
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    assert np.abs(got - ref).max() < TOL
    # dynamic Y/X: another size on the 2**depth grid
    x2 = x[..., : x.shape[-2] - model.size_multiple, :]
    with torch.no_grad():
        ref2 = model(torch.from_numpy(np.ascontiguousarray(x2))).numpy()
    got2 = sess.run(None, {sess.get_inputs()[0].name: np.ascontiguousarray(x2)})[0]
    assert np.abs(got2 - ref2).max() < TOL


def test_valid_padding_and_one_class(tmp_path):
    from bioimageio.spec import load_description
    from bioimageio.spec.model import v0_5

    model = _model(padding="valid", n_classes=1)
    path = export_bioimageio(model, tmp_path / "valid.zip")
    descr = load_description(path)
    assert isinstance(descr, v0_5.ModelDescr), descr.validation_summary.format()
    assert descr.outputs[0].axes[2].size.offset == -2 * model.margin
    assert [p.id for p in descr.outputs[0].postprocessing if p.id != "ensure_dtype"] == ["sigmoid"]
    again = load_model(path)
    assert again.digest() == model.digest()


def test_load_model_reads_package(package):
    model, path = package
    again = load_model(path)
    assert again.digest() == model.digest()
    assert again.metadata["epochs"] == 3


def test_bad_packages_are_one_line_errors(package, tmp_path):
    _, path = package
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(path.read_bytes()[:5000])
    no_weights = rewrite_zip(
        path,
        tmp_path / "noweights.zip",
        lambda n, d: None if n == "tessera_model.safetensors" else d,
    )

    def tamper(name, data):
        if name != "tessera_model.safetensors":
            return data
        return data[:-4] + bytes(4)

    tampered = rewrite_zip(path, tmp_path / "tampered.zip", tamper)
    for bad, words in (
        (truncated, "zip"),
        (no_weights, "missing"),
        (tampered, "sha256"),
    ):
        with pytest.raises(ModelFileError, match=words) as info:
            load_model(bad)
        assert "\n" not in str(info.value)


def test_cli_export(tmp_path, capsys):
    from napari_tessera.cli import main

    model = _model(seed=1)
    src = save_model(model, tmp_path / "m.safetensors")
    out = tmp_path / "pkg.zip"
    rc = main(
        [
            "export",
            str(src),
            "-o",
            str(out),
            "--name",
            "Nuclei",
            "--authors",
            "Ada,Grace",
            "--tags",
            "nuclei,fluorescence",
            "--license",
            "MIT",
            "--quiet",
        ]
    )
    assert rc == 0 and out.is_file()
    assert load_model(out).digest() == model.digest()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    capsys.readouterr()
    assert main(["export", str(tmp_path / "missing.safetensors"), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tessera export: error:") and "\n" not in err


def _package_test_input(path) -> np.ndarray:
    with zipfile.ZipFile(path) as zf, zf.open("test_input.npy") as f:
        return np.load(f)[0]


def test_cli_export_takes_its_test_input_from_the_training_image(tmp_path, capsys):
    """`tessera train` records the images it learnt from; `tessera export` then makes the
    package's test input from the first one (a crop of its real pixels), or from
    --test-image; without either (the file gone), the built-in sample."""
    import tifffile

    from napari_tessera.cli import main
    from napari_tessera.synthetic import nuclei_2d

    s = nuclei_2d((96, 96), seed=4)
    other = nuclei_2d((96, 96), seed=5).image
    tifffile.imwrite(tmp_path / "img.tif", s.image)
    tifffile.imwrite(tmp_path / "other.tif", other)
    tifffile.imwrite(tmp_path / "paint.tif", np.where(s.labels > 0, 2, 1).astype(np.uint8))
    m = tmp_path / "m.safetensors"
    train = [
        "train",
        str(tmp_path / "img.tif"),
        str(tmp_path / "paint.tif"),
        "-o",
        str(m),
        "--steps",
        "2",
        "--from",
        "scratch",
        "--base-channels",
        "4",
        "--depth",
        "2",
        "--quiet",
    ]
    assert main(train) == 0
    assert load_model(m).metadata["training_images"] == [str((tmp_path / "img.tif").resolve())]

    def exported(*extra) -> np.ndarray:
        out = tmp_path / "pkg.zip"
        assert main(["export", str(m), "-o", str(out), *extra]) == 0
        return _package_test_input(out)[0]

    def is_crop_of(crop, image) -> bool:
        h, w = crop.shape
        y0, x0 = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
        return np.array_equal(crop, image[y0 : y0 + h, x0 : x0 + w].astype(np.float32))

    assert is_crop_of(exported(), s.image)
    assert "the image it was trained on (img.tif" in capsys.readouterr().err
    assert is_crop_of(exported("--test-image", str(tmp_path / "other.tif")), other)
    (tmp_path / "img.tif").unlink()
    fallback = exported()
    assert not is_crop_of(fallback, s.image) and "built-in nuclei sample" in capsys.readouterr().err
