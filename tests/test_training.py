"""The training engine: losses, weights, patch sampling, the loop (stop, resume, seeds, time),
how well a tiny network learns, and the checks on bad inputs.

Everything runs on the CPU with tiny networks (base_channels 4-8, depth 2), 128x128 images,
32-pixel patches and at most 60 steps. ``TrainConfig.seed`` fixes a run, the network's initial
weights included (``test_seed_alone_repeats_a_run``).
"""

from __future__ import annotations

import copy
import dataclasses
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from napari_tessera import UNet, UNetConfig
from napari_tessera.errors import InputError
from napari_tessera.inference import segment
from napari_tessera.io import load_model, save_model
from napari_tessera.metrics import match_instances
from napari_tessera.synthetic import nuclei_2d
from napari_tessera.training import (
    IGNORE,
    TrainConfig,
    TrainResult,
    border_weights,
    iter_train,
    make_targets,
    segmentation_loss,
    train,
)
from napari_tessera.training.checkpoint import load_checkpoint
from napari_tessera.training.labels import check_labels
from napari_tessera.training.sampling import ELASTIC_MARGIN, PatchSampler, _window
from napari_tessera.training.start import StartFit

SIDE = 128


# -- helpers ------------------------------------------------------------------------------------
def small_config(**kw) -> TrainConfig:
    """A cheap CPU run: tiny network, 32-pixel patches, small batches."""
    base = dict(
        mode="dense",
        steps=20,
        base_channels=4,
        depth=2,
        patch_size=32,
        batch_size=2,
        val_every=5,
        val_fraction=0.2,  # these tests watch validation; a run from scratch has none by default
        device="cpu",
    )
    base.update(kw)
    return TrainConfig(**base)


def drive(gen, on_update=None):
    """Run an ``iter_train`` generator; returns (updates, result)."""
    updates = []
    while True:
        try:
            u = next(gen)
        except StopIteration as done:
            return updates, done.value
        updates.append(u)
        if on_update is not None:
            on_update(u)


def state_copy(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def close_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], tol=1e-5) -> bool:
    return a.keys() == b.keys() and max_abs_diff(a, b) <= tol


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def header_hits_pickle_check(path: Path) -> bool:
    """True where ``path`` starts with pickle-like bytes (0x80 or "PK").

    A safetensors file starts with its header length as a little-endian u64, so a length whose
    low byte is 0x80 looks like a pickle's first byte; such files must still load.
    """
    with open(path, "rb") as f:
        head = f.read(8)
    return head[:1] == b"\x80" or head[:2] == b"PK"


def with_readable_checkpoint(run, folder: Path, stem: str = "run"):
    """Call ``run(path)`` (which writes a checkpoint at ``path``); return ``(path, result)``."""
    path = folder / f"{stem}.ckpt.safetensors"
    return path, run(path)


def foreground_iou(pred: np.ndarray, truth: np.ndarray) -> float:
    p, t = pred > 0, truth > 0
    return float((p & t).sum() / max((p | t).sum(), 1))


