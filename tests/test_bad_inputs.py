"""Bad inputs and faults from the reliability record (docs/reliability.md) that the other test
files do not reach: driven through ``tessera`` (``cli.main`` in-process) where possible.

Every refusal must be exit code 2 with exactly one line on stderr, ``tessera COMMAND: error:``,
no traceback and no output file (nor a temporary one). Pixel types that Tessera handles (bool,
int64, float64, constant images) must give the same labels as the equivalent uint16 image.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from torch import nn

import napari_tessera.model as model_pkg
from _helpers import TINY_NETWORK, nonempty_lines, run
from napari_tessera import ModelFileError, UNet, UNetConfig, save_model
from napari_tessera.images import read_image, write_tiff
from napari_tessera.inference import predict_tiled, predict_whole
from napari_tessera.io import expected_shapes, load_model, read_model_info
from napari_tessera.synthetic import nuclei_2d
from napari_tessera.tiling import round_up

SIDE = 64
TINY = [*TINY_NETWORK, "--batch-size", "2"]
TINY += ["--device", "cpu", "-q"]


def assert_refused(result, command: str, needle: str, out_dir: Path) -> str:
    code, stdout, err = result
    assert code == 2, err
    assert "Traceback" not in err
    lines = nonempty_lines(err)
    assert len(lines) == 1, err
    assert lines[0].startswith(f"tessera {command}: error: "), lines[0]
    assert needle.lower() in lines[0].lower(), lines[0]
    assert stdout == ""
    assert sorted(p.name for p in out_dir.iterdir()) == []  # no output, no .part file
    return lines[0]


@pytest.fixture
def out_dir(tmp_path):
    d = tmp_path / "out"
    d.mkdir()
    return d


@pytest.fixture(scope="module")
def cells():
    return nuclei_2d((SIDE, SIDE), seed=1)


def _tiny_model_file(path: Path) -> Path:
    torch.manual_seed(0)
    return save_model(UNet(UNetConfig(depth=2, base_channels=4)), path)


def _craft_model(path: Path, config: dict, tensors=None, **extra_meta) -> Path:
    """A safetensors file with a Tessera header holding ``config`` (and ``tensors``)."""
    meta = {
        "format": "napari-tessera",
        "format_version": "1",
        "config": json.dumps(config),
        "metadata": "{}",
        **extra_meta,
    }
    save_file(tensors if tensors is not None else {"w": torch.zeros(1)}, str(path), metadata=meta)
    return path


# -- tessera segment: refusals -----------------------------------------------------------------
def _segment_cases(d: Path, image: np.ndarray, model: Path) -> dict[str, tuple[list, str]]:
    """case -> (arguments after ``segment`` with the input first, a word the message needs)."""
    cases: dict[str, tuple[list, str]] = {}
    with warnings.catch_warnings():  # tifffile warns that a zero-size TIFF is nonconformant
        warnings.simplefilter("ignore")
        tifffile.imwrite(d / "empty.tif", np.zeros((0, SIDE), np.uint16))
    cases["empty TIFF (0 x 64)"] = ([d / "empty.tif", "--model", model], "empty")
    np.save(d / "empty_z.npy", np.zeros((3, 0, SIDE), np.uint16))
    cases["empty stack (3 x 0 x 64 .npy)"] = ([d / "empty_z.npy", "--model", model], "empty")
    np.save(d / "line.npy", np.arange(SIDE, dtype=np.uint16))
    cases["1-D array"] = ([d / "line.npy", "--model", model], "1-dimensional")
    np.save(d / "words.npy", np.full((SIDE, SIDE), "a"))
    cases["strings, not numbers"] = ([d / "words.npy", "--model", model], "numbers")
    rgba = np.stack([image // 256] * 3 + [np.full_like(image, 255)], axis=-1).astype(np.uint8)
    tifffile.imwrite(d / "rgba.tif", rgba, photometric="rgb")  # alpha as an extra sample
    cases["RGBA TIFF, gray model"] = ([d / "rgba.tif", "--model", model], "several channels")
    write_tiff(d / "stack.tif", np.stack([image] * 3), axes="ZYX")
    cases["--axes YX on a 3-D stack"] = (
        [d / "stack.tif", "--model", model, "--axes", "YX"],
        "axes 'YX' name 2 axes but the image has 3",
    )
    np.save(d / "six.npy", np.zeros((1, 1, 1, 2, 8, 8), np.uint16))
    cases["6-D array, no --axes"] = ([d / "six.npy", "--model", model], "6-dimensional")
    inf = image.astype(np.float64)
    inf[5, 7] = np.inf
    write_tiff(d / "inf.tif", inf, axes="YX")
    cases["+inf pixel (float64)"] = ([d / "inf.tif", "--model", model], "NaN or infinite")
    good = model.read_bytes()
    (n,) = struct.unpack("<Q", good[:8])
    (d / "half.safetensors").write_bytes(good[: len(good) // 2])
    cases["truncated model (half)"] = ([d / "in.tif", "--model", d / "half.safetensors"], "corrupt")
    (d / "header.safetensors").write_bytes(good[: 8 + n])
    cases["truncated model (header only)"] = (
        [d / "in.tif", "--model", d / "header.safetensors"],
        "truncated",
    )
    _craft_model(d / "types.safetensors", {"depth": "4"})
    cases["model config of the wrong type"] = (
        [d / "in.tif", "--model", d / "types.safetensors"],
        "depth must be an integer",
    )
    _craft_model(d / "deep.safetensors", {"depth": 40, "base_channels": 10**6})
    cases["model config with absurd sizes"] = (
        [d / "in.tif", "--model", d / "deep.safetensors"],
        "must be between",
    )
    write_tiff(d / "in.tif", image, axes="YX")
    return cases


SEGMENT_CASES = [
    "empty TIFF (0 x 64)",
    "empty stack (3 x 0 x 64 .npy)",
    "1-D array",
    "strings, not numbers",
    "RGBA TIFF, gray model",
    "--axes YX on a 3-D stack",
    "6-D array, no --axes",
    "+inf pixel (float64)",
    "truncated model (half)",
    "truncated model (header only)",
    "model config of the wrong type",
    "model config with absurd sizes",
]


@pytest.fixture(scope="module")
def segment_cases(tmp_path_factory, cells, saved_threshold_model):
    d = tmp_path_factory.mktemp("bad_segment_inputs")
    return _segment_cases(d, cells.image, saved_threshold_model)


def test_segment_cases_are_all_listed(segment_cases):
    assert sorted(segment_cases) == sorted(SEGMENT_CASES)


@pytest.mark.parametrize("case", SEGMENT_CASES)
def test_segment_refuses_with_one_line(case, segment_cases, out_dir, capsys):
    args, needle = segment_cases[case]
    out, prob = out_dir / "labels.tif", out_dir / "prob.tif"
    result = run(["segment", args[0], "-o", out, "--probabilities", prob, *args[1:]], capsys)
    assert_refused(result, "segment", needle, out_dir)


# -- hostile model files: no huge allocation ---------------------------------------------------
@pytest.fixture
def no_real_networks(monkeypatch):
    """Fail (AssertionError) if a network is allocated anywhere but PyTorch's meta device."""
    real = model_pkg.UNet

    def guarded(config=None, **kwargs):
        if torch.get_default_device().type != "meta":
            raise AssertionError("a network was allocated before the file's weights were checked")
        return real(config, **kwargs)

    monkeypatch.setattr(model_pkg, "UNet", guarded)


