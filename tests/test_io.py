"""Model files (safetensors, never pickle) and images, written atomically."""

from __future__ import annotations

import json
import os
import pickle
import struct

import numpy as np
import pytest
import tifffile
import torch
from safetensors.torch import save_file

import napari_tessera.model as model_pkg
from napari_tessera import InputError, ModelFileError, Normalization, UNet, UNetConfig
from napari_tessera.images import atomic_path, read_image, write_tiff
from napari_tessera.io import load_model, read_model_info, save_model

META = {
    "class_names": ["background", "nucleus", "membrane"],
    "provenance": {"trained_on": "x", "epochs": 3, "nested": [1, 2]},
}


@pytest.fixture
def model(deep_unet):
    cfg = UNetConfig(
        n_classes=3,
        base_channels=4,
        depth=2,
        upsampling="bilinear",
        dropout=0.1,
        normalization=Normalization(2.0, 99.0),
    )
    m = deep_unet(cfg, bias_std=0.2)
    m.metadata = dict(META)
    # non-trivial BatchNorm statistics must survive the round trip too
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
    return m


def _forward(m, x):
    with torch.no_grad():
        return m.eval()(x)


def _no_temp_files(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith(".part")]


# -- round trip --------------------------------------------------------------------------------
def test_save_load_round_trip(model, tmp_path):
    path = save_model(model, tmp_path / "m.safetensors")
    assert path.is_file() and _no_temp_files(tmp_path) == []
    loaded = load_model(path)
    assert isinstance(loaded, UNet) and not loaded.training
    assert loaded.config == model.config
    assert loaded.metadata == META
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    x = torch.randn(2, 1, 36, 44)
    assert torch.equal(_forward(loaded, x), _forward(model, x))
    config, metadata = read_model_info(path)
    assert config == model.config and metadata == META