def paint_sparse(truth: np.ndarray, n_objects: int = 8) -> np.ndarray:
    """Sparse labels like a user's painting: a few whole nuclei (2) and background strokes (1)."""
    lab = np.zeros(truth.shape, np.uint8)
    ids = [int(i) for i in np.unique(truth) if i]
    step = max(1, len(ids) // n_objects)
    for i in ids[::step][:n_objects]:
        lab[truth == i] = 2
    far_bg = ndi.binary_erosion(truth == 0, iterations=3)
    strokes = np.zeros(truth.shape, bool)
    strokes[::16, :] = True
    strokes[:, ::16] = True
    lab[far_bg & strokes] = 1
    return lab


@pytest.fixture(scope="module")
def nuclei():
    """Training and held-out synthetic nuclei images (different seeds)."""
    return nuclei_2d((SIDE, SIDE), seed=1), nuclei_2d((SIDE, SIDE), seed=2)


@pytest.fixture(scope="module")
def dense_data(nuclei):
    s = nuclei[0]
    return s.image, s.labels.astype(np.int32)


# -- labels -------------------------------------------------------------------------------------
def test_sparse_convention_make_targets():
    labels = np.array([[[0, 1, 2], [2, 1, 0]]], np.int64)
    t = make_targets(labels, "sparse")
    np.testing.assert_array_equal(t.classes, [[[IGNORE, 0, 1], [1, 0, IGNORE]]])
    assert IGNORE == -1
    assert t.n_classes == 2
    assert t.instances is None
    assert t.slices == [0]
    # a third label value is a second object class
    t3 = make_targets(np.array([[[0, 1, 2, 3]]]), "sparse")
    np.testing.assert_array_equal(t3.classes, [[[IGNORE, 0, 1, 2]]])
    assert t3.n_classes == 3


def test_dense_convention_make_targets():
    labels = np.array([[[0, 3, 3], [0, 0, 7]]], np.int64)
    t = make_targets(labels, "dense")
    np.testing.assert_array_equal(t.classes, [[[0, 1, 1], [0, 0, 1]]])
    np.testing.assert_array_equal(t.instances, labels)
    assert t.n_classes == 2
    assert (t.classes != IGNORE).all()  # dense: every pixel is annotated


# -- loss ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_out", [1, 2, 3])
@pytest.mark.parametrize("dice", [0.0, 1.0])
@pytest.mark.parametrize("balance", [False, True])
def test_loss_ignores_unannotated_pixels(n_out, dice, balance):
    def loss(lg, t, w=None):
        return float(segmentation_loss(lg, t, w, dice=dice, balance=balance))

    gen = torch.Generator().manual_seed(n_out)
    shape = (2, 16, 16)
    n_classes = max(n_out, 2)
    target = torch.randint(0, n_classes, shape, generator=gen)
    ignore = torch.rand(shape, generator=gen) < 0.4
    target[ignore] = IGNORE
    logits = torch.randn((shape[0], n_out, *shape[1:]), generator=gen)
    weight = 1 + 5 * torch.rand(shape, generator=gen)
    base = loss(logits, target, weight)
    base_unweighted = loss(logits, target)

    # change logits and weights wildly, but only where nothing is annotated
    logits2 = logits.clone()
    logits2[ignore[:, None].expand_as(logits)] = 50 * torch.randn(
        int(ignore.sum()) * n_out, generator=gen
    )
    weight2 = weight.clone()
    weight2[ignore] = 1000 * torch.rand(int(ignore.sum()), generator=gen)
    assert loss(logits2, target, weight2) == pytest.approx(base, abs=1e-6)
    assert loss(logits2, target) == pytest.approx(base_unweighted, abs=1e-6)

    # ... while a change at one annotated pixel changes the loss
    n, y, x = (int(v) for v in torch.nonzero(~ignore)[0])
    logits3 = logits.clone()
    logits3[n, :, y, x] += torch.linspace(3.0, -3.0, n_out) if n_out > 1 else 3.0
    assert abs(loss(logits3, target, weight) - base) > 1e-4
    weight3 = weight.clone()
    weight3[n, y, x] += 10.0
    assert abs(loss(logits, target, weight3) - base) > 1e-5


def test_balanced_loss_weighs_every_painted_class_the_same():
    """With balance, painting more of one class does not tilt the loss towards it."""

    def batch(n_background: int):
        target = torch.full((1, 1, 64), IGNORE)
        target[0, 0, :4] = 1  # 4 object pixels
        target[0, 0, 4 : 4 + n_background] = 0
        logits = torch.zeros(1, 1, 1, 64)
        logits[..., :4] = -1.0  # objects look like background: a large loss
        logits[..., 4:] = -3.0  # background is right: a small loss
        return logits, target

    few, many = batch(4), batch(48)
    balanced = [float(segmentation_loss(*b, dice=0.0, balance=True)) for b in (few, many)]
    plain = [float(segmentation_loss(*b, dice=0.0)) for b in (few, many)]
    assert balanced[0] == pytest.approx(balanced[1], abs=1e-6)
    # the mean of the two classes' mean losses
    expected = 0.5 * (
        float(torch.nn.functional.softplus(torch.tensor(1.0)))  # BCE(-1, target 1)
        + float(torch.nn.functional.softplus(torch.tensor(-3.0)))  # BCE(-3, target 0)
    )
    assert balanced[0] == pytest.approx(expected, abs=1e-6)
    # without balance, 48 easy background pixels drown the 4 wrong object pixels
    assert plain[1] < 0.5 * plain[0]
    # with three classes too: each class's mean cross-entropy counts once
    t = torch.tensor([[[0, 0, 0, 0, 0, 0, 1, 2]]])
    lg = torch.randn(1, 3, 1, 8, generator=torch.Generator().manual_seed(0))
    ce = torch.nn.functional.cross_entropy(lg, t, reduction="none")[0, 0]
    want = (ce[:6].mean() + ce[6] + ce[7]) / 3
    got = segmentation_loss(lg, t, dice=0.0, balance=True)
    assert float(got) == pytest.approx(float(want), abs=1e-6)


@pytest.mark.parametrize("n_out", [1, 2, 3])
@pytest.mark.parametrize("balance", [False, True])
def test_summed_loss_terms_are_the_loss_of_one_batch(n_out, balance):
    """LossTerms of two batches added give the loss of the two taken as one batch, even when
    one batch holds no painted object (where a batch-by-batch Dice would reward certainty)."""
    from napari_tessera.training.losses import LossTerms

    gen = torch.Generator().manual_seed(n_out)
    n_classes = max(n_out, 2)
    logits = torch.randn((2, n_out, 12, 12), generator=gen)
    target = torch.randint(0, n_classes, (2, 12, 12), generator=gen)
    target[1] = torch.where(torch.rand(12, 12, generator=gen) < 0.5, 0, IGNORE)  # background
    weight = 1 + torch.rand((2, 12, 12), generator=gen)
    one = segmentation_loss(logits, target, weight, balance=balance)
    parts = [LossTerms.of(logits[i : i + 1], target[i : i + 1], weight[i : i + 1]) for i in (0, 1)]
    summed = (parts[0] + parts[1]).loss(balance=balance)
    assert float(summed) == pytest.approx(float(one), abs=1e-5)
    per_batch = [
        float(
            segmentation_loss(
                logits[i : i + 1], target[i : i + 1], weight[i : i + 1], balance=balance
            )
        )
        for i in (0, 1)
    ]
    assert float(summed) != pytest.approx(sum(per_batch) / 2, abs=1e-3)


def test_validation_loss_is_one_batch_of_all_regions(deep_unet):
    """A block with no painted object does not score by how sure the model is of the
    background: validation adds its batches up and takes the loss once."""
    from napari_tessera.training.loop import validation_scores

    rng = np.random.default_rng(5)
    model = deep_unet(UNetConfig(base_channels=4, depth=2, n_classes=2))
    classes = [sparse_slice(rng)]
    image = rng.random((SIDE, SIDE)).astype(np.float32)
    sampler = PatchSampler(
        [image[None]], classes, None, patch=64, val_fraction=0.3, rng=np.random.default_rng(0)
    )
    batches = list(sampler.validation_batches(1, 0))
    assert len(batches) >= 2
    with torch.no_grad():
        logits = torch.cat([model(torch.from_numpy(x)) for x, _, _ in batches])
    target = torch.cat([torch.from_numpy(y) for _, y, _ in batches])
    weight = (
        torch.cat([torch.from_numpy(w) for _, _, w in batches])
        if batches[0][2] is not None
        else None
    )
    want = float(segmentation_loss(logits, target, weight, balance=True))
    got, _ = validation_scores(model, sampler, 1, torch.device("cpu"), 1.0, 0, True)
    assert got == pytest.approx(want, abs=1e-5)


def test_loss_of_nothing_annotated_is_zero_with_a_gradient():
    logits = torch.randn(1, 2, 8, 8, requires_grad=True)
    target = torch.full((1, 8, 8), IGNORE)
    loss = segmentation_loss(logits, target)
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None and float(logits.grad.abs().sum()) == 0.0


def test_one_output_loss_is_bce():
    logits = torch.tensor([[[[2.0, -1.0, 0.5]]]])
    target = torch.tensor([[[1, 0, IGNORE]]])
    loss = segmentation_loss(logits, target, dice=0.0)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor([2.0, -1.0]), torch.tensor([1.0, 0.0])
    )
    assert float(loss) == pytest.approx(float(expected), abs=1e-6)


# -- border weights -----------------------------------------------------------------------------
def test_border_weights_gap_between_objects(make_disc):
    shape = (64, 64)
    inst = np.zeros(shape, np.int32)
    inst[make_disc(shape, 32, 22, 8)] = 1  # columns 14..30
    inst[make_disc(shape, 32, 41, 8)] = 2  # columns 33..49
    assert inst[32, 31] == 0 and inst[32, 32] == 0  # a two-pixel gap
    w0 = 10.0
    w = border_weights(inst, w0=w0, sigma=5.0)
    assert w.shape == shape and w.dtype == np.float32

    frac = (inst > 0).mean()
    w_bg, w_fg = 0.5 / (1 - frac), 0.5 / frac  # class-balance weights (mean 1)
    np.testing.assert_allclose(w[inst > 0], w_fg, rtol=1e-5)
    assert (w[inst == 0] >= w_bg - 1e-5).all()
    assert (w >= min(w_bg, w_fg) - 1e-5).all()

    gap = w[32, 31]
    far = w[2, 2]
    assert gap - w_bg > w0 / 2
    assert far == pytest.approx(w_bg, abs=1e-3)
    assert gap > far + w0 / 2
    # without the border term only the class weights remain
    w_plain = border_weights(inst, w0=0)
    np.testing.assert_allclose(w_plain[inst == 0], w_bg, rtol=1e-5)
    # one object alone has no gap: the same pixel is only near one object
    lone = np.where(inst == 1, 1, 0)
    assert border_weights(lone, w0=w0, sigma=5.0)[32, 31] < gap - w0 / 2


def test_border_weights_of_pure_background_are_ones():
    w = border_weights(np.zeros((20, 30), np.int32))
    np.testing.assert_array_equal(w, np.ones((20, 30), np.float32))


# -- validation split ---------------------------------------------------------------------------
def sparse_slice(rng, shape=(SIDE, SIDE)) -> np.ndarray:
    """Scattered annotations over the whole slice: background 0, objects 1, rest IGNORE."""
    c = np.full(shape, IGNORE, np.int64)
    ann = rng.random(shape) < 0.15
    c[ann] = (rng.random(int(ann.sum())) < 0.4).astype(np.int64)
    return c


