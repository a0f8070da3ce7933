"""Averaging the network's output over flips and quarter turns of each tile (``views``)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_tessera import InputError, UNetConfig
from napari_tessera.inference import predict_tiled, predict_whole, resolve_views
from napari_tessera.options import SegmentOptions

SHAPE = (77, 118)  # not square, not on the pooling grid: turned tiles have other shapes


def _turned(model, image, turns: int, mirror: bool) -> np.ndarray:
    """One whole-image pass over the image turned (and mirrored), turned back."""
    view = np.rot90(image[:, ::-1] if mirror else image, turns)
    p = np.rot90(predict_whole(model, np.ascontiguousarray(view)), -turns, axes=(1, 2))
    return p[:, :, ::-1] if mirror else p


@pytest.mark.parametrize("views", [2, 4, 8])
def test_views_average_whole_image_passes_over_turned_images(deep_unet, views):
    """With the exact halo, tiles averaged over their views equal the mean of whole-image
    passes over the turned and mirrored image, each turned back (an image on the pooling
    grid: a view of a pixel keeps its place on the grid)."""
    model = deep_unet(UNetConfig(depth=3, base_channels=4, n_classes=3))
    image = np.random.default_rng(3).random((80, 120)).astype(np.float32)
    order = [(0, False), (0, True), (2, False), (2, True), (1, False), (1, True)]
    order += [(3, False), (3, True)]
    expected = np.mean([_turned(model, image, k, m) for k, m in order[:views]], axis=0)
    m, halo = model.size_multiple, model.exact_halo()
    for tile in [(2 * halo + 2 * m, 2 * halo + 3 * m), None]:
        got = predict_tiled(model, image, device="cpu", halo="exact", tile_size=tile, views=views)
        np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=f"tile {tile}")
    # power: the network is not symmetric, so the views differ from one pass
    assert np.abs(expected - predict_whole(model, image)).max() > 1e-3


def test_views_keep_tiling_exact(deep_unet):
    """Off the pooling grid, the views of each tile still give the same result whatever the
    tile size, and each class's probabilities stay probabilities."""
    model = deep_unet(UNetConfig(depth=3, base_channels=4, n_classes=3))
    image = np.random.default_rng(6).random(SHAPE).astype(np.float32)
    m, halo = model.size_multiple, model.exact_halo()
    runs = [
        predict_tiled(model, image, device="cpu", halo="exact", tile_size=tile, views=8)
        for tile in [(2 * halo + 2 * m, 2 * halo + 3 * m), 2 * halo + 4 * m, None]
    ]
    for got in runs[1:]:
        np.testing.assert_allclose(got, runs[0], atol=1e-5)
    np.testing.assert_allclose(runs[0].sum(axis=0), 1.0, atol=1e-5)
    assert runs[0].shape == (3, *SHAPE)


def test_one_view_is_one_pass(deep_unet):
    model = deep_unet(UNetConfig(depth=3, base_channels=4, n_classes=2))
    image = np.random.default_rng(4).random(SHAPE).astype(np.float32)
    got = predict_tiled(model, image, device="cpu", halo="exact", views=1)
    np.testing.assert_allclose(got, predict_whole(model, image), atol=1e-5)


def test_a_model_trained_here_stores_its_views_and_segmenting_uses_them(deep_unet):
    model = deep_unet(UNetConfig(depth=3, base_channels=4, n_classes=2))
    image = np.random.default_rng(5).random(SHAPE).astype(np.float32)
    assert resolve_views(model, None) == 1  # a model from elsewhere: one pass
    model.metadata = {"views": 4}
    assert resolve_views(model, None) == 4 and resolve_views(model, 2) == 2
    stored = predict_tiled(model, image, device="cpu", halo="exact")
    four = predict_tiled(model, image, device="cpu", halo="exact", views=4)
    one = predict_tiled(model, image, device="cpu", halo="exact", views=1)
    np.testing.assert_array_equal(stored, four)
    assert np.abs(stored - one).max() > 1e-3
    model.metadata = {"views": 3}
    with pytest.raises(InputError, match="views must be 1, 2, 4 or 8"):
        resolve_views(model, None)


@pytest.mark.parametrize("bad", [0, 3, 16, True, 2.0, "8"])
def test_views_other_than_1_2_4_8_are_refused(bad):
    with pytest.raises(InputError, match="views must be 1, 2, 4 or 8"):
        SegmentOptions(views=bad)
