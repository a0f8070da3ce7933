"""Tiled inference: exactness against one whole-image pass, axes, blending, errors, labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_tessera import InputError, UNetConfig
from napari_tessera.inference import (
    Progress,
    SliceResult,
    iter_segment,
    iter_slice_predictions,
    predict_tiled,
    predict_whole,
    segment,
)
from napari_tessera.options import SegmentOptions
from napari_tessera.postprocess import classes_from_probabilities, split_instances
from napari_tessera.synthetic import nuclei_2d, nuclei_stack


def OPTS(**settings) -> SegmentOptions:
    """Tiling settings on the CPU."""
    return SegmentOptions(device="cpu", **settings)


SHAPE = (203, 150)  # odd, not a multiple of any pooling grid


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(7).random(SHAPE).astype(np.float32)


def _tiled(model, img, **kwargs):
    """predict_tiled on the CPU; exact halo unless told otherwise (tests of "auto": test_halo)."""
    kwargs.setdefault("device", "cpu")
    kwargs.setdefault("halo", "exact")
    return predict_tiled(model, img, **kwargs)


def _assert_probabilities(p, n_classes):
    assert p.dtype == np.float32
    assert p.shape[0] == n_classes
    assert np.isfinite(p).all()
    assert p.min() >= 0 and p.max() <= 1
    if n_classes > 1:
        np.testing.assert_allclose(p.sum(axis=0), 1.0, atol=1e-5)


# -- exactness ---------------------------------------------------------------------------------
@pytest.mark.parametrize("upsampling", ["transpose", "bilinear"])
@pytest.mark.parametrize("depth, base", [(3, 4), (4, 2)])
def test_exact_halo_tiling_equals_whole_image_pass(deep_unet, image, depth, base, upsampling):
    model = deep_unet(
        UNetConfig(depth=depth, base_channels=base, n_classes=3, upsampling=upsampling)
    )
    m, halo = model.size_multiple, model.exact_halo()
    whole = predict_whole(model, image)
    assert whole.shape == (3, *SHAPE)
    tile_sizes = [2 * halo + 3 * m, (2 * halo + 2 * m, 2 * halo + 5 * m), None]
    for tile in tile_sizes:
        tiled = _tiled(model, image, tile_size=tile, halo="exact")
        _assert_probabilities(tiled, 3)
        np.testing.assert_allclose(tiled, whole, atol=1e-5, rtol=0, err_msg=f"tile {tile}")

    # Power check: the same network tiled without a halo is visibly wrong at the seams, so the
    # comparison above would have caught a tiler that ignored the receptive field.
    no_halo = _tiled(model, image, tile_size=3 * m, halo=0)
    assert np.abs(no_halo - whole).max() > 1e-2
    # ... and the network really depends on context: a too-small halo is not exact either
    short = _tiled(model, image, tile_size=2 * (halo - 2 * m) + 3 * m, halo=halo - 2 * m)
    assert np.abs(short - whole).max() > 1e-5


def test_exact_tiling_is_independent_of_tile_size_on_a_stack(deep_unet):
    model = deep_unet(UNetConfig(depth=3, base_channels=4, n_classes=2))
    stack = np.random.default_rng(1).random((2, 70, 99)).astype(np.float32)
    h, m = model.exact_halo(), model.size_multiple
    a = _tiled(model, stack, axes="ZYX", tile_size=2 * h + 2 * m)
    b = _tiled(model, stack, axes="ZYX", tile_size=(2 * h + 4 * m, 2 * h + 3 * m))
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    for z in range(2):
        np.testing.assert_allclose(a[:, z], predict_whole(model, stack[z]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("depth", [2, 3])
def test_valid_padding_tiling_equals_whole_image_pass(deep_unet, image, depth):
    model = deep_unet(UNetConfig(depth=depth, base_channels=4, n_classes=3, padding="valid"))
    whole = predict_whole(model, image)
    assert whole.shape == (3, *SHAPE)
    small = model.valid_input_size(2 * model.size_multiple)
    for tile in [None, small, (small + 2 * model.size_multiple, 200)]:
        tiled = _tiled(model, image, tile_size=tile)
        _assert_probabilities(tiled, 3)
        np.testing.assert_allclose(tiled, whole, atol=1e-5, rtol=0, err_msg=f"tile {tile}")


def test_valid_padding_bilinear_tiling_equals_whole_image_pass(deep_unet, image):
    model = deep_unet(
        UNetConfig(depth=2, base_channels=4, n_classes=3, padding="valid", upsampling="bilinear")
    )
    whole = predict_whole(model, image)
    for tile in [None, 100]:
        np.testing.assert_allclose(_tiled(model, image, tile_size=tile), whole, atol=1e-5)


def test_batch_size_does_not_change_results(deep_unet):
    model = deep_unet(UNetConfig(depth=2, base_channels=4, n_classes=2))
    stack = np.random.default_rng(2).random((3, 50, 45)).astype(np.float32)
    tile = 2 * model.exact_halo() + 2 * model.size_multiple  # several tiles per slice
    kw = dict(axes="ZYX", tile_size=tile)
    one = _tiled(model, stack, batch_size=1, **kw)
    three = _tiled(model, stack, batch_size=3, **kw)  # batches straddle slices
    np.testing.assert_allclose(one, three, atol=1e-6, rtol=0)


def _random_batchnorm(model, seed=0):
    """Give every BatchNorm non-trivial running stats and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                n = mod.num_features
                mod.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
                mod.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.2)
                mod.weight.copy_(torch.rand(n, generator=g) + 0.5)
                mod.bias.copy_(torch.randn(n, generator=g) * 0.2)
    return model