def leaks(val_mask: np.ndarray, y0: int, x0: int, size: int) -> bool:
    """Whether the window (mirrored reads included) contains a validation pixel."""
    return bool(_window(val_mask, y0, x0, size).any())


def record_places(sampler: PatchSampler, monkeypatch) -> list[tuple[int, int, int]]:
    """Every window the sampler's batches are read from, from now on: ``(slice, y0, x0)``."""
    drawn: list[tuple[int, int, int]] = []
    original = sampler.sample

    def sample(n):
        batch = original(n)
        drawn.extend(sampler.last_windows)
        return batch

    monkeypatch.setattr(sampler, "sample", sample)
    return drawn


def sentinel_images(sampler: PatchSampler, n: int) -> list[np.ndarray]:
    """Images that are 0 except 1e6 on validation pixels: a leak shows up in any patch."""
    return [
        np.where(sampler.validation_mask(s), 1e6, 0.0)[None].astype(np.float32) for s in range(n)
    ]


def test_validation_blocks_never_overlap_training_windows(monkeypatch):
    rng = np.random.default_rng(3)
    classes = [sparse_slice(rng)]
    images = [rng.random((1, SIDE, SIDE)).astype(np.float32)]
    patch = 32
    sampler = PatchSampler(
        images, classes, None, patch=patch, val_fraction=0.3, rng=np.random.default_rng(0)
    )
    assert sampler.val_regions, "expected validation blocks"
    vm = sampler.validation_mask(0)
    assert vm.any() and not vm.all()
    for r in sampler.val_regions:
        assert vm[r.y0 : r.y0 + r.size, r.x0 : r.x0 + r.size].all()

    sampler.images = sentinel_images(sampler, 1)
    drawn = record_places(sampler, monkeypatch)
    size = patch + 2 * ELASTIC_MARGIN
    max_seen = 0.0
    for _ in range(25):
        x, y = sampler.sample(8)[:2]
        assert x.shape == (8, 1, patch, patch) and y.shape == (8, patch, patch)
        max_seen = max(max_seen, float(x.max()))
    assert len(drawn) == 200
    for s, y0, x0 in drawn:
        assert s == 0
        assert not leaks(vm, y0, x0, size), (y0, x0)
    # windows really reach past the border (mirrored reads are exercised)
    assert any(y0 < 0 or x0 < 0 or y0 + size > SIDE or x0 + size > SIDE for _, y0, x0 in drawn)
    # no validation pixel made it into a training patch, even after augmentation
    assert max_seen < 1e3

    # power: the same check catches windows that overlap a block, directly or mirrored
    r = sampler.val_regions[0]
    assert leaks(vm, r.y0 - ELASTIC_MARGIN, r.x0 - ELASTIC_MARGIN, size)
    mask = np.zeros((SIDE, SIDE), bool)
    mask[32:64, 32:64] = True
    y0, x0 = -60, 32  # in-image rows 0..3 are clean; the mirrored rows 1..60 are not
    assert not mask[0 : y0 + size, x0 : x0 + size].any()
    assert leaks(mask, y0, x0, size)


def sampler_with_val_mask(classes, val_mask, patch, seed=0) -> PatchSampler:
    """A sampler whose validation pixels are exactly ``val_mask`` (not drawn at random)."""
    images = [np.zeros((1, *c.shape), np.float32) for c in classes]
    return PatchSampler(
        images,
        classes,
        None,
        patch=patch,
        val_fraction=0.0,
        rng=np.random.default_rng(seed),
        held_out=[val_mask],
    )


def test_window_placement_is_exact_where_validation_leaves_little_room(monkeypatch):
    """Where few painted pixels have a window clear of validation, those are the ones drawn,
    every time: drawing never gives up, and never draws a pixel with no clean window."""
    h, w, patch = 96, 112, 32
    size = patch + 2 * ELASTIC_MARGIN
    rng = np.random.default_rng(7)
    vm = np.zeros((h, w), bool)
    vm[20:30, 30:40] = True
    vm[60:64, 90:100] = True
    vm[40:44, 0:8] = True
    sampler = sampler_with_val_mask([sparse_slice(rng, (h, w))], vm, patch)
    np.testing.assert_array_equal(sampler.validation_mask(0), vm)

    # which window origins are clean, and which pixels can be placed: against brute force
    lo, hi = ELASTIC_MARGIN, ELASTIC_MARGIN + patch
    clean = sampler._clean_origins(0)
    assert clean.shape == (h + patch - 1, w + patch - 1)
    brute = np.array(
        [
            [not leaks(vm, a - hi + 1, b - hi + 1, size) for b in range(w + patch - 1)]
            for a in range(h + patch - 1)
        ]
    )
    assert clean.any() and not clean.all()
    np.testing.assert_array_equal(clean, brute)
    placeable = sampler._placeable(0)
    brute_px = np.array(
        [[brute[y : y + patch, x : x + patch].any() for x in range(w)] for y in range(h)]
    )
    assert placeable.any() and not placeable.all()
    np.testing.assert_array_equal(placeable, brute_px)

    # background painted where no clean window exists, plus five pixels that have one;
    # objects painted on other pixels that have one
    c = np.full((h, w), IGNORE, np.int64)
    c[~placeable & ~vm] = 0
    room = np.flatnonzero(placeable & ~vm)
    few = rng.choice(room, size=5, replace=False)
    c.flat[few] = 0
    c.flat[rng.choice(np.setdiff1d(room, few), size=300, replace=False)] = 1
    assert (c == 0).sum() > 4000
    sampler = sampler_with_val_mask([c], vm, patch)
    drawn = record_places(sampler, monkeypatch)
    for _ in range(40):
        sampler.sample(4)  # the old rejection sampling gave up here (200 draws x 20 shifts)
    assert len(drawn) == 160
    for _s, y0, x0 in drawn:
        assert not leaks(vm, y0, x0, size), (y0, x0)
    fy, fx = np.unravel_index(few, c.shape)
    for _s, y0, x0 in drawn[1::2]:  # patches alternate object, background
        # the kept patch holds one of the five background pixels that have a clean window
        inside = (fy >= y0 + lo) & (fy < y0 + hi) & (fx >= x0 + lo) & (fx < x0 + hi)
        assert inside.any(), (y0, x0)

    # nothing placeable: the sampler says so up front instead of failing mid-training
    everywhere = np.ones((h, w), bool)
    everywhere[0:2, 0:2] = False
    assert not sampler_with_val_mask([c], everywhere, patch).can_place()


def test_whole_slices_held_out_with_three_or_more_slices(monkeypatch):
    rng = np.random.default_rng(5)
    n = 5
    shape = (64, 64)
    classes = [sparse_slice(rng, shape) for _ in range(n)]
    images = [rng.random((1, *shape)).astype(np.float32) for _ in range(n)]
    patch = 32
    sampler = PatchSampler(
        images, classes, None, patch=patch, val_fraction=0.3, rng=np.random.default_rng(1)
    )
    assert sampler.val_regions
    held = {r.s for r in sampler.val_regions}
    assert 1 <= len(held) < n
    assert len(held) == round(0.3 * n)
    for s in range(n):
        vm = sampler.validation_mask(s)
        assert vm.all() if s in held else not vm.any()

    sampler.images = sentinel_images(sampler, n)
    drawn = record_places(sampler, monkeypatch)
    max_seen = 0.0
    for _ in range(25):
        x = sampler.sample(8).x
        max_seen = max(max_seen, float(x.max()))
    assert len(drawn) == 200
    used = {s for s, _, _ in drawn}
    assert not used & held
    assert used == set(range(n)) - held  # every training slice is used
    assert max_seen < 1e3