HUGE = {"depth": 7, "base_channels": 256}  # within the config bounds; ~60 GB of weights


def _huge_header_file(path: Path) -> Path:
    """Every weight of the HUGE network declared with its right shape, but no data."""
    header = {
        "__metadata__": {
            "format": "napari-tessera",
            "format_version": "1",
            "config": json.dumps(HUGE),
            "metadata": "{}",
        }
    }
    off = 0
    for k, shape in expected_shapes(UNetConfig(**HUGE)).items():
        nbytes = 4 * int(np.prod(shape, dtype=np.int64))
        header[k] = {"dtype": "F32", "shape": list(shape), "data_offsets": [off, off + nbytes]}
        off += nbytes
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    return path


def test_expected_shapes_cost_no_memory_and_match_a_real_network():
    cfg = UNetConfig(depth=2, base_channels=4, n_classes=3)
    real = {k: tuple(v.shape) for k, v in UNet(cfg).state_dict().items()}
    assert expected_shapes(cfg) == real
    shapes = expected_shapes(UNetConfig(**HUGE))  # would be ~60 GB if allocated
    n = sum(int(np.prod(s, dtype=np.int64)) for s in shapes.values())
    assert n > 10**10


@pytest.mark.usefixtures("no_real_networks")
def test_valid_but_huge_config_with_wrong_weights_is_refused_unallocated(tmp_path):
    path = _craft_model(tmp_path / "huge.safetensors", HUGE)
    assert read_model_info(path)[0].depth == 7  # a config within the bounds
    with pytest.raises(ModelFileError, match="do not match"):
        load_model(path)