@pytest.mark.parametrize("upsampling", ["transpose", "bilinear"])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_fast_path_computes_the_plain_result(deep_unet, upsampling, batch_size):
    """Folded BatchNorm + channels-last gives the plain model's result and leaves it untouched."""
    model = _random_batchnorm(
        deep_unet(UNetConfig(depth=3, base_channels=4, n_classes=3, upsampling=upsampling))
    )
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    img = np.random.default_rng(4).random((90, 110)).astype(np.float32)
    tile = model.exact_halo() * 2 + 16
    fast = _tiled(model, img, tile_size=tile, batch_size=batch_size)
    assert model.training  # the model passed in keeps its mode ...
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # ... weights
    model.eval()
    plain = _tiled(model, img, tile_size=tile, batch_size=batch_size, fast=False)
    np.testing.assert_allclose(fast, plain, atol=2e-5, rtol=0)
    np.testing.assert_allclose(fast, predict_whole(model, img), atol=2e-5, rtol=0)
    # the BatchNorm parameters matter here: the result differs without them
    ident = deep_unet(UNetConfig(depth=3, base_channels=4, n_classes=3, upsampling=upsampling))
    assert np.abs(_tiled(ident, img, tile_size=tile) - plain).max() > 1e-2


def test_inference_copy_has_no_batchnorm_and_is_channels_last(deep_unet):
    from napari_tessera.model.fast import inference_copy

    model = _random_batchnorm(deep_unet(UNetConfig(depth=2, base_channels=4)))
    fast = inference_copy(model, torch.device("cpu"))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert fast.inc[0].weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            fast(x.contiguous(memory_format=torch.channels_last)), model(x), atol=1e-5, rtol=0
        )


def test_bf16_fast_path_is_close_to_fp32_plain(deep_unet):
    model = _random_batchnorm(deep_unet(UNetConfig(depth=2, base_channels=4, n_classes=2)))
    img = np.random.default_rng(8).random((64, 64)).astype(np.float32)
    p32 = _tiled(model, img, fast=False)
    p16 = _tiled(model, img, precision="bf16")
    _assert_probabilities(p16, 2)
    assert np.abs(p16 - p32).mean() < 0.05
    assert (p16.argmax(0) == p32.argmax(0)).mean() > 0.95