def test_validation_sees_each_block_as_whole_image_inference_does(deep_unet):
    """With the receptive field as context, a block's logits equal a whole-image pass."""
    from napari_tessera.inference import predict_tiled
    from napari_tessera.normalize import normalize_slice
    from napari_tessera.training.loop import validation_scores

    rng = np.random.default_rng(4)
    model = deep_unet(UNetConfig(base_channels=4, depth=3, n_classes=2))
    classes = [sparse_slice(rng)]
    image = rng.random((SIDE, SIDE)).astype(np.float32)
    norm = normalize_slice(image[None], model.config.normalization).astype(np.float32)
    sampler = PatchSampler(
        [norm], classes, None, patch=64, val_fraction=0.3, rng=np.random.default_rng(0)
    )
    regions = sampler.val_regions
    assert len(regions) >= 2
    whole = predict_tiled(model, image, device="cpu", tile_size=SIDE, halo="exact")[1]
    context = model.exact_halo()
    assert context > 0
    for ctx, should_match in ((context, True), (0, False)):
        seen, worst = 0, 0.0
        for x, y, _w in sampler.validation_batches(2, context=ctx):
            with torch.no_grad():
                p = torch.softmax(model(torch.from_numpy(x)), 1)[:, 1].numpy()
            for k in range(len(x)):
                r = regions[seen]
                seen += 1
                scored = y[k] != IGNORE
                block = classes[0][r.y0 : r.y0 + r.size, r.x0 : r.x0 + r.size]
                assert np.array_equal(y[k][scored], block[block != IGNORE])
                ref = whole[r.y0 : r.y0 + r.size, r.x0 : r.x0 + r.size][block != IGNORE]
                worst = max(worst, float(np.abs(p[k][scored] - ref).max()))
        assert seen == len(regions)
        assert (worst < 1e-5) == should_match, (ctx, worst)
    # validation_scores reads the context it is given
    with_ctx = validation_scores(model, sampler, 2, torch.device("cpu"), 1.0, context)
    without = validation_scores(model, sampler, 2, torch.device("cpu"), 1.0, 0)
    assert with_ctx[0] != pytest.approx(without[0], rel=1e-3)


def test_training_validates_with_the_receptive_field_and_balances_painted_labels(
    dense_data, monkeypatch
):
    """The loop hands the network's halo to validation, and the class balance to the loss in
    sparse mode only (dense labels already carry per-image class weights)."""
    from napari_tessera.training import loop

    image, inst = dense_data
    sparse = np.where(inst > 0, 2, 1).astype(np.uint8)  # everything painted, mostly background
    seen = []
    plain = loop.validation_scores

    def spy(model, sampler, batch, device, dice, context=0, balance=False):
        seen.append((context, model.exact_halo(), balance))
        return plain(model, sampler, batch, device, dice, context, balance)

    monkeypatch.setattr(loop, "validation_scores", spy)

    def final(mode, labels, balance):
        cfg = small_config(mode=mode, steps=5, val_every=5, seed=3, balance=balance)
        return state_copy(train(image, labels, config=cfg).model)

    on, off = final("sparse", sparse, True), final("sparse", sparse, False)
    assert not same_state(on, off)
    assert same_state(final("dense", inst, True), final("dense", inst, False))
    assert seen and all(ctx == halo > 0 for ctx, halo, _ in seen)
    assert [b for *_, b in seen] == [True, False, False, False]


def test_no_validation_without_enough_blocks():
    c = np.full((64, 64), IGNORE, np.int64)
    c[5, 5], c[6, 6] = 0, 1  # everything in one block
    sampler = PatchSampler(
        [np.zeros((1, 64, 64), np.float32)],
        [c],
        None,
        patch=32,
        val_fraction=0.3,
        rng=np.random.default_rng(0),
    )
    assert sampler.val_regions == []
    assert not sampler.validation_mask(0).any()


# -- stop, resume, seeds, time ------------------------------------------------------------------
def test_stop_keeps_the_best_model(dense_data):
    """Validation judges the weights after each validated step and the run returns the best
    judged state."""
    image, labels = dense_data
    torch.manual_seed(0)
    model = UNet(UNetConfig(base_channels=4, depth=2))
    stop = threading.Event()
    n_stop = 12  # not a validation step (5, 10): the stop validates step 12 as well
    states: dict[int, dict[str, torch.Tensor]] = {0: state_copy(model)}

    def on_update(u):
        states[u.step] = state_copy(model)
        if u.step == n_stop:
            stop.set()

    cfg = small_config(steps=100, val_fraction=0.3, val_every=5, lr=2e-3)
    updates, result = drive(
        iter_train(image, labels, config=cfg, model=model, stop=stop), on_update
    )

    assert result.stopped == "requested"
    assert result.steps == n_stop
    assert [u.step for u in updates] == list(range(1, n_stop + 1))
    assert len(result.history) == n_stop
    assert result.model is model
    assert [u.step for u in updates if u.val_iou is not None] == [5, 10]
    validated = {h["step"]: h["val_loss"] for h in result.history if "val_loss" in h}
    assert sorted(validated) == [5, 10, 12]  # the stopped state is validated too
    assert validated[result.best_step] == min(validated.values())  # the lowest loss is kept
    best_iou = next(h["val_iou"] for h in result.history if h["step"] == result.best_step)
    assert result.best_val_iou == best_iou
    final = state_copy(result.model)
    assert close_state(final, states[result.best_step])
    for step in validated:
        if validated[step] > validated[result.best_step]:
            assert not close_state(final, states[step])
    assert not result.model.training
    assert result.model.metadata["provenance"]["stopped"] == "requested"


def test_stop_before_the_first_validation_keeps_the_trained_weights(dense_data):
    image, labels = dense_data
    torch.manual_seed(0)
    model = UNet(UNetConfig(base_channels=4, depth=2))
    initial = state_copy(model)
    stop = threading.Event()
    states = {0: initial}

    def on_update(u):
        states[u.step] = state_copy(model)
        if u.step == 3:
            stop.set()

    cfg = small_config(steps=100, val_fraction=0.3, val_every=25, lr=2e-3)
    _, result = drive(iter_train(image, labels, config=cfg, model=model, stop=stop), on_update)
    assert result.steps == 3 and result.best_step == 3
    assert result.best_val_iou is not None
    final = state_copy(result.model)
    assert close_state(final, states[3])
    assert not close_state(final, initial)


