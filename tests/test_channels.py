"""Choosing the image channels the network reads (``--channels 1``, ``--channels 1,0``): in the
layout, segmenting, training (stored with the model), the CLI, zarr runs and the widgets."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from _helpers import ReadRecorder, nonempty_lines, run, stain_rgb
from napari_tessera import segment
from napari_tessera.axes import layout, parse_channels
from napari_tessera.chunked import segment_to_zarr
from napari_tessera.errors import InputError, ModelFileError
from napari_tessera.inference import predict_tiled
from napari_tessera.io import load_model, save_model
from napari_tessera.rgb import rgb_channels
from napari_tessera.synthetic import nuclei_2d
from napari_tessera.training import TrainConfig, train


@pytest.fixture(scope="module")
def rgb():
    """An RGB image whose green channel holds nuclei, red a dim copy, blue noise."""
    s = nuclei_2d((96, 96), seed=3)
    g = s.image.astype(np.float32)
    rng = np.random.default_rng(0)
    img = np.stack([0.3 * g[::-1], g, rng.random(g.shape) * g.max()], -1).astype(np.float32)
    return img, s.labels


def test_parse_and_layout_pick_channels_in_order():
    assert parse_channels("1") == (1,) and parse_channels("1, 0") == (1, 0)
    assert parse_channels("all") is None and parse_channels(None) is None
    assert parse_channels([2, 0]) == (2, 0)
    for bad in ("a", "-1", "1,,2", ""):
        if bad:
            with pytest.raises(InputError, match="channel numbers"):
                parse_channels(bad)
    img = np.arange(2 * 3 * 4 * 5).reshape(2, 4, 5, 3)  # ZYXC
    lay = layout(img.shape, "ZYXC", "2,0")
    assert lay.channels == 2 and lay.image_channels == 3
    np.testing.assert_array_equal(lay.slice_view(img, 1), np.moveaxis(img[1], -1, 0)[[2, 0]])
    with pytest.raises(InputError, match="channel 3 does not exist: the image has channels 0-2"):
        layout(img.shape, "ZYXC", "3")
    with pytest.raises(InputError, match="one channel"):
        layout((5, 5), "YX", "1")


def test_predicting_a_picked_channel_equals_predicting_that_channel(threshold_unet, rgb):
    model = threshold_unet()
    img, _ = rgb
    green = predict_tiled(model, img[..., 1], device="cpu", halo="exact")
    picked = predict_tiled(model, img, axes="YXC", channels=(1,), device="cpu", halo="exact")
    np.testing.assert_array_equal(picked, green)
    red = predict_tiled(model, img, axes="YXC", channels="0", device="cpu", halo="exact")
    assert not np.array_equal(red, green)  # it does read the channel asked for
    with pytest.raises(InputError, match=r"reads 1 channel\(s\) but the image has 3.*choose 1"):
        predict_tiled(model, img, axes="YXC", device="cpu")
    with pytest.raises(InputError, match=r"reads 1 channel\(s\) but 2 are chosen"):
        predict_tiled(model, img, axes="YXC", channels="1,0", device="cpu")


def test_training_stores_its_channels_and_segmenting_reads_them(rgb, tmp_path):
    img, truth = rgb
    lab = np.where(truth > 0, 2, 0).astype(np.int64)
    lab[:, :8] = np.where(truth[:, :8] == 0, 1, lab[:, :8])
    cfg = TrainConfig(
        steps=3, base_channels=4, depth=2, patch_size=32, batch_size=2, device="cpu",
        channels="1,0", calibrate_edges=False,
    )  # fmt: skip
    res = train(img, lab, axes="YXC", config=cfg)
    assert res.model.config.in_channels == 2
    assert res.model.metadata["channels"] == [1, 0]
    path = save_model(res.model, tmp_path / "m.safetensors")
    model = load_model(path)
    two = np.stack([img[..., 1], img[..., 0]])  # what the model was trained to read
    expected = segment(model, two, axes="CYX", device="cpu", instances=True)
    np.testing.assert_array_equal(
        segment(model, img, axes="YXC", device="cpu", instances=True), expected
    )
    # zarr runs read them too
    out = segment_to_zarr(model, img, tmp_path / "l.zarr", axes="YXC", instances=True)
    import zarr

    np.testing.assert_array_equal(zarr.open_array(str(out), mode="r")[:], expected)
    # an image with exactly the model's channel count is read as it is
    np.testing.assert_array_equal(
        segment(model, two, axes="CYX", device="cpu", instances=True), expected
    )


def test_a_bad_stored_channel_list_is_refused(threshold_unet, tmp_path):
    model = threshold_unet()
    for bad in ([1, 0], ["1"], [-1], 3):
        model.metadata = {"channels": bad}
        path = save_model(model, tmp_path / "bad.safetensors")
        with pytest.raises(ModelFileError, match="its channels must be 1 channel number"):
            load_model(path)


def test_cli_channels_for_an_rgb_image(saved_threshold_model, rgb, tmp_path, capsys):
    img, _ = rgb
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, img[..., :3])
    out = tmp_path / "l.tif"
    base = ["segment", path, "-o", out, "--model", saved_threshold_model, "--axes", "YXC"]
    code, _, err = run([*base, "-q"], capsys)  # signal in every colour: the user chooses
    assert code == 2 and len(nonempty_lines(err)) == 1
    assert "rgb.tif is RGB with signal in several channels (red, green and blue)" in err
    assert "choose one with channels, e.g. 0 for red" in err
    code, _, err = run([*base, "--channels", "1", "-q"], capsys)
    assert code == 0, err
    model = load_model(saved_threshold_model)
    expected = segment(model, img[..., 1], device="cpu")
    np.testing.assert_array_equal(tifffile.imread(out), expected)
    code, _, err = run([*base, "--channels", "5", "-q"], capsys)
    assert code == 2 and "channel 5 does not exist" in err and len(nonempty_lines(err)) == 1
    code, _, err = run([*base, "--channels", "x", "-q"], capsys)
    assert code == 2 and "channel numbers" in err


# -- RGB(A) images with no channels chosen: one rule for the CLI and the widgets -----------------
def _planes(*planes):
    """A channels-last image of 16x16 planes: a number is a constant plane, "s" signal."""
    ramp = np.arange(256, dtype=np.float32).reshape(16, 16)
    return np.stack([ramp if p == "s" else np.full((16, 16), p, np.float32) for p in planes], -1)


ONLY = "reading channel {c} ({name}), the only one with signal; set channels to choose"
RGB_RULE = [
    # image, axes, model channels (None: a new model) -> channels read or an error, the note
    ("green only", _planes(0, "s", 0), "YXC", 1, (1,), ONLY.format(c=1, name="green")),
    ("red only, others flat", _planes("s", 7, 255), "YXC", 1, (0,), ONLY.format(c=0, name="red")),
    ("blue, alpha varies", _planes(0, 0, "s", "s"), "YXC", 1, (2,), ONLY.format(c=2, name="blue")),
    ("two stains", _planes("s", "s", 0), "YXC", 1,
     r"x.tif is RGB with signal in several channels \(red and green\) but the model reads 1: "
     r"choose one with channels, e.g. 0 for red", None),
    ("three stains, RGBA", _planes(0, "s", "s", 255), "YXC", 1,
     r"RGBA with signal in several channels \(green and blue\).*e.g. 1 for green", None),
    ("no signal", _planes(3, 3, 3), "YXC", 1, r"no signal.*choose one with channels", None),
    ("2-channel model", _planes("s", "s", "s"), "YXC", 2, r"reads 2 channels: choose 2.*0,1", None),
    ("3-channel model, RGB", _planes("s", 0, 0), "YXC", 3, None, None),
    ("3-channel model, RGBA", _planes("s", 0, 0, 255), "YXC", 3, (0, 1, 2),
     "reading red, green and blue, not alpha; set channels to choose"),
    ("new model, RGBA", _planes("s", "s", 0, 9), "YXC", None, (0, 1, 2),
     "reading red, green and blue, not alpha; set channels to choose"),
    ("new model, RGB", _planes("s", "s", 0), "YXC", None, None, None),
    ("4-channel model, RGBA", _planes("s", "s", 0, 9), "YXC", 4, None, None),
    ("channels first: not RGB", np.moveaxis(_planes(0, "s", 0), -1, 0), "CYX", 1, None, None),
    ("stack, blue in one slice", np.stack([_planes(0, 0, 0), _planes(0, 0, "s")]), "ZYXC", 1,
     (2,), ONLY.format(c=2, name="blue")),
]  # fmt: skip


@pytest.mark.parametrize(
    ("image", "axes", "in_channels", "reads", "note"),
    [case[1:] for case in RGB_RULE],
    ids=[case[0] for case in RGB_RULE],
)
def test_rgb_rule(image, axes, in_channels, reads, note):
    if isinstance(reads, str):
        with pytest.raises(InputError, match=reads):
            rgb_channels(image, axes, in_channels, "x.tif")
        return
    got = rgb_channels(image, axes, in_channels, "x.tif")
    assert got.take == reads
    assert got.note == (f"x.tif: {note}" if note else None)


def test_rgb_rule_reads_a_block_at_a_time_and_stops_at_two_stains(monkeypatch):
    import napari_tessera.rgb as rgb_mod

    monkeypatch.setattr(rgb_mod, "BLOCK", 16 * 3 * 4)  # 4 rows of 16 pixels
    both = ReadRecorder(np.stack([_planes("s", "s", 0)] * 3))  # (3, 16, 16, 3)
    with pytest.raises(InputError, match="several"):
        rgb_mod.rgb_channels(both, "ZYXC", 1)
    assert both.reads == [(4, 16, 3)]  # the first block shows two stains
    one = ReadRecorder(np.stack([_planes(0, "s", 0)] * 3))
    assert rgb_mod.rgb_channels(one, "ZYXC", 1).take == (1,)
    assert len(one.reads) == 12 and set(one.reads) == {(4, 16, 3)}  # all of it, by blocks


def test_cli_segment_and_train_follow_the_rgb_rule(saved_threshold_model, tmp_path, capsys):
    """The images of the widget test (tests/test_widgets.py::test_rgb_rule_in_the_widgets):
    the same note, channel and labels; the same error."""
    green, two = stain_rgb(1), stain_rgb(0, 1)
    tifffile.imwrite(tmp_path / "green.tif", green, photometric="rgb")
    tifffile.imwrite(tmp_path / "two.tif", two, photometric="rgb")
    model = load_model(saved_threshold_model)
    note = rgb_channels(green, "YXC", 1, "green.tif").note
    assert note == (
        "green.tif: reading channel 1 (green), the only one with signal; set channels to choose"
    )
    out = tmp_path / "l.tif"
    base = ["--model", saved_threshold_model, "--instances"]
    code, _, err = run(["segment", tmp_path / "green.tif", "-o", out, *base, "-q"], capsys)
    assert code == 0, err
    assert f"tessera: {note}" in nonempty_lines(err)  # said even with --quiet: a guess
    expected = segment(model, green[..., 1], device="cpu", instances=True)
    np.testing.assert_array_equal(tifffile.imread(out), expected)
    code, _, err = run(["segment", tmp_path / "two.tif", "-o", out, *base], capsys)
    assert code == 2 and len(nonempty_lines(err)) == 1
    assert (
        "two.tif is RGB with signal in several channels (red and green) but the model reads 1: "
        "choose one with channels, e.g. 0 for red" in err
    )
    # a zarr output reads the same channel
    code, _, err = run(
        ["segment", tmp_path / "green.tif", "-o", tmp_path / "l.zarr", *base], capsys
    )
    assert code == 0 and f"tessera: {note}" in nonempty_lines(err), err
    import zarr

    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "l.zarr"), mode="r")[:], expected)
    # a folder run (the Segment widget's folder runs too): each file by the rule
    images = [tmp_path / "green.tif", tmp_path / "two.tif"]
    code, _, err = run(["segment", *images, "-o", tmp_path / "out", *base, "-q"], capsys)
    assert code == 1 and f"tessera: {note}" in nonempty_lines(err)
    assert "two.tif: two.tif is RGB with signal in several channels" in err
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "green_labels.tif"), expected)
    assert not (tmp_path / "out" / "two_labels.tif").exists()
    # training: fine-tuning the 1-channel model reads the green; the choice is not stored
    lab = np.where(expected > 0, 2, 0).astype(np.uint8)
    lab[:, :6] = np.where(expected[:, :6] == 0, 1, lab[:, :6])
    tifffile.imwrite(tmp_path / "lab.tif", lab)
    tiny = ["--steps", "2", "--patch-size", "32", "--batch-size", "2", "--device", "cpu"]
    pair = [tmp_path / "green.tif", tmp_path / "lab.tif"]
    args = ["train", *pair, "--from", saved_threshold_model, *tiny, "--no-edge-calibration"]
    code, _, err = run([*args, "-o", tmp_path / "m.safetensors", "-q"], capsys)
    assert code == 0, err
    assert note in err
    assert "channels" not in load_model(tmp_path / "m.safetensors").metadata
    two_pair = [tmp_path / "two.tif", tmp_path / "lab.tif"]
    code, _, err = run(
        ["train", *two_pair, "--from", saved_threshold_model, *tiny, "-o", tmp_path / "n.st"],
        capsys,
    )
    assert code == 2 and "signal in several channels" in err and len(nonempty_lines(err)) == 1
    # channels chosen by the user are read and stored with the model
    code, _, err = run([*args, "--channels", "1", "-o", tmp_path / "c.safetensors", "-q"], capsys)
    assert code == 0 and note not in err, err
    assert load_model(tmp_path / "c.safetensors").metadata["channels"] == [1]