@pytest.mark.usefixtures("no_real_networks")
def test_huge_weights_declared_without_data_are_refused_unallocated(tmp_path):
    path = _huge_header_file(tmp_path / "huge.safetensors")
    assert path.stat().st_size < 100_000
    with pytest.raises(ModelFileError, match="truncated"):
        load_model(path)


@pytest.mark.usefixtures("no_real_networks")
@pytest.mark.parametrize("kind", ["wrong weights", "no data"])
def test_segment_with_a_huge_model_file_is_refused(segment_cases, tmp_path, out_dir, capsys, kind):
    if kind == "wrong weights":
        model = _craft_model(tmp_path / "huge.safetensors", HUGE)
    else:
        model = _huge_header_file(tmp_path / "huge.safetensors")
    image = segment_cases["truncated model (half)"][0][0]
    result = run(["segment", image, "-o", out_dir / "l.tif", "--model", model], capsys)
    assert_refused(result, "segment", "huge.safetensors", out_dir)


# -- hostile image files: no huge allocation ---------------------------------------------------
HOSTILE = (200_000, 200_000)  # float32: 149 GiB declared, 1 kB of data


def _hostile_npy(path: Path) -> Path:
    with open(path, "wb") as f:
        header = {"descr": "<f4", "fortran_order": False, "shape": HOSTILE}
        np.lib.format.write_array_header_1_0(f, header)
        f.write(bytes(1024))
    return path


def _hostile_tiff(path: Path, rows: int = 1000) -> Path:
    """A float32 TIFF whose header declares HOSTILE pixels in uncompressed strips, then 1 kB."""
    h, w = HOSTILE
    n, strip = -(-h // rows), rows * w * 4
    arrays = 8 + 2 + 10 * 12 + 4  # after the header and the one IFD
    tags = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 1, 32), (259, 3, 1, 1), (262, 3, 1, 1)]
    tags += [(273, 4, n, arrays), (277, 3, 1, 1), (278, 4, 1, rows), (279, 4, n, arrays + 4 * n)]
    tags += [(339, 3, 1, 3)]  # sample format: float
    ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", *t) for t in tags)
    offsets = struct.pack(f"<{n}I", *[arrays + 8 * n] * n)
    counts = struct.pack(f"<{n}I", *[strip] * n)
    path.write_bytes(b"II" + struct.pack("<HI", 42, 8) + ifd + b"\0" * 4 + offsets + counts)
    with open(path, "ab") as f:
        f.write(bytes(1024))
    return path