def test_the_run_returns_the_mean_of_its_late_weights(dense_data):
    """The weights at every validation interval of the second half of the plan (steps 6 and
    8 of 8), averaged with their normalisation statistics; not the last step's."""
    image, labels = dense_data
    torch.manual_seed(0)
    model = UNet(UNetConfig(base_channels=4, depth=2))
    states = {}

    def on_update(u):
        states[u.step] = state_copy(model)

    cfg = small_config(steps=8, val_every=2, val_fraction=0.0)
    _, result = drive(iter_train(image, labels, config=cfg, model=model), on_update)
    assert result.averaged == (2, 6, 8)
    assert "mean of the weights at 2 steps from 6 to 8" in result.describe_kept()
    assert result.model.metadata["provenance"]["averaged_steps"] == [2, 6, 8]
    final = state_copy(result.model)
    floats = [k for k, v in final.items() if v.is_floating_point()]  # not the step counters
    want = {k: (states[6][k] + states[8][k]) / 2 for k in floats}
    assert any("running_var" in k for k in want)  # BatchNorm statistics are averaged too
    assert close_state({k: final[k] for k in floats}, want)
    assert not close_state({k: final[k] for k in floats}, {k: states[8][k] for k in floats})


def test_a_run_stopped_in_its_first_half_returns_the_latest_weights(dense_data):
    image, labels = dense_data
    torch.manual_seed(0)
    model = UNet(UNetConfig(base_channels=4, depth=2))
    states = {0: state_copy(model)}
    stop = threading.Event()

    def on_update(u):
        states[u.step] = state_copy(model)
        if u.step == 4:
            stop.set()

    cfg = small_config(steps=10, val_every=2, val_fraction=0.0)
    _, result = drive(iter_train(image, labels, config=cfg, model=model, stop=stop), on_update)
    assert result.best_step == 4 and result.best_val_iou is None and result.averaged is None
    final = state_copy(result.model)
    assert close_state(final, states[4])
    assert not close_state(final, states[3])


def test_stop_before_the_first_step():
    image = nuclei_2d((64, 64), seed=0)
    stop = threading.Event()
    stop.set()
    torch.manual_seed(0)
    updates, result = drive(iter_train(image.image, image.labels, config=small_config(), stop=stop))
    assert updates == []
    assert result.stopped == "requested" and result.steps == 0


def test_resume_continues_step_count(dense_data, tmp_path):
    image, labels = dense_data

    def first_run(ckpt):
        torch.manual_seed(0)
        return drive(
            iter_train(
                image,
                labels,
                config=small_config(steps=20, checkpoint=str(ckpt), checkpoint_every=0),
            )
        )

    ckpt, (first, r1) = with_readable_checkpoint(first_run, tmp_path)
    assert r1.steps == 20 and r1.stopped == "steps"
    assert [u.step for u in first] == list(range(1, 21))
    assert ckpt.is_file()
    assert not list(tmp_path.glob("*.part"))
    state = load_checkpoint(ckpt)
    assert state.step == 20 and len(state.history) == 20
    kept = next(h for h in state.history if h["step"] == state.best_step)
    assert state.best_score == pytest.approx((-kept["val_loss"], kept["val_iou"]))

    updates, r2 = drive(iter_train(image, labels, config=small_config(steps=30), resume=ckpt))
    assert updates[0].step == 21
    assert updates[-1].step == 30
    assert [u.step for u in updates] == list(range(21, 31))
    assert r2.steps == 30 and r2.stopped == "steps"
    assert [h["step"] for h in r2.history] == list(range(1, 31))
    assert r2.history[:20] == r1.history
    assert r2.model.metadata["provenance"]["steps"] == 30
    assert r2.elapsed > state.elapsed  # the clock goes on from the checkpoint's


def interrupted_then_resumed(image, labels, cfg, folder, *, stop_at, model=None):
    """Run ``cfg`` with a checkpoint after every step, stop after ``stop_at`` steps, resume.

    ``model``: a network to train (copied); None builds one from scratch under torch seed 0.
    Returns (checkpoint path, updates before the stop, the step-``stop_at`` weights, resumed
    updates, result).
    """
    at_stop: dict[str, torch.Tensor] = {}

    def first_run(ckpt):
        cfg1 = dataclasses.replace(cfg, checkpoint=str(ckpt), checkpoint_every=0.0)
        stop = threading.Event()
        run_model = copy.deepcopy(model) if model is not None else None
        if model is None:
            torch.manual_seed(0)

        def on_update(u):
            if u.step == stop_at:
                stop.set()
                if run_model is not None:
                    at_stop.update(state_copy(run_model))

        return drive(iter_train(image, labels, config=cfg1, model=run_model, stop=stop), on_update)

    ckpt, (first, r1) = with_readable_checkpoint(first_run, folder)
    assert r1.stopped == "requested" and r1.steps == stop_at
    second, r2 = drive(iter_train(image, labels, config=cfg, resume=ckpt))
    return ckpt, first, at_stop, second, r2


def test_resume_after_stop_equals_uninterrupted_run(dense_data, tmp_path):
    """CPU runs are deterministic, so an interrupted and resumed run must give exactly the
    weights of one uninterrupted run (fine-tuning a given model, no validation)."""
    image, labels = dense_data
    torch.manual_seed(0)
    init = UNet(UNetConfig(base_channels=4, depth=2))
    cfg = small_config(steps=30, val_fraction=0.0)
    full_updates, full = drive(iter_train(image, labels, config=cfg, model=copy.deepcopy(init)))
    _, first, _, second, resumed = interrupted_then_resumed(
        image, labels, cfg, tmp_path, stop_at=20, model=init
    )
    assert [u.step for u in second] == list(range(21, 31))
    assert [u.loss for u in first + second] == [u.loss for u in full_updates]
    assert [u.lr for u in first + second] == [u.lr for u in full_updates]
    assert resumed.steps == full.steps == 30
    # exact: same operations in the same order on one CPU thread
    assert same_state(state_copy(resumed.model), state_copy(full.model))


def test_resume_from_scratch_run_keeps_its_learning_rate(dense_data, tmp_path):
    image, labels = dense_data
    cfg = small_config(steps=30, val_fraction=0.0)
    torch.manual_seed(0)
    full_updates, full = drive(iter_train(image, labels, config=cfg))
    _, first, _, second, resumed = interrupted_then_resumed(
        image, labels, cfg, tmp_path, stop_at=20
    )
    assert [u.loss for u in first] == [u.loss for u in full_updates[:20]]  # same start
    assert [u.lr for u in second] == [u.lr for u in full_updates[20:]]
    assert resumed.model.metadata["provenance"]["trained_from"] == "scratch"
    assert same_state(state_copy(resumed.model), state_copy(full.model))


def test_resume_after_stop_with_validation_equals_uninterrupted_run(dense_data, tmp_path):
    """Validations at 7, 14, 21, 28 (and 30); at the stop (step 20, validated too) the best
    state is an earlier one."""
    image, labels = dense_data
    torch.manual_seed(0)
    init = UNet(UNetConfig(base_channels=4, depth=2))
    cfg = small_config(steps=30, val_fraction=0.3, val_every=7)
    _, full = drive(iter_train(image, labels, config=cfg, model=copy.deepcopy(init)))
    ckpt, _, at_stop, second, resumed = interrupted_then_resumed(
        image, labels, cfg, tmp_path, stop_at=20, model=init
    )
    assert [u.step for u in second] == list(range(21, 31))
    saved = {k: v for k, v in load_checkpoint(ckpt).model.state_dict().items()}
    assert same_state(saved, at_stop), "checkpoint does not hold the weights at the stop"
    assert same_state(state_copy(resumed.model), state_copy(full.model))


