"""Choosing the image channels the network reads (``--channels 1``, ``--channels 1,0``): in the
layout, segmenting, training (stored with the model), the CLI, zarr runs and the widgets."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from _helpers import nonempty_lines, run
from napari_tessera import segment
from napari_tessera.axes import layout, parse_channels
from napari_tessera.chunked import segment_to_zarr
from napari_tessera.errors import InputError, ModelFileError
from napari_tessera.inference import predict_tiled
from napari_tessera.io import load_model, save_model
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
    expected = segment(two, model, axes="CYX", device="cpu", instances=True)
    np.testing.assert_array_equal(
        segment(img, model, axes="YXC", device="cpu", instances=True), expected
    )
    # zarr runs read them too
    out = segment_to_zarr(model, img, tmp_path / "l.zarr", axes="YXC", instances=True)
    import zarr

    np.testing.assert_array_equal(zarr.open_array(str(out), mode="r")[:], expected)
    # an image with exactly the model's channel count is read as it is
    np.testing.assert_array_equal(
        segment(two, model, axes="CYX", device="cpu", instances=True), expected
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
    code, _, err = run([*base, "-q"], capsys)
    assert code == 2 and len(nonempty_lines(err)) == 1 and "choose 1 of them" in err
    code, _, err = run([*base, "--channels", "1", "-q"], capsys)
    assert code == 0, err
    model = load_model(saved_threshold_model)
    expected = segment(img[..., 1], model, device="cpu")
    np.testing.assert_array_equal(tifffile.imread(out), expected)
    code, _, err = run([*base, "--channels", "5", "-q"], capsys)
    assert code == 2 and "channel 5 does not exist" in err and len(nonempty_lines(err)) == 1
    code, _, err = run([*base, "--channels", "x", "-q"], capsys)
    assert code == 2 and "channel numbers" in err