def _truncated_tiff(path: Path) -> Path:
    """A valid (uncompressed) TIFF stack cut to a third of its size."""
    stack = np.arange(4 * 128 * 128, dtype=np.uint16).reshape(4, 128, 128)
    tifffile.imwrite(path, stack, metadata={"axes": "ZYX"})
    os.truncate(path, path.stat().st_size // 3)
    return path


HOSTILE_IMAGES = {
    "npy header 200000x200000 float32, 1 kB of data": ("huge.npy", _hostile_npy),
    "TIFF header 200000x200000 float32, 1 kB of data": ("huge.tif", _hostile_tiff),
    "TIFF cut to a third": ("cut.tif", _truncated_tiff),
}


@pytest.mark.parametrize("output", ["labels.tif", "labels.zarr"])
@pytest.mark.parametrize("case", list(HOSTILE_IMAGES))
def test_an_image_whose_data_is_not_in_the_file_is_refused_unallocated(
    case, output, saved_threshold_model, tmp_path, out_dir, capsys
):
    name, make = HOSTILE_IMAGES[case]
    image = make(tmp_path / name)
    assert image.stat().st_size < 100_000
    argv = ["segment", image, "-o", out_dir / output, "--model", saved_threshold_model]
    line = assert_refused(run(argv, capsys), "segment", "truncated", out_dir)
    assert name in line
    if case.startswith(("npy", "TIFF header")):
        assert "200000x200000 float32" in line


def test_a_zarr_larger_than_memory_is_read_lazily_but_not_whole(
    saved_threshold_model, tmp_path, out_dir, capsys
):
    import zarr

    from napari_tessera.images import open_image

    side = 2_000_000  # 14.6 TiB of float32 declared, no chunk written
    path = tmp_path / "vast.zarr"
    zarr.open_array(str(path), mode="w", shape=(side, side), chunks=(1024, 1024), dtype="f4")
    lazy, _ = open_image(path)  # lazily: fine, each chunk fits
    assert lazy.shape == (side, side)
    argv = ["segment", path, "-o", out_dir / "labels.tif", "--model", saved_threshold_model]
    line = assert_refused(run(argv, capsys), "segment", "memory", out_dir)
    assert "vast.zarr" in line and f"{side}x{side} float32" in line and ".zarr output" in line
    one = tmp_path / "one_chunk.zarr"  # a single chunk of 14.6 TiB: cannot be read even lazily
    zarr.open_array(str(one), mode="w", shape=(side, side), chunks=(side, side), dtype="f4")
    argv[1], argv[3] = one, out_dir / "labels.zarr"
    assert_refused(run(argv, capsys), "segment", "one_chunk.zarr", out_dir)


def _checkpoint(path: Path, config: dict, tensors: dict, state: str) -> Path:
    return _craft_model(path, config, tensors, kind="napari-tessera-checkpoint", state=state)


@pytest.fixture(scope="module")
def train_files(tmp_path_factory, cells):
    d = tmp_path_factory.mktemp("train_inputs")
    lab = np.where(cells.labels > 0, 2, 1).astype(np.uint8)
    lab[::2] = 0  # sparse: half the rows not annotated
    write_tiff(d / "img.tif", cells.image, axes="YX")
    write_tiff(d / "lab.tif", lab, axes="YX")
    return d / "img.tif", d / "lab.tif"


@pytest.mark.usefixtures("no_real_networks")
def test_resume_from_a_hostile_checkpoint_is_refused_unallocated(
    train_files, tmp_path, out_dir, capsys
):
    ckpt = _checkpoint(tmp_path / "evil.ckpt.safetensors", HUGE, {"model.w": torch.zeros(1)}, "{}")
    img, lab = train_files
    args = ["train", img, lab, "-o", out_dir / "m.safetensors", "--resume", ckpt, *TINY]
    assert_refused(run(args, capsys), "train", "do not match", out_dir)


@pytest.mark.parametrize("state", ["[1, 2]", "{}", '{"step": "x"}'])
def test_checkpoint_with_a_bad_state_is_refused(train_files, tmp_path, out_dir, capsys, state):
    cfg = UNetConfig(depth=2, base_channels=4)
    weights = {f"model.{k}": v for k, v in UNet(cfg).state_dict().items()}
    ckpt = _checkpoint(tmp_path / "odd.ckpt.safetensors", cfg.to_dict(), weights, state)
    img, lab = train_files
    args = ["train", img, lab, "-o", out_dir / "m.safetensors", "--resume", ckpt, *TINY]
    assert_refused(run(args, capsys), "train", "not a readable checkpoint", out_dir)


# -- tessera train: refusals -------------------------------------------------------------------
def test_train_refuses_an_empty_image(tmp_path, out_dir, capsys):
    np.save(tmp_path / "img.npy", np.zeros((0, SIDE), np.uint16))
    np.save(tmp_path / "lab.npy", np.zeros((0, SIDE), np.uint8))
    args = ["train", tmp_path / "img.npy", tmp_path / "lab.npy", "-o", out_dir / "m.safetensors"]
    assert_refused(run([*args, *TINY], capsys), "train", "empty", out_dir)


@pytest.mark.parametrize(
    "labels, needle",
    [("text", "lab.tif is not a readable TIFF"), ("strings", "labels must be integers")],
)
def test_train_refuses_labels_that_are_not_label_images(
    train_files, tmp_path, out_dir, capsys, labels, needle
):
    if labels == "text":
        path = tmp_path / "lab.tif"
        path.write_text("1 2 1 2\n")
    else:
        path = tmp_path / "lab.npy"
        np.save(path, np.full((SIDE, SIDE), "2"))
    args = ["train", train_files[0], path, "-o", out_dir / "m.safetensors", *TINY]
    assert_refused(run(args, capsys), "train", needle, out_dir)


# -- tessera segment: pixel types that work ----------------------------------------------------
def _segment_file(path: Path, model: Path, out: Path, capsys, *extra) -> tuple[np.ndarray, str]:
    code, _, err = run(["segment", path, "-o", out, "--model", model, *extra], capsys)
    assert code == 0, err
    assert "Traceback" not in err
    return read_image(out)[0], err


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_int64_float64_and_negative_images_give_the_uint16_labels(
    cells, saved_threshold_model, tmp_path, capsys
):
    ref_path = write_tiff(tmp_path / "u16.tif", cells.image, axes="YX")
    ref, _ = _segment_file(ref_path, saved_threshold_model, tmp_path / "ref.tif", capsys, "-q")
    assert _iou(ref, cells.labels) > 0.7  # sensible labels to compare against
    variants = {
        "int64": cells.image.astype(np.int64),
        "int64, negative values": cells.image.astype(np.int64) - 30_000,
        "float64": cells.image.astype(np.float64),
    }
    for name, arr in variants.items():
        path = write_tiff(tmp_path / "in.tif", arr, axes="YX")
        assert read_image(path)[0].dtype == arr.dtype
        got, _ = _segment_file(path, saved_threshold_model, tmp_path / "out.tif", capsys, "-q")
        np.testing.assert_array_equal(got, ref, err_msg=name)


def test_bool_image_gives_the_labels_of_its_0_255_version(
    cells, saved_threshold_model, tmp_path, capsys
):
    mask = cells.labels > 0
    assert 0.05 < mask.mean() < 0.9
    bool_path = write_tiff(tmp_path / "mask.tif", mask, axes="YX")
    assert read_image(bool_path)[0].dtype == bool
    u8_path = write_tiff(tmp_path / "mask_u8.tif", mask.astype(np.uint8) * 255, axes="YX")
    got, _ = _segment_file(bool_path, saved_threshold_model, tmp_path / "a.tif", capsys, "-q")
    want, _ = _segment_file(u8_path, saved_threshold_model, tmp_path / "b.tif", capsys, "-q")
    np.testing.assert_array_equal(got, want)
    assert _iou(got, mask) > 0.95  # the thresholding model finds the mask again


@pytest.mark.parametrize("quiet", [False, True])
def test_constant_image_is_segmented_with_a_warning(saved_threshold_model, tmp_path, capsys, quiet):
    path = write_tiff(tmp_path / "flat.tif", np.full((SIDE, 48), 700, np.uint16), axes="YX")
    extra = ["-q"] if quiet else []
    labels, err = _segment_file(path, saved_threshold_model, tmp_path / "l.tif", capsys, *extra)
    assert "tessera: flat.tif is constant (every pixel is 700)" in err
    assert labels.shape == (SIDE, 48)
    assert not labels.any()  # one label everywhere: background for this model
    # the warning is only for constant images
    varied = write_tiff(tmp_path / "varied.tif", np.arange(SIDE * 48).reshape(SIDE, 48), axes="YX")
    _, err = _segment_file(varied, saved_threshold_model, tmp_path / "v.tif", capsys, *extra)
    assert "is constant" not in err


# -- repeatability -----------------------------------------------------------------------------
def test_inference_is_deterministic(cells, tmp_path, capsys):
    model = _tiny_model_file(tmp_path / "m.safetensors")
    img = write_tiff(tmp_path / "img.tif", cells.image, axes="YX")
    runs = []
    for k in range(2):
        lab, prob = tmp_path / f"l{k}.tif", tmp_path / f"p{k}.tif"
        args = ["--probabilities", prob, "--tile-size", "80", "--batch-size", "3", "-q"]
        _segment_file(img, model, lab, capsys, *args)
        runs.append((read_image(lab)[0], read_image(prob)[0]))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])  # bit for bit, not just close
    net = load_model(model)
    a = predict_tiled(net, cells.image, tile_size=80, batch_size=2, device="cpu")
    b = predict_tiled(net, cells.image, tile_size=80, batch_size=2, device="cpu")
    np.testing.assert_array_equal(a, b)


