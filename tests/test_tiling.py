"""Tile geometry: mirrored indices and tile plans (pure numpy, no network)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_tessera import InputError, UNet, UNetConfig
from napari_tessera.tiling import mirror_indices, plan_tiles, round_up

PRIMES = [2, 3, 5, 7, 11, 13, 17, 31, 61, 97, 101, 127, 199, 251, 257, 293]


# -- mirror_indices ----------------------------------------------------------------------------
@pytest.mark.parametrize("n", range(1, 10))
def test_mirror_indices_equal_numpy_reflect_pad(n):
    data = np.arange(n)
    for before in range(26):
        for after in (0, 1, before, 25 - before, 25):
            expected = np.pad(data, (before, after), mode="reflect")
            got = mirror_indices(-before, n + after, n)
            np.testing.assert_array_equal(got, expected, err_msg=f"n={n} pad=({before},{after})")


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(1, 40),
    before=st.integers(0, 120),
    after=st.integers(0, 120),
    crop=st.data(),
)
def test_mirror_indices_property(n, before, after, crop):
    expected = np.pad(np.arange(n), (before, after), mode="reflect")
    np.testing.assert_array_equal(mirror_indices(-before, n + after, n), expected)
    # any sub-window of the padded line is the same sub-window of mirror_indices
    lo = crop.draw(st.integers(-before, n + after))
    hi = crop.draw(st.integers(lo, n + after))
    np.testing.assert_array_equal(mirror_indices(lo, hi, n), expected[lo + before : hi + before])


def test_mirror_indices_inside_is_identity_and_in_range():
    np.testing.assert_array_equal(mirror_indices(0, 7, 7), np.arange(7))
    idx = mirror_indices(-1000, 1000, 13)
    assert idx.min() == 0 and idx.max() == 12
    assert np.all(mirror_indices(-50, 50, 1) == 0)


# -- plan_tiles --------------------------------------------------------------------------------
def _write_counts(plan, shape) -> np.ndarray:
    counts = np.zeros(shape, np.int32)
    for tile in plan.tiles():
        counts[tile.dst] += 1
    return counts


def _check_plan(plan, shape, *, multiple, same: bool) -> None:
    """Every invariant a correct plan has, checked against an identity "network"."""
    H, W = shape
    counts = _write_counts(plan, shape)
    assert counts.min() == 1 and counts.max() == 1, "every pixel written exactly once"
    ty, tx = plan.tile_shape
    if same:
        assert ty % multiple == 0 and tx % multiple == 0
        assert plan.y.out_offset == 0 and plan.x.out_offset == 0
    image = np.arange(H * W, dtype=np.int64).reshape(H, W)
    recon = np.full(shape, -1, np.int64)
    for tile in plan.tiles():
        assert tile.in_y % multiple == 0 and tile.in_x % multiple == 0, "pooling grid"
        window = plan.read(image, tile)
        assert window.shape == (ty, tx)
        # an identity network returns the centre of its input, out_offset pixels in
        oy, ox = plan.y.out_offset, plan.x.out_offset
        out = window[oy : ty - oy, ox : tx - ox]
        sy, sx = tile.src
        assert sy.start >= 0 and sx.start >= 0
        assert sy.stop <= out.shape[0] and sx.stop <= out.shape[1]
        dy, dx = tile.dst
        assert (sy.stop - sy.start, sx.stop - sx.start) == (dy.stop - dy.start, dx.stop - dx.start)
        recon[tile.dst] = out[tile.src]
    np.testing.assert_array_equal(recon, image)


@pytest.mark.parametrize(
    "shape, tile, multiple, halo",
    [
        ((203, 150), 136, 8, 56),
        ((203, 150), (128, 152), 8, 56),
        ((512, 512), 256, 16, 0),
        ((1, 1), 64, 8, 16),
        ((1, 300), 64, 4, 10),
        ((97, 31), 40, 8, 3),
    ],
)
def test_cores_partition_the_image(shape, tile, multiple, halo):
    plan = plan_tiles(shape, tile, multiple=multiple, halo=halo)
    _check_plan(plan, shape, multiple=multiple, same=True)
    # the halo is rounded up to the pooling grid and every tile has at least that context
    context = round_up(halo, multiple)
    for t in plan.tiles():
        assert t.src[0].start >= context and t.src[1].start >= context
        assert plan.tile_shape[0] - t.src[0].stop >= context
        assert plan.tile_shape[1] - t.src[1].stop >= context


def test_tile_origin_and_size_on_the_grid():
    plan = plan_tiles((203, 150), 100, multiple=16, halo=20)
    assert plan.tile_shape[0] % 16 == 0 and plan.tile_shape[1] % 16 == 0
    assert plan.tile_shape[0] <= 100 and plan.tile_shape[1] <= 100
    origins = [(t.in_y, t.in_x) for t in plan.tiles()]
    assert all(y % 16 == 0 and x % 16 == 0 for y, x in origins)
    assert min(y for y, _ in origins) == -32  # halo 20 rounded up to 32 px of context
    assert plan.n_tiles == len(origins) > 1


def test_tile_shrinks_for_small_images():
    plan = plan_tiles((50, 20), 512, multiple=8, halo=0)
    assert plan.n_tiles == 1
    assert plan.tile_shape == (56, 24)
    plan = plan_tiles((50, 20), 512, multiple=8, halo=16)
    assert plan.tile_shape == (56 + 32, 24 + 32)
    assert plan.n_tiles == 1


def test_tiles_are_spread_evenly():
    # 100 px with a 64 px core budget: two cores of 56 rather than 64 + 36
    plan = plan_tiles((100, 100), 64, multiple=8, halo=0)
    assert plan.y.n_tiles == 2 and plan.y.core == 56
    assert plan.overhead < 1.3


@pytest.mark.parametrize("tile", [0, -5, (0, 64), (64, -1)])
def test_non_positive_tile_size_raises(tile):
    with pytest.raises(InputError):
        plan_tiles((100, 100), tile, multiple=8, halo=0)


def test_negative_halo_raises():
    with pytest.raises(InputError):
        plan_tiles((100, 100), 64, multiple=8, halo=-1)


@pytest.mark.parametrize("tile, halo", [(64, 32), (64, 30), (70, 29), (8, 1), (39, 16)])
def test_tile_too_small_for_halo_raises(tile, halo):
    with pytest.raises(InputError, match="tile size"):
        plan_tiles((100, 100), tile, multiple=8, halo=halo)


@pytest.mark.parametrize("depth, halo", [(2, 0), (3, 5), (3, 56), (4, 112)])
def test_too_small_error_suggests_the_smallest_working_tile(depth, halo):
    m = 2**depth
    with pytest.raises(InputError) as info:
        plan_tiles((300, 300), 1, multiple=m, halo=halo)
    suggested = int(re.search(r"at least (\d+)", str(info.value)).group(1))
    plan = plan_tiles((300, 300), suggested, multiple=m, halo=halo)
    _check_plan(plan, (300, 300), multiple=m, same=True)
    with pytest.raises(InputError):
        plan_tiles((300, 300), suggested - 1, multiple=m, halo=halo)


def test_smallest_tile_that_fits_the_halo_works():
    plan = plan_tiles((100, 100), 2 * 32 + 8, multiple=8, halo=32)
    assert plan.y.core == 8
    _check_plan(plan, (100, 100), multiple=8, same=True)


def test_empty_axis_raises():
    with pytest.raises(InputError):
        plan_tiles((0, 10), 64, multiple=8)


def test_read_works_on_multichannel_and_tiny_images():
    image = np.arange(2 * 3 * 1).reshape(2, 3, 1).astype(np.float32)
    plan = plan_tiles((3, 1), 16, multiple=4, halo=4)
    (tile,) = list(plan.tiles())
    window = plan.read(image, tile)
    assert window.shape == (2, *plan.tile_shape)
    expected = image[:, mirror_indices(tile.in_y, tile.in_y + plan.tile_shape[0], 3)]
    expected = expected[:, :, mirror_indices(tile.in_x, tile.in_x + plan.tile_shape[1], 1)]
    np.testing.assert_array_equal(window, expected)


# -- property-based ----------------------------------------------------------------------------
sizes = st.one_of(st.integers(1, 300), st.sampled_from(PRIMES))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    h=sizes,
    w=sizes,
    depth=st.integers(0, 4),
    halo=st.integers(0, 60),
    extra_y=st.integers(0, 200),
    extra_x=st.integers(0, 200),
)
def test_plan_property_every_pixel_written_once(h, w, depth, halo, extra_y, extra_x):
    m = 2**depth
    context = round_up(halo, m)
    tile = (2 * context + m + extra_y, 2 * context + m + extra_x)  # always large enough
    plan = plan_tiles((h, w), tile, multiple=m, halo=halo)
    _check_plan(plan, (h, w), multiple=m, same=True)
    assert plan.tile_shape[0] <= max(tile[0], m) and plan.tile_shape[1] <= max(tile[1], m)


@settings(max_examples=60, deadline=None)
@given(h=sizes, w=sizes, tile=st.integers(1, 400), halo=st.integers(0, 100))
def test_plan_property_any_tile_size_either_works_or_raises_input_error(h, w, tile, halo):
    try:
        plan = plan_tiles((h, w), tile, multiple=8, halo=halo)
    except InputError:
        assert tile < 2 * round_up(halo, 8) + 8
        return
    _check_plan(plan, (h, w), multiple=8, same=True)


VALID_MODELS = {d: UNet(UNetConfig(depth=d, base_channels=1, padding="valid")) for d in (1, 2, 3)}


@settings(max_examples=60, deadline=None)
@given(h=sizes, w=sizes, depth=st.sampled_from([1, 2, 3]), tile=st.integers(1, 300))
def test_plan_property_valid_padding(h, w, depth, tile):
    model = VALID_MODELS[depth]
    m = 2**depth
    try:
        plan = plan_tiles((h, w), tile, multiple=m, model=model)
    except InputError as err:
        # too small a tile: the error names a tile size that works
        suggested = int(re.search(r"at least (\d+)", str(err)).group(1))
        assert tile < suggested
        plan = plan_tiles((h, w), suggested, multiple=m, model=model)
    ty, tx = plan.tile_shape
    # every tile is an input size the network accepts, with the network's margin
    for size, axis in ((ty, plan.y), (tx, plan.x)):
        assert size - model.output_size(size) == 2 * model.margin
        assert axis.out_offset == model.margin
    _check_plan(plan, (h, w), multiple=m, same=False)