# -- axes --------------------------------------------------------------------------------------
def test_zyx_stack_equals_per_slice_results(deep_unet):
    model = deep_unet(UNetConfig(depth=2, base_channels=4, n_classes=3))
    stack = np.random.default_rng(3).random((3, 40, 57)).astype(np.float32)
    stack[1] *= 1000  # per-slice normalisation: slices do not influence each other
    out = _tiled(model, stack, axes="ZYX", tile_size=64)
    assert out.shape == (3, 3, 40, 57)
    for z in range(3):
        np.testing.assert_allclose(out[:, z], _tiled(model, stack[z], tile_size=64), atol=1e-6)


@pytest.fixture
def two_channel_model(deep_unet):
    return deep_unet(UNetConfig(in_channels=2, depth=2, base_channels=4, n_classes=3))


def test_channel_axes(two_channel_model):
    model = two_channel_model
    rng = np.random.default_rng(4)
    cyx = rng.random((2, 37, 45)).astype(np.float32)
    cyx[1] = rng.random((37, 45)) ** 4 * 500  # channels are normalised independently
    p_cyx = _tiled(model, cyx, axes="CYX")
    _assert_probabilities(p_cyx, 3)
    assert p_cyx.shape == (3, 37, 45)
    np.testing.assert_allclose(p_cyx, predict_whole(model, cyx), atol=1e-5)

    p_yxc = _tiled(model, np.ascontiguousarray(cyx.transpose(1, 2, 0)), axes="YXC")
    np.testing.assert_allclose(p_yxc, p_cyx, atol=1e-6, rtol=0)

    # the channels matter: swapping them changes the result
    assert np.abs(_tiled(model, cyx[::-1].copy(), axes="CYX") - p_cyx).max() > 1e-3

    zcyx = np.stack([cyx, cyx[:, ::-1, :].copy()])
    p_zcyx = _tiled(model, zcyx, axes="ZCYX")
    assert p_zcyx.shape == (3, 2, 37, 45)
    np.testing.assert_allclose(p_zcyx[:, 0], p_cyx, atol=1e-6, rtol=0)
    np.testing.assert_allclose(p_zcyx[:, 1], _tiled(model, zcyx[1], axes="CYX"), atol=1e-6)

    czyx = np.ascontiguousarray(zcyx.transpose(1, 0, 2, 3))
    np.testing.assert_allclose(_tiled(model, czyx, axes="CZYX"), p_zcyx, atol=1e-6, rtol=0)


def test_tiff_sample_axis_is_read_as_channels(two_channel_model):
    yxs = np.random.default_rng(5).random((33, 20, 2)).astype(np.float32)
    a = _tiled(two_channel_model, yxs, axes="yxs")
    b = _tiled(two_channel_model, yxs, axes="YXC")
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "shape, axes",
    [((3, 30, 30), "CYX"), ((30, 30), "YX"), ((30, 30, 3), "YXC"), ((4, 1, 30, 30), "ZCYX")],
)
def test_wrong_channel_count_raises(two_channel_model, shape, axes):
    with pytest.raises(InputError, match="channel"):
        _tiled(two_channel_model, np.zeros(shape, np.float32), axes=axes)


@pytest.mark.parametrize(
    "shape, axes",
    [
        ((30, 30), "ZYX"),
        ((3, 30, 30), "YX"),
        ((30, 30), "YQ"),
        ((3, 30, 30), "YXX"),
        ((3, 30, 30), "ZCX"),
        ((30, 30), 12),
        ((0, 30), "YX"),
    ],
)
def test_axes_not_matching_shape_raise(deep_unet, shape, axes):
    model = deep_unet(UNetConfig(depth=2, base_channels=2))
    with pytest.raises(InputError):
        _tiled(model, np.zeros(shape, np.float32), axes=axes)


# -- blending, classes, special images ---------------------------------------------------------
def test_gaussian_blend_gives_probabilities(deep_unet, image):
    model = deep_unet(UNetConfig(depth=3, base_channels=4, n_classes=3))
    tile = 2 * model.exact_halo() + 3 * model.size_multiple
    p = _tiled(model, image, tile_size=tile, blend="gaussian")
    _assert_probabilities(p, 3)
    whole = predict_whole(model, image)
    # a weighted average of tiles, so close to (but not exactly) the whole-image result
    assert np.abs(p - whole).mean() < 0.05
    assert np.abs(p - whole).max() > 1e-5