# -- interruptions of tessera train ------------------------------------------------------------
def _signal_on_training_step(monkeypatch, step: int, *signals: int) -> None:
    """Send ``signals`` to this process from inside the forward pass of training step ``step``."""
    plain = UNet.forward
    seen = {"n": 0}

    def forward(self, x):
        if self.training and torch.is_grad_enabled():
            seen["n"] += 1
            if seen["n"] == step:
                for sig in signals:
                    os.kill(os.getpid(), sig)  # the CLI's handler runs at once, in this thread
        return plain(self, x)

    monkeypatch.setattr(UNet, "forward", forward)


def test_ctrl_c_during_training_keeps_the_best_model_and_can_resume(
    train_files, tmp_path, capsys, monkeypatch
):
    img, lab = train_files
    model = tmp_path / "m.safetensors"
    ckpt = tmp_path / "m.ckpt.safetensors"
    before = signal.getsignal(signal.SIGINT)
    _signal_on_training_step(monkeypatch, 3, signal.SIGINT)
    code, _, err = run(["train", img, lab, "-o", model, "--steps", "20", *TINY], capsys)
    assert code == 0, err
    assert "stopping after this step" in err and "Traceback" not in err
    assert signal.getsignal(signal.SIGINT) == before  # handler restored
    _, meta = read_model_info(model)
    assert meta["provenance"]["stopped"] == "requested"
    assert meta["provenance"]["steps"] == 3
    assert ckpt.is_file()
    assert not [p.name for p in tmp_path.iterdir() if ".part" in p.name]

    monkeypatch.undo()
    code, _, err = run(
        ["train", img, lab, "-o", model, "--steps", "5", "--resume", ckpt, *TINY], capsys
    )
    assert code == 0, err
    _, meta = read_model_info(model)
    assert meta["provenance"]["steps"] == 5 and meta["provenance"]["stopped"] == "steps"