def test_runs_repeat_with_the_same_seeds_and_differ_with_another(dense_data):
    image, labels = dense_data
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        torch.manual_seed(1234 + len(runs))  # global torch state must not matter, only the seed
        runs[name] = train(image, labels, config=small_config(steps=8, seed=seed))
    la, lb, lc = ([h["loss"] for h in runs[k].history] for k in "abc")
    assert len(la) == 8
    assert la == lb
    assert same_state(state_copy(runs["a"].model), state_copy(runs["b"].model))
    assert la != lc
    assert not same_state(state_copy(runs["a"].model), state_copy(runs["c"].model))


def test_seed_alone_repeats_a_run(dense_data):
    image, labels = dense_data
    torch.manual_seed(1)
    a = train(image, labels, config=small_config(steps=5, seed=0))
    torch.manual_seed(2)  # e.g. another model was built in between
    b = train(image, labels, config=small_config(steps=5, seed=0))
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    assert same_state(state_copy(a.model), state_copy(b.model))


def test_time_limit_stops_by_time(dense_data):
    image, labels = dense_data
    limit = 2.0
    torch.manual_seed(0)
    updates, result = drive(
        iter_train(
            image,
            labels,
            config=small_config(steps=None, time_limit=limit, val_every=10, calibrate_edges=False),
        )
    )
    assert result.stopped == "time"
    assert result.steps == len(updates) > 3
    assert result.elapsed >= limit
    # the last step began before the limit (it may end after it)
    assert updates[-2].elapsed < limit <= result.elapsed
    times = [0.0] + [u.elapsed for u in updates]
    slowest = max(b - a for a, b in zip(times, times[1:]))
    assert result.elapsed < limit + max(1.0, 3 * slowest)
    # the plan stays the default number of steps: the limit only cut it short
    assert updates[-1].total_steps == 500 and updates[-2].fraction < 1.0
    # progress follows the clock while the limit comes before the planned steps
    assert updates[-2].fraction == pytest.approx(updates[-2].elapsed / limit)


def test_a_time_limit_does_not_change_the_schedule_or_the_result(dense_data):
    """The same command gives the same model however fast the machine is: the learning rate
    follows the planned steps, never the clock."""
    image, labels = dense_data
    plain = drive(iter_train(image, labels, config=small_config(steps=30, seed=0)))
    timed = drive(
        iter_train(image, labels, config=small_config(steps=30, seed=0, time_limit=600.0))
    )
    assert [u.lr for u in plain[0]] == [u.lr for u in timed[0]]
    assert plain[0][-1].lr < plain[0][10].lr  # it decays over the planned steps
    assert same_state(state_copy(plain[1].model), state_copy(timed[1].model))


# -- does it learn? -----------------------------------------------------------------------------
def test_dense_training_beats_an_untrained_model_on_a_new_image(nuclei):
    train_img, test_img = nuclei
    cfg = small_config(
        steps=60, base_channels=8, batch_size=4, val_every=10, val_fraction=0.2, seed=0
    )
    torch.manual_seed(0)
    untrained = UNet(UNetConfig(base_channels=8, depth=2)).eval()
    torch.manual_seed(0)  # the same initial weights for the trained network
    result = train(train_img.image, train_img.labels, config=cfg)
    assert result.steps == 60

    trained_pred = segment(result.model, test_img.image, device="cpu")
    untrained_pred = segment(untrained, test_img.image, device="cpu")
    iou_trained = foreground_iou(trained_pred, test_img.labels)
    iou_untrained = foreground_iou(untrained_pred, test_img.labels)
    assert iou_trained > 0.8, iou_trained
    assert iou_trained > iou_untrained + 0.4, (iou_trained, iou_untrained)

    inst = segment(result.model, test_img.image, device="cpu", instances=True)
    f1 = match_instances(test_img.labels, inst).f1
    f1_untrained = match_instances(
        test_img.labels, segment(untrained, test_img.image, device="cpu", instances=True)
    ).f1
    assert f1 > 0.6 and f1 > f1_untrained + 0.4, (f1, f1_untrained)


def test_sparse_training_end_to_end(nuclei):
    train_img, test_img = nuclei
    painted = paint_sparse(train_img.labels.astype(np.int64))
    assert 0 < (painted > 0).mean() < 0.3  # genuinely sparse
    assert len(np.unique(ndi.label(painted == 2)[0])) - 1 >= 6
    cfg = small_config(mode="sparse", steps=60, base_channels=8, batch_size=4, val_every=10, seed=0)
    torch.manual_seed(0)
    untrained = UNet(UNetConfig(base_channels=8, depth=2)).eval()
    torch.manual_seed(0)
    result = train(train_img.image, painted, config=cfg)
    assert result.model.config.n_classes == 2
    assert result.model.metadata["provenance"]["label_mode"] == "sparse"
    iou_trained = foreground_iou(
        segment(result.model, test_img.image, device="cpu"), test_img.labels
    )
    iou_untrained = foreground_iou(
        segment(untrained, test_img.image, device="cpu"), test_img.labels
    )
    assert iou_trained > 0.6, iou_trained
    assert iou_trained > iou_untrained + 0.3, (iou_trained, iou_untrained)


# -- stacks -------------------------------------------------------------------------------------
def test_stack_with_unpainted_slices_trains(rng):
    slices = [nuclei_2d((64, 64), seed=10 + z) for z in range(3)]
    image = np.stack([s.image for s in slices])
    labels = np.zeros(image.shape, np.uint8)
    for z in (0, 2):  # slice 1 is not painted at all
        labels[z] = paint_sparse(slices[z].labels.astype(np.int64), n_objects=4)
    checked = check_labels(labels, image.shape, "sparse")
    t = make_targets(checked, "sparse")
    assert t.slices == [0, 2]
    assert t.classes.shape == image.shape

    torch.manual_seed(0)
    updates, result = drive(
        iter_train(image, labels, axes="ZYX", config=small_config(mode="sparse", steps=6))
    )
    assert result.steps == 6 and len(updates) == 6
    assert all(np.isfinite(u.loss) for u in updates)
    out = segment(result.model, image, axes="ZYX", device="cpu")
    assert out.shape == image.shape

    # the unpainted slice is never read: its pixels may even be unusable
    bad = image.astype(np.float32)
    bad[1] = np.nan
    torch.manual_seed(0)
    result2 = train(bad, labels, axes="ZYX", config=small_config(mode="sparse", steps=6))
    assert result2.steps == 6
    assert same_state(state_copy(result2.model), state_copy(result.model))


