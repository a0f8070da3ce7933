"""Axis strings, slice layouts and intensity normalisation."""

from __future__ import annotations

import numpy as np
import pytest

from napari_tessera import InputError, Normalization
from napari_tessera.axes import guess_axes, layout, normalize_axes
from napari_tessera.normalize import normalize_slice


@pytest.mark.parametrize(
    "shape, axes, lead, channels, out_shape",
    [
        ((10, 12), "YX", "", 1, (10, 12)),
        ((3, 10, 12), "ZYX", "Z", 1, (3, 10, 12)),
        ((2, 10, 12), "CYX", "", 2, (10, 12)),
        ((4, 2, 10, 12), "ZCYX", "Z", 2, (4, 10, 12)),
        ((10, 12, 3), "YXC", "", 3, (10, 12)),
        ((5, 4, 2, 10, 12), "TZCYX", "TZ", 2, (5, 4, 10, 12)),
        ((10, 12, 2), "yxs", "", 2, (10, 12)),
        ((10, 3, 12), "YZX", "Z", 1, (3, 10, 12)),
    ],
)
def test_layout(shape, axes, lead, channels, out_shape):
    lay = layout(shape, axes)
    assert lay.lead_axes == lead and lay.channels == channels
    assert lay.out_shape == out_shape and lay.yx == (10, 12)
    assert lay.n_slices == int(np.prod(out_shape[:-2]))
    image = np.arange(np.prod(shape)).reshape(shape)
    axes_n = normalize_axes(axes)
    seen = []
    for s in range(lay.n_slices):
        view = lay.slice_view(image, s)
        assert view.shape == (channels, 10, 12)
        seen.append(view)
    # every pixel of the image appears in exactly one slice
    values = np.concatenate([v.ravel() for v in seen])
    assert sorted(values) == list(range(image.size))
    # Y and X are not swapped: neighbours along X differ by the stride of X
    stride_x = image.strides[axes_n.index("X")] // image.itemsize
    assert (np.diff(seen[0][0], axis=1) == stride_x).all()


@pytest.mark.parametrize(
    "shape, axes",
    [((10, 12), "ZYX"), ((10, 12), "YY"), ((10, 12), "AB"), ((3, 10, 12), "ZCY"), ((0, 5), "YX")],
)
def test_layout_errors(shape, axes):
    with pytest.raises(InputError):
        layout(shape, axes)


@pytest.mark.parametrize(
    "shape, in_channels, expected",
    [
        ((64, 64), 1, "YX"),
        ((5, 64, 64), 1, "ZYX"),
        ((64, 64, 3), 1, "YXC"),
        ((2, 64, 64), 2, "CYX"),
        ((10, 64, 64, 3), 1, "ZYXC"),
        ((10, 2, 64, 64), 2, "ZCYX"),
        ((2, 3, 2, 64, 64), 2, "TZCYX"),
    ],
)
def test_guess_axes(shape, in_channels, expected):
    assert guess_axes(shape, in_channels) == expected
    layout(shape, expected)  # a guess always fits the shape


def test_guess_axes_gives_up_on_6d():
    with pytest.raises(InputError):
        guess_axes((1, 2, 3, 4, 5, 6))


def test_normalize_slice_percentiles_per_channel():
    rng = np.random.default_rng(0)
    data = np.stack([rng.random((50, 60)), 1000 + 500 * rng.random((50, 60))]).astype(np.float32)
    out = normalize_slice(data, Normalization(1.0, 99.0))
    assert out.dtype == np.float32 and out.shape == data.shape
    for c in range(2):
        lo, hi = np.percentile(out[c], [1, 99])
        assert abs(lo) < 1e-3 and abs(hi - 1) < 1e-3
    assert data[1].min() >= 1000  # the input is not modified in place


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float64, bool])
def test_normalize_constant_and_integer_inputs(dtype):
    out = normalize_slice(np.full((1, 9, 7), 3).astype(dtype), Normalization())
    assert out.dtype == np.float32 and np.isfinite(out).all() and not out.any()


def test_normalize_rejects_nan_and_non_numbers():
    bad = np.zeros((1, 4, 4), np.float32)
    bad[0, 1, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        normalize_slice(bad, Normalization())
    with pytest.raises(InputError):
        normalize_slice(np.zeros((1, 4, 4), complex), Normalization())


AXES_TABLE = [  # shape, model channels, the one guess
    ((64, 64), 1, "YX"),
    ((5, 64, 64), 1, "ZYX"),
    ((2, 64, 64), 2, "CYX"),
    ((3, 64, 64), 1, "ZYX"),
    ((10, 64, 64), 3, "ZYX"),
    ((10, 2, 64, 64), 2, "ZCYX"),
    ((2, 10, 64, 64), 2, "CZYX"),
    ((10, 3, 64, 64), 1, "ZCYX"),  # a 3-channel stack: channels must be picked, not sliced
    ((10, 12, 64, 64), 1, "TZYX"),
    ((2, 3, 2, 64, 64), 2, "TZCYX"),
]


@pytest.mark.parametrize("shape, in_channels, expected", AXES_TABLE)
def test_cli_widget_and_python_guess_the_same_axes(shape, in_channels, expected):
    """One rule: the CLI's guess for a file, the widget's for a (non-RGB) layer and Python's
    ``guess_axes`` agree; where the guess has more channels than the model reads, all three
    refuse in the same way (the image's channels are named)."""
    napari_layers = pytest.importorskip("napari.layers")
    from napari_tessera._widgets._common import image_input
    from napari_tessera.cli._common import resolve_axes
    from napari_tessera.config import UNetConfig
    from napari_tessera.inference import check_channels, image_layout
    from napari_tessera.model import UNet

    data = np.zeros(shape, np.float32)
    cli_axes, _ = resolve_axes(data, None, None, in_channels, quiet=True)
    assert guess_axes(shape, in_channels) == cli_axes == expected
    model = UNet(UNetConfig(in_channels=in_channels, base_channels=4, depth=2))
    layer = napari_layers.Image(data, name="img")
    fits = layout(shape, expected).image_channels == in_channels
    if fits:
        assert image_input(layer, in_channels, "auto").axes == expected
        check_channels(model, image_layout(model, data, cli_axes))  # the CLI runs it too
    else:
        with pytest.raises(InputError, match="channel") as widget_err:
            image_input(layer, in_channels, "auto")
        with pytest.raises(InputError, match="channel") as core_err:
            check_channels(model, image_layout(model, data, cli_axes))
        assert str(widget_err.value) == f"img: {core_err.value}"