def test_sigmoid_single_class(deep_unet, image):
    model = deep_unet(UNetConfig(depth=2, base_channels=4, n_classes=1))
    p = _tiled(model, image, tile_size=2 * model.exact_halo() + 8)
    _assert_probabilities(p, 1)
    assert p.shape == (1, *SHAPE)
    np.testing.assert_allclose(p, predict_whole(model, image), atol=1e-5)
    # sigmoid of the logits, not a softmax over one class (which would be all ones)
    assert p.std() > 0.01
    labels = segment(model, image, device="cpu", halo="exact")
    np.testing.assert_array_equal(labels, (p[0] > 0.5).astype(np.uint8))
    assert 0 < labels.mean() < 1


@pytest.mark.parametrize("value, dtype", [(0, np.float32), (7, np.uint16), (-3.5, np.float64)])
def test_constant_image_gives_finite_probabilities(deep_unet, value, dtype):
    model = deep_unet(UNetConfig(depth=2, base_channels=4, n_classes=3))
    p = _tiled(model, np.full((40, 33), value, dtype=dtype))
    _assert_probabilities(p, 3)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_pixels_raise(deep_unet, bad):
    model = deep_unet(UNetConfig(depth=2, base_channels=2))
    img = np.ones((30, 30), np.float32)
    img[3, 4] = bad
    with pytest.raises(InputError, match="NaN"):
        _tiled(model, img)
    stack = np.ones((3, 30, 30), np.float32)
    stack[2, 0, 0] = bad
    with pytest.raises(InputError, match="slice 2"):
        segment(model, stack, axes="ZYX", device="cpu")


@pytest.mark.parametrize("data", [np.zeros((8, 8), complex), np.array([["a"] * 8] * 8)])
def test_non_numeric_pixels_raise(deep_unet, data):
    model = deep_unet(UNetConfig(depth=2, base_channels=2))
    with pytest.raises(InputError):
        _tiled(model, data)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"blend": "average"},
        {"batch_size": 0},
        {"batch_size": True},
        {"batch_size": 1.5},
        {"precision": "fp64"},
        {"precision": "fp16"},  # not on the CPU
        {"halo": "big"},
        {"halo": -8},
        {"halo": True},
        {"tile_size": 0},
        {"tile_size": -5},
        {"tile_size": 4, "halo": 8},
        {"device": "tpu"},
        {"device": "not a device"},
    ],
)
def test_bad_settings_raise_input_error(deep_unet, kwargs):
    model = deep_unet(UNetConfig(depth=2, base_channels=2))
    kwargs.setdefault("device", "cpu")
    with pytest.raises(InputError):
        predict_tiled(model, np.zeros((20, 20), np.float32), **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_missing_cuda_is_an_input_error(deep_unet):
    model = deep_unet(UNetConfig(depth=2, base_channels=2))
    with pytest.raises(InputError, match="CUDA"):
        predict_tiled(model, np.zeros((20, 20), np.float32), device="cuda")


def test_bf16_on_cpu_is_close(deep_unet):
    model = deep_unet(UNetConfig(depth=2, base_channels=4, n_classes=2))
    img = np.random.default_rng(8).random((40, 40)).astype(np.float32)
    p32 = _tiled(model, img)
    p16 = _tiled(model, img, precision="bf16")
    _assert_probabilities(p16, 2)
    assert np.abs(p16 - p32).mean() < 0.05


def test_memory_mapped_input(deep_unet, tmp_path):
    model = deep_unet(UNetConfig(depth=2, base_channels=4, n_classes=2))
    stack = np.random.default_rng(9).random((2, 30, 41)).astype(np.float32)
    np.save(tmp_path / "s.npy", stack)
    mm = np.load(tmp_path / "s.npy", mmap_mode="r")
    np.testing.assert_array_equal(
        _tiled(model, mm, axes="ZYX", tile_size=64), _tiled(model, stack, axes="ZYX", tile_size=64)
    )


# -- labels ------------------------------------------------------------------------------------
def test_segment_is_argmax_of_probabilities(deep_unet, image):
    model = deep_unet(UNetConfig(depth=3, base_channels=4, n_classes=4), bias_std=0.3)
    tile = 2 * model.exact_halo() + 5 * model.size_multiple
    p = _tiled(model, image, tile_size=tile)
    labels = segment(model, image, tile_size=tile, device="cpu", halo="exact")
    assert labels.shape == SHAPE and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, p.argmax(0))
    assert len(np.unique(labels)) >= 2