# -- bad inputs ---------------------------------------------------------------------------------
def _sparse_ok(shape=(64, 64)) -> np.ndarray:
    lab = np.zeros(shape, np.uint8)
    lab[5:15, 5:15] = 1
    lab[30:40, 30:40] = 2
    return lab


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("shape", r"labels have shape \(32, 64\).*\(64, 64\)"),
        ("nothing", "nothing is painted"),
        ("only_background", r"only background \(1\) is painted"),
        ("only_objects", r"only objects \(2\) is painted"),
        ("float", "labels must be integers.*float"),
        ("negative", "must not be negative"),
        ("nan", "NaN or infinite"),
        ("dense_empty", "dense labels contain no objects"),
        ("mode", "label mode must be 'sparse' or 'dense'"),
        ("too_small", "too small"),
    ],
)
def test_bad_inputs_raise_input_error(case, match):
    image = nuclei_2d((64, 64), seed=0).image
    labels = _sparse_ok()
    mode = "sparse"
    if case == "shape":
        labels = labels[:32]
    elif case == "nothing":
        labels = np.zeros_like(labels)
    elif case == "only_background":
        labels = np.where(labels == 2, 0, labels)
    elif case == "only_objects":
        labels = np.where(labels == 1, 0, labels)
    elif case == "float":
        labels = labels.astype(np.float32)
    elif case == "negative":
        labels = labels.astype(np.int16)
        labels[0, 0] = -1
    elif case == "nan":
        image = image.astype(np.float32)
        image[40, 40] = np.nan
    elif case == "dense_empty":
        labels = np.zeros_like(labels)
        mode = "dense"
    elif case == "too_small":
        image, labels = image[:8, :8], labels[:8, :8]
        labels[0, 0], labels[1, 1] = 1, 2
    if case == "mode":
        with pytest.raises(InputError, match=match):
            make_targets(check_labels(labels, image.shape, "painted")[None], "painted")
        return
    with pytest.raises(InputError, match=match):
        train(image, labels, config=small_config(mode=mode, steps=1))


def test_model_with_other_in_channels_is_refused():
    image = nuclei_2d((64, 64), seed=0).image
    model = UNet(UNetConfig(in_channels=2, base_channels=4, depth=2))
    before = state_copy(model)
    with pytest.raises(InputError, match=r"reads 2 channel\(s\) but the image has 1"):
        train(image, _sparse_ok(), config=small_config(mode="sparse", steps=1), model=model)
    assert same_state(before, state_copy(model))


def test_labels_beyond_the_models_classes_are_refused():
    image = nuclei_2d((64, 64), seed=0).image
    labels = _sparse_ok()
    labels[50:55, 50:55] = 3  # class 2, but the model has 2 classes (0, 1)
    model = UNet(UNetConfig(n_classes=2, base_channels=4, depth=2))
    with pytest.raises(InputError, match="labels go up to 3 but the model has 2 classes"):
        train(image, labels, config=small_config(mode="sparse", steps=1), model=model)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps": 0}, "steps must be positive"),
        ({"steps": -3}, "steps must be positive"),
        ({"time_limit": -1}, "time limit must be positive"),
        ({"time_limit": 0}, "time limit must be positive"),
        ({"val_fraction": 1.5}, "validation fraction"),
        ({"val_fraction": 1.0}, "validation fraction"),
        ({"val_fraction": -0.1}, "validation fraction"),
        ({"batch_size": 0}, "batch size must be positive"),
        ({"mode": "full"}, "label mode"),
    ],
)
def test_train_config_validation(kwargs, match):
    with pytest.raises(InputError, match=match):
        TrainConfig(**kwargs)


def test_train_config_accepts_sensible_values():
    cfg = TrainConfig(steps=1, time_limit=0.5, val_fraction=0.0)
    assert cfg.steps == 1 and cfg.val_fraction == 0.0


# -- regressions --------------------------------------------------------------------------------
def test_default_patch_size_on_a_small_image(dense_data):
    image, labels = dense_data
    cfg = TrainConfig(mode="dense", steps=2, base_channels=4, depth=2, device="cpu")
    result = train(image, labels, config=cfg)
    assert result.steps == 2
    # the settings picked for a CPU run from scratch are the documented ones, and recorded
    run = result.model.metadata["provenance"]["config"]
    assert run["batch_size"] == 4
    assert run["lr"] == 2e-3 and run["fine_tune"] is False
    assert 32 <= run["patch_size"] <= min(image.shape[-2:])


def test_model_file_with_any_header_length_loads(tmp_path):
    model = UNet(UNetConfig(base_channels=2, depth=1))
    path = tmp_path / "m.safetensors"
    for k in range(300):  # grow the metadata until the header length's low byte is 0x80
        model.metadata = {"note": "x" * k}
        save_model(model, path)
        if header_hits_pickle_check(path):
            break
    else:
        pytest.fail("could not make a header of the right length")
    with open(path, "rb") as f:
        assert struct.unpack("<Q", f.read(8))[0] % 256 == 128
    loaded = load_model(path)
    assert loaded.metadata == model.metadata