def test_half_precision_round_trip(model, tmp_path):
    full = save_model(model, tmp_path / "full.safetensors")
    half = save_model(model, tmp_path / "half.safetensors", half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded = load_model(half)
    for k, v in loaded.state_dict().items():
        if v.is_floating_point():
            assert v.dtype == torch.float32, k
    assert loaded.state_dict()["inc.1.num_batches_tracked"].dtype == torch.int64
    x = torch.randn(1, 1, 40, 40)
    a, b = _forward(model, x), _forward(loaded, x)
    assert not torch.equal(a, b)  # really stored at lower precision
    assert torch.allclose(torch.softmax(a, 1), torch.softmax(b, 1), atol=1e-2)


def test_model_without_metadata(tmp_path):
    m = UNet(UNetConfig(depth=1, base_channels=2))
    path = save_model(m, tmp_path / "plain.safetensors")
    assert load_model(path).metadata == {}


# -- pickle refusal ----------------------------------------------------------------------------
class _Payload:
    """Unpickling this creates ``marker`` (what a malicious model file could do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _armed(tmp_path, kind):
    """Show that the payload really runs code when unpickled, so the test below has power."""
    probe = tmp_path / "probe-marker"
    if kind == "torch.save":
        torch.save({"evil": _Payload(probe)}, tmp_path / "probe.pt")
        torch.load(tmp_path / "probe.pt", weights_only=False)["evil"].close()
    else:
        pickle.loads(pickle.dumps({"evil": _Payload(probe)}))["evil"].close()
    assert probe.exists()
    probe.unlink()


@pytest.mark.parametrize("kind", ["torch.save", "pickle", "pickle-dict"])
def test_pickle_files_are_refused_without_unpickling(tmp_path, kind):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    if kind == "torch.save":
        torch.save({"state_dict": {}, "evil": _Payload(marker)}, path)
        assert path.read_bytes()[:2] == b"PK"  # a zip archive holding a pickle
    elif kind == "pickle":
        path.write_bytes(pickle.dumps({"weights": [1, 2, 3], "evil": _Payload(marker)}))
    else:
        path.write_bytes(pickle.dumps({"inc.0.weight": np.zeros((4, 1, 3, 3))}))
    if kind != "pickle-dict":
        _armed(tmp_path, kind)
    for load in (load_model, read_model_info):
        with pytest.raises(ModelFileError, match="pickle"):
            load(path)
    assert not marker.exists()
    # the same bytes under a .safetensors name are refused just the same
    renamed = path.rename(tmp_path / "model.safetensors")
    with pytest.raises(ModelFileError, match="pickle"):
        load_model(renamed)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [0, 1, 2, pickle.HIGHEST_PROTOCOL])
def test_pickles_of_any_protocol_are_never_unpickled(tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.safetensors"
    path.write_bytes(pickle.dumps({"evil": _Payload(marker)}, protocol=protocol))
    with pytest.raises(ModelFileError):
        load_model(path)
    assert not marker.exists()


# -- corrupt and hostile safetensors -----------------------------------------------------------
@pytest.fixture
def good_file(tmp_path):
    m = UNet(UNetConfig(depth=2, base_channels=4))
    return save_model(m, tmp_path / "good.safetensors")


@pytest.mark.parametrize("keep", [0, 4, 7, 8, 20, "header", "half", -1])
def test_truncated_file_is_refused(good_file, tmp_path, keep):
    data = good_file.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    cut = {"header": 8 + n, "half": len(data) // 2}.get(keep, keep)
    if cut == -1:
        cut = len(data) - 1
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(data[:cut])
    with pytest.raises(ModelFileError):
        load_model(bad)


@pytest.mark.parametrize(
    "payload",
    [
        b"garbage bytes that are not a model",
        os.urandom(4096),
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}" + b"\0" * 64,
        b"\x06\x00\x00\x00\x00\x00\x00\x00[1, 2]" + b"\0" * 64,
        b"\xff" * 64,
        b"",
    ],
)
def test_garbage_is_refused(tmp_path, payload):
    bad = tmp_path / "junk.safetensors"
    bad.write_bytes(payload)
    with pytest.raises(ModelFileError):
        load_model(bad)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        load_model(tmp_path / "nope.safetensors")
    with pytest.raises(ModelFileError):
        load_model(tmp_path)


def _craft(path, config, *, tensors=None, metadata="{}", fmt="napari-tessera"):
    tensors = tensors if tensors is not None else {"w": torch.zeros(1)}
    meta = {"format": fmt, "format_version": "1", "config": config, "metadata": metadata}
    save_file(tensors, str(path), metadata=meta)
    return path


@pytest.mark.parametrize(
    "config",
    [
        {"depth": 40},
        {"base_channels": 10**6},
        {"base_channels": 10**6, "depth": 7},
        {"in_channels": 10**9},
        {"n_classes": -1},
        {"depth": "4"},
        {"upsampling": "os.system('rm -rf /')"},
        {"depth": 2, "unknown": 1},
        {"normalization": {"low": 99, "high": 1}},
    ],
)
def test_absurd_config_is_refused_before_building_the_network(tmp_path, monkeypatch, config):
    def no_unet(*args, **kwargs):
        raise AssertionError("a network was built from an invalid config")

    monkeypatch.setattr(model_pkg, "UNet", no_unet)
    path = _craft(tmp_path / "absurd.safetensors", json.dumps(config))
    with pytest.raises(ModelFileError):
        load_model(path)
    with pytest.raises(ModelFileError):
        read_model_info(path)


@pytest.mark.parametrize(
    "config, metadata, fmt",
    [
        ("{not json", "{}", "napari-tessera"),
        ('"a string"', "{}", "napari-tessera"),
        (json.dumps({"depth": 2}), "[1, 2]", "napari-tessera"),
        (json.dumps({"depth": 2}), "{bad", "napari-tessera"),
        (json.dumps({"depth": 2}), "{}", "something-else"),
    ],
)
def test_bad_config_or_metadata_json_is_refused(tmp_path, config, metadata, fmt):
    path = _craft(tmp_path / "x.safetensors", config, metadata=metadata, fmt=fmt)
    with pytest.raises(ModelFileError):
        load_model(path)


def test_plain_safetensors_without_config_is_refused(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file(UNet(UNetConfig(depth=1, base_channels=2)).state_dict(), str(path))
    with pytest.raises(ModelFileError, match="not a Tessera model"):
        load_model(path)


def test_weights_with_wrong_shape_are_refused(tmp_path):
    cfg = UNetConfig(depth=2, base_channels=4)
    wide = UNet(UNetConfig(depth=2, base_channels=8)).state_dict()
    path = _craft(tmp_path / "wide.safetensors", json.dumps(cfg.to_dict()), tensors=wide)
    with pytest.raises(ModelFileError, match="shape"):
        load_model(path)


@pytest.mark.parametrize("change", ["missing", "extra"])
def test_weights_with_wrong_names_are_refused(tmp_path, change):
    cfg = UNetConfig(depth=2, base_channels=4)
    sd = dict(UNet(cfg).state_dict())
    if change == "missing":
        del sd["outc.weight"]
    else:
        sd["evil.weight"] = torch.zeros(3)
    path = _craft(tmp_path / "names.safetensors", json.dumps(cfg.to_dict()), tensors=sd)
    with pytest.raises(ModelFileError, match="do not match"):
        load_model(path)


def test_loaded_weights_are_exactly_the_stored_ones(tmp_path):
    """A file crafted by hand (not by save_model) with the right names and shapes loads."""
    cfg = UNetConfig(depth=1, base_channels=2, n_classes=3)
    sd = {
        k: torch.randn(v.shape) if v.is_floating_point() else v
        for k, v in UNet(cfg).state_dict().items()
    }
    path = _craft(
        tmp_path / "hand.safetensors",
        json.dumps(cfg.to_dict()),
        tensors=sd,
        metadata=json.dumps({"class_names": ["a", "b", "c"]}),
    )
    m = load_model(path)
    assert m.metadata == {"class_names": ["a", "b", "c"]}
    for k, v in sd.items():
        assert torch.equal(m.state_dict()[k], v)


def _raw_header_file(path, header: dict, body: bytes = b"") -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)


def _valid_header(cfg):
    """A correct safetensors header (and body) for an initialised ``UNet(cfg)``."""
    header = {
        "__metadata__": {
            "format": "napari-tessera",
            "format_version": "1",
            "config": json.dumps(cfg.to_dict()),
            "metadata": "{}",
        }
    }
    body, off = b"", 0
    for k, v in UNet(cfg).state_dict().items():
        data = v.numpy().tobytes()
        dtype = {torch.float32: "F32", torch.int64: "I64"}[v.dtype]
        header[k] = {"dtype": dtype, "shape": list(v.shape), "data_offsets": [off, off + len(data)]}
        body += data
        off += len(data)
    return header, body


HOSTILE_HEADERS = {
    "offset past the end": lambda h: h["outc.weight"].update(data_offsets=[0, 10**9]),
    "overlapping offsets": lambda h: h["outc.bias"].update(data_offsets=[0, 8]),
    "unknown dtype": lambda h: h["outc.weight"].update(dtype="XYZ"),
    "dtype size mismatch": lambda h: h["outc.weight"].update(dtype="F64"),
    "shape is a string": lambda h: h["outc.weight"].update(shape="abc"),
    "config is an object": lambda h: h["__metadata__"].update(config={"depth": 1}),
}
HOSTILE_HEADERS_MALFORMED = {
    "tensor entry is a number": lambda h: h.update({"outc.weight": 5}),
    "shape is a number": lambda h: h["outc.weight"].update(shape=5),
    "__metadata__ is a list": lambda h: h.update({"__metadata__": [1]}),
    "__metadata__ is a string": lambda h: h.update({"__metadata__": "abc"}),
}


@pytest.mark.parametrize(
    "case",
    list(HOSTILE_HEADERS) + list(HOSTILE_HEADERS_MALFORMED),
)
def test_hostile_headers_are_refused(tmp_path, case):
    cfg = UNetConfig(depth=1, base_channels=2)
    header, body = _valid_header(cfg)
    path = tmp_path / "hostile.safetensors"
    _raw_header_file(path, header, body)
    assert load_model(path).config == cfg  # the unmodified hand-made file loads
    {**HOSTILE_HEADERS, **HOSTILE_HEADERS_MALFORMED}[case](header)
    _raw_header_file(path, header, body)
    with pytest.raises(ModelFileError):
        load_model(path)


# -- atomic writes -----------------------------------------------------------------------------
def test_atomic_path_replaces_on_success(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with atomic_path(target) as tmp:
        assert tmp != target and tmp.parent == tmp_path
        tmp.write_bytes(b"new")
        assert target.read_bytes() == b"old"  # not visible until the end
    assert target.read_bytes() == b"new"
    assert _no_temp_files(tmp_path) == []


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("existing", [True, False])
def test_atomic_path_cleans_up_on_error(tmp_path, exc, existing):
    target = tmp_path / "out.bin"
    if existing:
        target.write_bytes(b"precious")
    seen = []
    with pytest.raises(exc):
        with atomic_path(target) as tmp:
            seen.append(tmp)
            tmp.write_bytes(b"half-written")
            raise exc()
    assert not seen[0].exists()
    assert list(tmp_path.iterdir()) == ([target] if existing else [])
    if existing:
        assert target.read_bytes() == b"precious"


def test_atomic_path_missing_folder(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        with atomic_path(tmp_path / "missing" / "out.bin"):
            pass


def test_written_files_respect_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_tiff(tmp_path / "x.tif", np.zeros((4, 4), np.uint8))
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


# -- images ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "axes, shape, dtype",
    [
        ("YX", (17, 23), np.uint16),
        ("ZYX", (3, 17, 23), np.float32),
        ("CYX", (2, 17, 23), np.uint8),
        ("ZCYX", (3, 2, 17, 23), np.uint16),
        ("YXC", (17, 23, 3), np.uint8),
        ("TZCYX", (2, 3, 2, 9, 11), np.float32),
    ],
)
def test_write_read_tiff_round_trip(tmp_path, axes, shape, dtype):
    data = (np.arange(np.prod(shape)) % 251).reshape(shape).astype(dtype)
    path = write_tiff(tmp_path / "img.tif", data, axes=axes)
    arr, read_axes = read_image(path)
    assert read_axes == axes
    assert arr.dtype == dtype
    np.testing.assert_array_equal(arr, data)
    assert _no_temp_files(tmp_path) == []


def test_write_tiff_overwrites_and_is_compressed(tmp_path):
    path = tmp_path / "img.tif"
    write_tiff(path, np.ones((64, 64), np.uint8), axes="YX")
    write_tiff(path, np.zeros((128, 128), np.uint16), axes="YX")
    arr, _ = read_image(path)
    assert arr.shape == (128, 128) and not arr.any()
    assert path.stat().st_size < 128 * 128  # zlib-compressed zeros
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE


def test_read_image_npy_and_rgb_tiff(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(12).reshape(3, 4))
    arr, axes = read_image(tmp_path / "a.npy")
    assert axes is None and arr.shape == (3, 4)
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((16, 16, 3), np.uint8), photometric="rgb")
    arr, axes = read_image(tmp_path / "rgb.tif")
    assert arr.shape == (16, 16, 3) and axes == "YXC"  # TIFF samples 'S' read as channels


def test_read_image_refuses_pickled_npy(tmp_path):
    path = tmp_path / "obj.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError):
        read_image(path)


@pytest.mark.parametrize("content", [b"hello\n", b"II*\x00garbage", b""])
def test_read_image_refuses_non_images(tmp_path, content):
    path = tmp_path / "x.tif"
    path.write_bytes(content)
    with pytest.raises(InputError, match="x.tif"):
        read_image(path)


def test_read_image_missing_and_folder(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_image(tmp_path / "missing.tif")
    with pytest.raises(InputError, match="folder"):
        read_image(tmp_path)


@pytest.mark.parametrize("value", [1.5, -2])
def test_an_edge_offset_survives_the_round_trip(tmp_path, value):
    m = UNet(UNetConfig(depth=1, base_channels=2), metadata={"edge_offset": value})
    loaded = load_model(save_model(m, tmp_path / "e.safetensors"))
    assert loaded.metadata["edge_offset"] == value


@pytest.mark.parametrize("value", ["wide", None, 1e9, [1]])
def test_a_model_file_with_a_bad_edge_offset_is_refused(tmp_path, value):
    m = UNet(UNetConfig(depth=1, base_channels=2), metadata={"edge_offset": value})
    path = save_model(m, tmp_path / "e.safetensors")
    with pytest.raises(ModelFileError, match="e.safetensors: its edge offset"):
        load_model(path)