def test_probabilities_out_is_completely_filled(deep_unet):
    """Poison the output buffer with NaN: every value must be overwritten with a probability."""
    model = deep_unet(UNetConfig(depth=2, base_channels=4, n_classes=3))
    stack = np.random.default_rng(10).random((3, 45, 38)).astype(np.float32)
    probs = np.full((3, 3, 45, 38), np.nan, np.float32)
    labels = segment(
        model, stack, axes="ZYX", probabilities_out=probs, tile_size=64, device="cpu", halo=8
    )
    _assert_probabilities(probs, 3)
    np.testing.assert_array_equal(labels, probs.argmax(0))
    want = _tiled(model, stack, axes="ZYX", tile_size=64, halo=8)
    np.testing.assert_allclose(probs, want, atol=1e-6)


def test_segment_instances_on_a_stack(threshold_unet):
    model = threshold_unet()
    sample = nuclei_stack((2, 96, 96), seed=3)
    classes = segment(model, sample.image, axes="ZYX", device="cpu")
    truth = sample.labels > 0
    iou = (truth & (classes > 0)).sum() / (truth | (classes > 0)).sum()
    assert iou > 0.7  # the hand-made model really segments the nuclei
    # each slice its own field of nuclei: objects of one slice only
    inst = segment(model, sample.image, axes="ZYX", instances=True, link_z=False, device="cpu")
    assert inst.shape == sample.image.shape
    assert np.issubdtype(inst.dtype, np.unsignedinteger)
    ids = [set(np.unique(inst[z])) - {0} for z in range(2)]
    assert ids[0] and ids[1] and not ids[0] & ids[1]  # unique across the stack
    assert sorted(ids[0] | ids[1]) == list(range(1, len(ids[0]) + len(ids[1]) + 1))
    assert ((inst > 0) <= (classes > 0)).all()  # objects only on foreground
    n_true = sum(len(np.unique(sample.labels[z])) - 1 for z in range(2))
    assert 0.5 * n_true <= len(ids[0]) + len(ids[1]) <= 1.5 * n_true


def test_segment_min_size_drops_small_objects(threshold_unet):
    model = threshold_unet()
    sample = nuclei_2d((96, 96), seed=0)
    inst = segment(model, sample.image, instances=True, min_size=1, device="cpu")
    big = segment(model, sample.image, instances=True, min_size=200, device="cpu")
    sizes = np.bincount(big.ravel())[1:]
    assert (sizes[sizes > 0] >= 200).all()
    assert big.max() < inst.max()