def test_checkpoint_with_tensors_it_does_not_use_still_resumes(dense_data, tmp_path):
    """Tensors under a prefix the checkpoint does not read (older files held ``ema.*``) are
    ignored: the run resumes from the file."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    image, labels = dense_data
    ckpt = tmp_path / "run.ckpt.safetensors"
    cfg = small_config(steps=3, val_fraction=0.0, checkpoint=str(ckpt))
    train(image, labels, config=cfg)
    with safe_open(str(ckpt), "pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    tensors |= {f"ema.{k[6:]}": v.clone() for k, v in tensors.items() if k.startswith("model.")}
    old = tmp_path / "old.ckpt.safetensors"
    save_file(tensors, str(old), metadata=meta)
    assert same_state(
        load_checkpoint(old).model.state_dict(), load_checkpoint(ckpt).model.state_dict()
    )
    more = small_config(steps=5, val_fraction=0.0)
    assert train(image, labels, config=more, resume=old).steps == 5


# -- edge offset calibrated on the painted objects ----------------------------------------------
def test_training_stores_the_edge_offset_of_its_painted_objects(nuclei):
    from napari_tessera.training.edges import calibrate_edges, painted_objects

    img = nuclei[0]
    painted = paint_sparse(img.labels.astype(np.int64))
    cfg = small_config(mode="sparse", steps=30, base_channels=8, batch_size=4, seed=0)
    result = train(img.image, painted, config=cfg)
    edges = result.edges
    assert edges is not None and edges.objects >= 3 and edges.scores
    meta = result.model.metadata
    assert meta["provenance"]["edges"] == edges.as_metadata()
    assert meta.get("edge_offset", 0.0) == edges.offset
    # the same calibration, redone from the kept model's own labels of the painted image
    classes = segment(result.model, img.image, device="cpu", edge_offset=0)
    assert calibrate_edges([classes], [painted_objects(painted, "sparse")]) == edges
    # and segment applies it by default
    expected = segment(result.model, img.image, device="cpu", edge_offset=edges.offset)
    np.testing.assert_array_equal(segment(result.model, img.image, device="cpu"), expected)
    # the auto halo of the kept weights, measured on the painted image, is stored with them
    from napari_tessera.axes import layout
    from napari_tessera.halo import (
        AUTO_TOLERANCE,
        measure_halo,
        probe_tile,
        read_probes,
    )

    probes = read_probes(
        result.model, img.image, layout(img.image.shape, "YX"), slices=[0], cover=True
    )
    per_side = -(-img.image.shape[0] // probe_tile(result.model))
    assert len(probes) == per_side * per_side  # probe tiles over the whole painted image
    found = measure_halo(result.model, probes)
    assert meta["halo"] == found.as_metadata() and found.tolerance == AUTO_TOLERANCE


def test_fine_tuning_without_calibration_drops_the_base_models_offset(nuclei):
    img = nuclei[0]
    painted = paint_sparse(img.labels.astype(np.int64))
    torch.manual_seed(0)
    base = UNet(
        UNetConfig(base_channels=4, depth=2), metadata={"edge_offset": 2.0, "halo": {"pixels": 0}}
    )
    cfg = small_config(mode="sparse", steps=3, calibrate_edges=False)
    result = train(img.image, painted, config=cfg, model=base)
    assert result.edges is None and result.model.metadata["provenance"]["edges"] is None
    assert "edge_offset" not in result.model.metadata  # it belonged to the old weights
    assert result.model.metadata["halo"]["pixels"] > 0  # so did its halo: measured anew
    assert result.model.metadata["provenance"]["config"]["calibrate_edges"] is False


def test_dense_labels_calibrate_on_their_instances(dense_data):
    image, labels = dense_data
    result = train(image, labels, config=small_config(steps=3))
    n = len(np.unique(labels)) - 1
    assert result.edges is not None and result.edges.objects == n


def test_fine_tuning_trains_the_model_handed_in(nuclei):
    """As PyTorch trains a module, ``train`` trains the model it is given: a caller who wants
    the start kept (the Train widget, benchmarks) passes a copy."""
    img = nuclei[0]
    painted = paint_sparse(img.labels.astype(np.int64))
    torch.manual_seed(0)
    base = UNet(UNetConfig(base_channels=4, depth=2))
    start = copy.deepcopy(base)
    result = train(img.image, painted, config=small_config(mode="sparse", steps=3), model=base)
    assert result.model is base
    assert any(not torch.equal(start.state_dict()[k], v) for k, v in base.state_dict().items())


def scripted_start(monkeypatch, fit: StartFit, first, later, mean=None):
    """A small start, judged ``fit``, whose validations are scripted: ``first`` for the start,
    ``later`` for every step, ``mean`` (default: ``later``) for the mean of the steps.
    Returns the start and a copy of its weights."""
    from napari_tessera.training import loop

    torch.manual_seed(0)
    start = UNet(UNetConfig(base_channels=4, depth=2))
    seen = []

    def scores(model, sampler, batch, device, dice, context=0, balance=False):
        seen.append(model)
        if len(seen) == 1:
            return first
        if mean is not None and model is not seen[0]:  # the mean is another module
            return mean
        return later

    monkeypatch.setattr(loop, "validation_scores", scores)
    monkeypatch.setattr(loop, "judge_start", lambda *a, **k: fit)
    return start, state_copy(start)


GOOD_START = StartFit(True, 0.9, 0.0)


@pytest.mark.parametrize(
    ("step", "mean"),
    [
        ((0.6, 0.9), (0.4, 0.9)),  # the mean beats the start
        ((0.6, 0.9), (0.7, 0.9)),  # nothing does
        ((0.45, 0.85), (0.4, 0.88)),  # lower losses, but fewer held-out pixels right
        ((0.4, 0.95), (0.55, 0.9)),  # a step beats the start on both, the mean does not
    ],
)
def test_a_good_start_competes_with_the_mean_of_the_steps(dense_data, monkeypatch, step, mean):
    """A good start (judged so) validates at loss 0.5, IoU 0.9. The mean of the steps
    replaces it only with a lower loss and an IoU at least as high, else the start comes back
    unchanged; single steps never do."""
    image, labels = dense_data
    start, want = scripted_start(monkeypatch, GOOD_START, (0.5, 0.9), step, mean)
    cfg = small_config(steps=10, val_every=5, val_fraction=0.3, calibrate_edges=False)
    result = train(image, labels, config=cfg, model=start)
    kept = state_copy(result.model)
    if mean == (0.4, 0.9):
        assert result.averaged == (1, 10, 10) and not same_state(kept, want)
        assert "kept the mean" in result.describe_kept()
    else:
        assert result.averaged is None and result.best_step == 0 and same_state(kept, want)
        assert "the mean of the steps did not validate better" in result.describe_kept()


def test_a_start_judged_poor_is_no_candidate_however_it_validates(dense_data, monkeypatch):
    """A start that does not segment the painted objects (judged so) is left behind even
    when it validates best on the held-out blocks (loss 0.3, IoU 0.95 against 0.6, 0.85)."""
    image, labels = dense_data
    poor = StartFit(False, 0.65, 0.0, "it segments the painted objects at mean IoU 0.65")
    start, want = scripted_start(monkeypatch, poor, (0.3, 0.95), (0.6, 0.85))
    cfg = small_config(steps=10, val_every=5, val_fraction=0.3, calibrate_edges=False)
    result = train(image, labels, config=cfg, model=start)
    assert result.averaged is not None and not same_state(state_copy(result.model), want)
    assert result.model.metadata["provenance"]["start_fit"]["fits"] is False


def test_a_start_kept_says_why():
    def kept(steps: int) -> str:
        result = TrainResult(None, 0, 0.9, steps, 1.0, "requested", planned_steps=100)
        return result.describe_kept()

    assert "stopped before the steps were averaged" in kept(40)
    assert "the mean of the steps did not validate better" in kept(100)


def test_a_resumed_run_still_holds_its_good_start_to_both_scores(dense_data, tmp_path, monkeypatch):
    """The start's scores travel in the checkpoint: after a resume, steps with a lower loss
    but a lower IoU than the start (0.45, 0.85 against 0.5, 0.9) still do not replace it."""
    image, labels = dense_data
    start, want = scripted_start(monkeypatch, GOOD_START, (0.5, 0.9), (0.45, 0.85))
    cfg = small_config(steps=10, val_every=2, val_fraction=0.3, calibrate_edges=False)
    ckpt, *_, resumed = interrupted_then_resumed(
        image, labels, cfg, tmp_path, stop_at=4, model=start
    )
    assert load_checkpoint(ckpt).start_score == (0.5, 0.9)
    assert resumed.best_step == 0 and resumed.averaged is None
    assert same_state(state_copy(resumed.model), want)


def test_fine_tuning_keeps_a_good_start_that_the_steps_make_worse(nuclei, threshold_unet):
    """A start that already segments the painted objects is validated before the first step
    and competes with the mean of the steps: it survives steps that make it worse (here a
    learning rate far too high) and comes back unchanged; a poor start is left behind."""
    img = nuclei[0]
    painted = paint_sparse(img.labels.astype(np.int64))
    good = threshold_unet(threshold=0.2)  # the painted objects come out at mean IoU 0.82
    want = copy.deepcopy(good.state_dict())
    wild = small_config(mode="sparse", steps=10, lr=1.0, calibrate_edges=False)
    kept = train(img.image, painted, config=wild, model=good)
    assert kept.best_step == 0 and kept.steps == 10
    assert all(torch.equal(want[k], v) for k, v in kept.model.state_dict().items())
    assert "kept the starting model" in kept.describe_kept()
    torch.manual_seed(0)
    poor = UNet(UNetConfig(base_channels=4, depth=2))
    moved = train(img.image, painted, config=small_config(mode="sparse", steps=20), model=poor)
    assert moved.best_step > 0 and "kept the mean of the weights" in moved.describe_kept()


def test_a_start_that_disagrees_with_the_painting_is_no_candidate(nuclei, threshold_unet):
    """A start that gets the held-out painting wrong (here one that calls everything
    background) is not kept, even when the steps that follow validate worse."""
    img = nuclei[0]
    painted = paint_sparse(img.labels.astype(np.int64))
    blind = threshold_unet(threshold=50.0)  # foreground nowhere
    wild = small_config(mode="sparse", steps=10, lr=1.0, calibrate_edges=False)
    res = train(img.image, painted, config=wild, model=blind)
    assert res.best_step > 0
