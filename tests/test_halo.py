"""The "auto" halo: the context a network needs around a tile, measured on the image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_tessera.halo as halo_mod
from napari_tessera import ModelFileError, UNet, UNetConfig
from napari_tessera.axes import layout
from napari_tessera.halo import (
    AUTO_HALOS,
    AUTO_TOLERANCE,
    context_profile,
    describe_halo,
    measure_halo,
    probe_tile,
    read_probes,
)
from napari_tessera.inference import predict_tiled, prepare, resolve_halo
from napari_tessera.io import load_model, save_model
from napari_tessera.normalize import normalize_slice
from napari_tessera.options import SegmentOptions
from napari_tessera.synthetic import nuclei_2d
from napari_tessera.tiling import mirror_indices


@pytest.fixture(scope="module")
def builtin():
    """The trained built-in model: it needs more context than one pooling step, less than its
    receptive field (random networks hardly depend on their outer context at all)."""
    from napari_tessera.models import default_model_path

    model = load_model(default_model_path())
    model.metadata.pop("halo", None)  # measure it here
    return model


@pytest.fixture(scope="module")
def cells():
    return nuclei_2d((384, 384), seed=3).image


def count_measurements(monkeypatch) -> list:
    calls = []
    real = halo_mod.measure_halo

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(halo_mod, "measure_halo", counting)
    return calls


def test_auto_halo_keeps_seams_within_the_tolerance_and_no_smaller_halo_would(builtin, cells):
    exact = predict_tiled(builtin, cells, device="cpu", halo="exact")
    auto = predict_tiled(builtin, cells, device="cpu", tile_size=256)  # many seams
    found = AUTO_HALOS.latest(builtin)
    m, pixels = builtin.size_multiple, found.pixels
    assert m < pixels < found.exact
    # "auto" is that number of pixels
    np.testing.assert_array_equal(
        auto, predict_tiled(builtin, cells, device="cpu", tile_size=256, halo=pixels)
    )
    # what the profile promised holds over the whole image, up to what the probes missed
    assert np.abs(auto - exact).max() <= 1.5 * AUTO_TOLERANCE
    assert (auto.argmax(0) == exact.argmax(0)).mean() >= 0.9999
    # one grid step less breaks the tolerance, and a tiler ignoring the halo is far off
    less = predict_tiled(builtin, cells, device="cpu", halo=pixels - m, tile_size=256 - 2 * m)
    assert np.abs(less - exact).max() > AUTO_TOLERANCE
    none = predict_tiled(builtin, cells, device="cpu", halo=0, tile_size=128)
    assert np.abs(none - exact).max() > 0.3
    assert (none.argmax(0) == exact.argmax(0)).mean() < 0.999


def test_context_profile_falls_to_zero_at_the_receptive_field(builtin, cells):
    probes = read_probes(builtin, cells, layout(cells.shape, "YX"))
    profile = context_profile(builtin, probes)
    exact = builtin.exact_halo()
    assert len(profile) == exact + 1
    assert np.all(np.diff(profile) <= 0)  # the worst over pixels d *or more* from the edge
    assert profile[0] > 0.3  # zero padding next to a pixel changes it
    assert profile[exact] < 1e-5  # beyond the receptive field padding cannot matter
    found = measure_halo(builtin, probes)
    assert found.at(found.pixels) <= AUTO_TOLERANCE < found.at(found.pixels - builtin.size_multiple)
    assert found.describe().startswith(f"halo {found.pixels} px (auto, exact {exact} px)")


def test_a_pointwise_model_needs_one_grid_step_and_a_loud_one_many(
    threshold_unet, deep_unet, cells
):
    lay = layout(cells.shape, "YX")
    point = threshold_unet()  # each output pixel reads only its own input pixel
    found = measure_halo(point, read_probes(point, cells, lay))
    assert found.pixels == point.size_multiple  # the floor
    assert max(found.profile) < 1e-6
    loud = deep_unet(UNetConfig(base_channels=4, depth=3, n_classes=2))
    found = measure_halo(loud, read_probes(loud, cells, lay))
    assert 4 * loud.size_multiple < found.pixels <= found.exact


def test_probes_are_normalised_with_their_whole_slice_levels(builtin):
    rng = np.random.default_rng(0)
    stack = np.stack([rng.integers(0, 1000, (200, 230)) * (k + 1) for k in range(5)])
    stack = stack.astype(np.uint16)
    lay = layout(stack.shape, "ZYX")
    windows = read_probes(builtin, stack, lay)
    assert len(windows) == 3
    tile, exact = probe_tile(builtin), builtin.exact_halo()
    n = tile + 2 * exact
    # each is a mirrored window around a probe tile on the grid, normalised with the levels of
    # its whole slice (one of the first, middle and last)
    crops = []
    for s in (0, 2, 4):
        data = normalize_slice(stack[s][None], builtin.config.normalization)
        for y0 in range(0, 200, tile):
            for x0 in range(0, 230, tile):
                iy = mirror_indices(y0 - exact, y0 - exact + n, 200)
                ix = mirror_indices(x0 - exact, x0 - exact + n, 230)
                crops.append(data[:, iy][:, :, ix])
    for window in windows:
        assert any(np.allclose(window, c, atol=1e-6) for c in crops)


def test_probes_land_on_cells_not_on_empty_background(builtin):
    """A mostly empty image with cells in one corner: the probes measure the cells."""
    cells = nuclei_2d((256, 256), seed=3).image
    image = np.full((1024, 1024), np.percentile(cells, 5), np.float32)
    image += np.random.default_rng(0).normal(0, 1, image.shape).astype(np.float32)
    image[768:, :256] = cells
    lay = layout(image.shape, "YX")
    windows = read_probes(builtin, image, lay)
    exact, tile = builtin.exact_halo(), probe_tile(builtin)
    normalised = normalize_slice(image[None], builtin.config.normalization)
    cell_tile = normalised[:, 768:, :tile]
    cores = [w[:, exact : exact + tile, exact : exact + tile] for w in windows]
    assert any(np.allclose(c, cell_tile, atol=1e-6) for c in cores)  # the full tile is probed
    on_cells = measure_halo(builtin, windows)
    alone = measure_halo(builtin, read_probes(builtin, cells, layout(cells.shape, "YX")))
    assert on_cells.pixels >= alone.pixels > builtin.size_multiple


def test_a_halo_measured_on_one_image_is_not_reused_for_another(monkeypatch, builtin, cells):
    AUTO_HALOS.forget()  # nothing measured yet
    calls = count_measurements(monkeypatch)
    blank = np.random.default_rng(0).normal(100, 1, cells.shape).astype(np.float32)
    predict_tiled(builtin, blank, device="cpu")
    on_blank = AUTO_HALOS.latest(builtin).pixels
    predict_tiled(builtin, cells, device="cpu")
    assert len(calls) == 2 and AUTO_HALOS.latest(builtin).pixels > on_blank
    predict_tiled(builtin, blank, device="cpu")  # both are remembered
    assert len(calls) == 2 and AUTO_HALOS.latest(builtin).pixels == on_blank


def test_auto_halo_is_measured_once_per_set_of_weights(monkeypatch, deep_unet, cells):
    calls = count_measurements(monkeypatch)
    model = deep_unet(UNetConfig(base_channels=2, depth=2, n_classes=2))
    first = predict_tiled(model, cells, device="cpu")
    np.testing.assert_array_equal(predict_tiled(model, cells, device="cpu"), first)
    assert len(calls) == 1
    with torch.no_grad():
        model.outc.bias.add_(0.0)  # the same values: the same weights
    predict_tiled(model, cells, device="cpu")
    assert len(calls) == 1
    with torch.no_grad():  # changed in place through .data: the cached halo may not hold
        model.outc.bias.data.copy_(model.outc.bias.data + 1e-3)
    predict_tiled(model, cells, device="cpu")
    assert len(calls) == 2


def test_a_stored_halo_is_used_without_measuring(monkeypatch, deep_unet, cells, tmp_path):
    calls = count_measurements(monkeypatch)
    model = deep_unet(UNetConfig(base_channels=2, depth=2, n_classes=2))
    model.metadata["halo"] = {"pixels": 8}
    lay = layout(cells.shape, "YX")
    st = prepare(model, lay, SegmentOptions(device="cpu"), resolve_halo(model, "auto"))
    assert st.halo == 8 and not calls
    path = save_model(model, tmp_path / "m.safetensors")
    loaded = load_model(path)
    np.testing.assert_array_equal(
        predict_tiled(loaded, cells, device="cpu"),
        predict_tiled(loaded, cells, device="cpu", halo=8),
    )
    assert not calls
    assert describe_halo(loaded, "auto").startswith("halo 8 px (auto, stored with the model")
    assert describe_halo(loaded, 8) is None


@pytest.mark.parametrize("bad", [6, -4, 10_000, "8", True, None])
def test_a_bad_stored_halo_is_refused_on_load(bad, tmp_path):
    model = UNet(UNetConfig(base_channels=2, depth=2))
    model.metadata["halo"] = {"pixels": bad}
    path = save_model(model, tmp_path / "bad.safetensors")
    with pytest.raises(ModelFileError, match="bad.safetensors: the model's stored halo"):
        load_model(path)


def test_valid_padding_networks_keep_their_exact_rules():
    transpose = UNet(UNetConfig(base_channels=2, depth=2, padding="valid"))
    bilinear = UNet(UNetConfig(base_channels=2, depth=2, padding="valid", upsampling="bilinear"))
    assert resolve_halo(transpose, "auto") == 0
    assert resolve_halo(bilinear, "auto") == bilinear.exact_halo()


@pytest.mark.parametrize("halo", ["fast", -8, 2.5, True])
def test_unknown_halo_words_are_refused_where_the_settings_are_made(deep_unet, halo):
    from napari_tessera import InputError, predict_tiled

    model = deep_unet(UNetConfig(base_channels=2, depth=2))
    with pytest.raises(InputError, match="'auto', 'exact' or"):
        SegmentOptions(halo=halo)
    with pytest.raises(InputError, match="'auto', 'exact' or"):
        predict_tiled(model, np.zeros((32, 32), np.float32), halo=halo)


def test_training_probes_cover_the_painted_slices_up_to_a_cap(deep_unet):
    from napari_tessera.halo import MAX_COVER_PROBES

    model = deep_unet(UNetConfig(base_channels=2, depth=2))
    tile, exact = probe_tile(model), model.exact_halo()
    stack = np.random.default_rng(1).random((6, 2 * tile, 2 * tile)).astype(np.float32)
    stack[4] += 10.0  # a slice with levels of its own: its probes use them
    lay = layout(stack.shape, "ZYX")
    one = read_probes(model, stack, lay, slices=[4], cover=True)
    assert len(one) == 4  # 2 x 2 probe tiles side by side
    centres = [w[0, exact : exact + tile, exact : exact + tile] for w in one]
    whole = normalize_slice(stack[4][None], model.config.normalization)[0]
    for k, (y, x) in enumerate([(0, 0), (0, tile), (tile, 0), (tile, tile)]):
        np.testing.assert_allclose(centres[k], whole[y : y + tile, x : x + tile], atol=1e-6)
    many = read_probes(model, stack, lay, slices=[0, 1, 2, 3, 4, 5], cover=True)
    assert len(many) == MAX_COVER_PROBES < 6 * 4


@pytest.mark.parametrize("profile", [5, [None, 0.1], ["x"], [2.0]])
def test_a_bad_stored_profile_is_refused_on_load(profile, tmp_path):
    model = UNet(UNetConfig(base_channels=2, depth=2))
    model.metadata["halo"] = {"pixels": 4, "profile": profile}
    path = save_model(model, tmp_path / "bad.safetensors")
    with pytest.raises(ModelFileError, match="bad.safetensors: the model's stored halo profile"):
        load_model(path)