# -- the generator -----------------------------------------------------------------------------
def test_progress_events_and_slice_results(deep_unet):
    model = deep_unet(UNetConfig(depth=2, base_channels=4, n_classes=2))
    stack = np.random.default_rng(11).random((2, 40, 40)).astype(np.float32)
    events = list(
        iter_slice_predictions(model, stack, axes="ZYX", options=OPTS(tile_size=64, batch_size=2))
    )
    progress = [e for e in events if isinstance(e, Progress)]
    results = [e for e in events if isinstance(e, SliceResult)]
    assert [r.index for r in results] == [0, 1]
    total = progress[-1].total
    assert total > 2 and total % 2 == 0
    assert progress[-1].done == total
    assert [p.done for p in progress] == sorted(p.done for p in progress)
    only = [
        e
        for e in iter_slice_predictions(
            model, stack, axes="ZYX", options=OPTS(tile_size=64), slices=[1]
        )
        if isinstance(e, SliceResult)
    ]
    assert [r.index for r in only] == [1]
    np.testing.assert_allclose(only[0].probabilities, results[1].probabilities, atol=1e-6)


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_generator_closed_early_restores_training_state(deep_unet, training, fast):
    model = deep_unet(UNetConfig(depth=2, base_channels=4, n_classes=2))
    model.train(training)
    stack = np.random.default_rng(12).random((3, 40, 40)).astype(np.float32)
    gen = iter_slice_predictions(model, stack, axes="ZYX", options=OPTS(tile_size=64), fast=fast)
    first = next(gen)
    assert isinstance(first, Progress) and first.done == 1 and first.total > 1
    # the plain path runs the model itself in eval mode; the fast path runs a copy of it
    assert model.training is (training and fast)
    gen.close()
    assert model.training is training
    with pytest.raises(StopIteration):
        next(gen)


def test_error_mid_stack_restores_training_state(deep_unet):
    model = deep_unet(UNetConfig(depth=2, base_channels=4)).train()
    stack = np.ones((3, 20, 20), np.float32)
    stack[1, 5, 5] = np.nan
    with pytest.raises(InputError):
        for _ in iter_segment(model, stack, axes="ZYX", device="cpu"):
            pass
    assert model.training


# -- split_instances ---------------------------------------------------------------------------
def test_split_instances_cuts_two_overlapping_discs(make_disc):
    shape = (64, 80)
    a, b = make_disc(shape, 32, 25, 14), make_disc(shape, 32, 50, 14)  # centres 25 px apart
    fg = a | b
    from scipy import ndimage as ndi

    assert ndi.label(fg)[1] == 1  # one connected blob
    labels, next_id = split_instances(fg)
    assert labels.dtype == np.int32
    assert set(np.unique(labels)) == {0, 1, 2} and next_id == 3
    np.testing.assert_array_equal(labels > 0, fg)
    # each disc's centre region belongs to a different object
    assert labels[32, 20] != labels[32, 55]
    assert len(np.unique(labels[make_disc(shape, 32, 25, 8)])) == 1
    assert len(np.unique(labels[make_disc(shape, 32, 50, 8)])) == 1


def test_split_instances_separate_discs_get_distinct_ids(make_disc):
    shape = (60, 90)
    discs = [make_disc(shape, 20, 15, 8), make_disc(shape, 40, 45, 10), make_disc(shape, 15, 75, 6)]
    labels, next_id = split_instances(np.logical_or.reduce(discs), start=10)
    assert next_id == 13
    ids = [np.unique(labels[d]) for d in discs]
    assert all(len(i) == 1 for i in ids)  # one id per disc, covering all of it
    assert sorted(int(i[0]) for i in ids) == [10, 11, 12]  # consecutive from start
    assert (labels[~np.logical_or.reduce(discs)] == 0).all()


def test_split_instances_empty_and_small(make_disc):
    labels, next_id = split_instances(np.zeros((20, 30), bool), start=5)
    assert next_id == 5 and labels.shape == (20, 30) and not labels.any()
    tiny = make_disc((40, 40), 10, 10, 1)  # 5 pixels
    big = make_disc((40, 40), 28, 28, 6)
    labels, next_id = split_instances(tiny | big, min_size=8)
    assert next_id == 2 and not labels[tiny].any() and (labels[big] == 1).all()
    labels, next_id = split_instances(tiny | big, min_size=1)
    assert next_id == 3


def test_classes_from_probabilities():
    p = np.array([[[0.2, 0.7]], [[0.5, 0.1]], [[0.3, 0.2]]], np.float32)
    np.testing.assert_array_equal(classes_from_probabilities(p), [[1, 0]])
    np.testing.assert_array_equal(
        classes_from_probabilities(np.array([[[0.2, 0.51, 0.5]]])), [[0, 1, 0]]
    )