def test_second_sigterm_aborts_training_without_output(train_files, tmp_path, capsys, monkeypatch):
    img, lab = train_files
    out = tmp_path / "out"
    out.mkdir()
    _signal_on_training_step(monkeypatch, 3, signal.SIGTERM, signal.SIGTERM)
    code, _, err = run(
        ["train", img, lab, "-o", out / "m.safetensors", "--steps", "20", *TINY], capsys
    )
    assert code == 130, err
    assert "interrupted; no partial output left behind" in err and "Traceback" not in err
    assert not (out / "m.safetensors").exists()
    assert not [p.name for p in out.iterdir() if ".part" in p.name]


# -- property: exact tiling equals one whole-image pass ----------------------------------------
@pytest.fixture(scope="module")
def loud_nets():
    """Tiny networks whose deep levels matter (Kaiming weights, identity BatchNorm)."""
    nets = {}
    for depth in (1, 2, 3):
        torch.manual_seed(depth)
        net = UNet(UNetConfig(depth=depth, base_channels=2, n_classes=3))
        with torch.no_grad():
            for mod in net.modules():
                if isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d)):
                    nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
                elif isinstance(mod, nn.BatchNorm2d):
                    mod.running_mean.zero_()
                    mod.running_var.fill_(1.0)
        nets[depth] = net.eval()
    return nets


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    h=st.integers(1, 90),
    w=st.integers(1, 90),
    depth=st.sampled_from([1, 2, 3]),
    cores=st.tuples(st.integers(1, 5), st.integers(1, 5)),
    batch=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_property_exact_tiling_equals_whole_image_pass(loud_nets, h, w, depth, cores, batch, seed):
    net = loud_nets[depth]
    m = net.size_multiple
    halo = round_up(net.exact_halo(), m)
    tile = (2 * halo + cores[0] * m, 2 * halo + cores[1] * m)
    image = np.random.default_rng(seed).random((h, w), dtype=np.float32)
    tiled = predict_tiled(net, image, tile_size=tile, halo="exact", batch_size=batch, device="cpu")
    assert tiled.shape == (3, h, w) and np.isfinite(tiled).all()
    np.testing.assert_allclose(tiled, predict_whole(net, image), atol=1e-5, rtol=0)
