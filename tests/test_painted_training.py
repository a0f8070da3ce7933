"""Training from a few whole painted objects: the surroundings of painted objects, keeping a
starting model's predictions when fine-tuning, and the split rule stored with the model.

Each mechanism has a test that fails when it is switched off.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from napari_tessera import UNet
from napari_tessera.errors import InputError, ModelFileError
from napari_tessera.inference import predict_tiled, segment
from napari_tessera.io import load_model, save_model
from napari_tessera.postprocess import SplitRule
from napari_tessera.synthetic import nuclei_2d
from napari_tessera.training import IGNORE, TrainConfig, make_targets, train
from napari_tessera.training.edges import calibrate_edges
from napari_tessera.training.labels import surroundings
from napari_tessera.training.losses import kept_predictions
from napari_tessera.training.sampling import PatchSampler


def tiny(**kw) -> TrainConfig:
    base = dict(
        steps=20, base_channels=4, depth=2, patch_size=32, batch_size=2, val_every=5, device="cpu"
    )
    base.update(kw)
    return TrainConfig(**base)


# -- the surroundings of painted objects ------------------------------------------------------
def test_surroundings_of_whole_objects_are_background_and_nothing_else_is():
    lab = np.zeros((1, 40, 40), np.int64)
    lab[0, 10:20, 10:20] = 2
    lab[0, 10:20, 21:30] = 3  # another class, 1 px apart
    lab[0, 35, :] = 1
    t = make_targets(lab, "sparse", surround=2)
    ring = surroundings(lab[0], 2)
    assert ring[9, 15] and ring[8, 15] and not ring[7, 15]  # 1 and 2 px out, not 3
    assert ring[15, 20]  # the gap between the two objects
    assert not ring[lab[0] > 0].any()  # painted pixels keep their label
    np.testing.assert_array_equal(t.classes[0][ring], 0)
    far = (lab[0] == 0) & ~ring
    np.testing.assert_array_equal(t.classes[0][far], IGNORE)  # unpainted stays unpainted
    assert (t.classes[0][lab[0] == 2] == 1).all() and (t.classes[0][lab[0] == 3] == 2).all()
    # switched off: the ring is not annotated
    off = make_targets(lab, "sparse")
    np.testing.assert_array_equal(off.classes[0][ring], IGNORE)


def test_training_uses_the_surroundings_by_default_and_can_leave_them_out(monkeypatch):
    seen = {}
    import napari_tessera.training.data as data

    real = data.set_targets

    def spy(*args, **kwargs):
        seen["surround"] = kwargs.get("surround")
        return real(*args, **kwargs)

    monkeypatch.setattr(data, "set_targets", spy)
    img = nuclei_2d((96, 96), seed=1)
    lab = np.zeros(img.labels.shape, np.int64)
    lab[img.labels == 1] = 2
    lab[img.labels == 2] = 2
    lab[~ndi.binary_dilation(img.labels > 0, iterations=4)] = 1
    train(img.image, lab, config=tiny(mode="sparse", steps=2, calibrate_edges=False))
    assert seen["surround"] == 2.0
    train(img.image, lab, config=tiny(mode="sparse", steps=2, surround=0, calibrate_edges=False))
    assert seen["surround"] == 0


# -- keeping the start's predictions ----------------------------------------------------------
def test_kept_predictions_look_only_at_unpainted_pixels_and_prefer_the_start():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    target = torch.full((2, 8, 8), IGNORE)
    target[:, :4] = 1  # top half painted
    soft = torch.softmax(torch.randn(2, 3, 8, 8), 1)
    loss = kept_predictions(logits, target, soft)
    loss.backward()
    assert logits.grad[:, :, :4].abs().max() == 0  # painted pixels: the labels decide
    assert logits.grad[:, :, 4:].abs().max() > 0
    # smallest when the model predicts what it predicted before
    same = kept_predictions(soft.log(), target, soft)
    assert same < loss
    assert kept_predictions(logits, torch.zeros_like(target), soft) == 0  # all painted


def test_the_sampler_moves_soft_targets_with_the_pixels():
    rng = np.random.default_rng(0)
    truth = nuclei_2d((96, 96), seed=2).labels > 0
    classes = np.where(truth, 1, 0).astype(np.int64)
    soft = np.stack([~truth, truth]).astype(np.float32)  # one-hot of the same map
    img = truth[None].astype(np.float32)
    sampler = PatchSampler([img], [classes], None, patch=32, val_fraction=0.0, rng=rng, soft=[soft])
    batch = sampler.sample(16)
    assert batch.soft.shape == (16, 2, 32, 32)
    agree = (batch.soft.argmax(1) == batch.y).mean()
    assert agree > 0.97  # flips, rotations and the elastic warp move them together


def _start_and_paint():
    """A model trained densely on one image, and a painting of a few objects of another."""
    a, b = nuclei_2d((128, 128), seed=3), nuclei_2d((128, 128), seed=4)
    cfg = tiny(mode="dense", steps=60, base_channels=8, batch_size=4, seed=0)
    start = train(a.image, a.labels, config=cfg).model
    lab = np.zeros(b.labels.shape, np.int64)
    for i in (1, 2, 3):
        lab[b.labels == i] = 2
    lab[:, :6] = np.where(b.labels[:, :6] == 0, 1, lab[:, :6])
    return start, b, lab


@pytest.mark.slow
def test_fine_tuning_keeps_the_start_where_nothing_is_painted():
    start, b, lab = _start_and_paint()
    before = predict_tiled(start, b.image, device="cpu", halo="exact")[1]
    moved = {}
    for keep in (3.0, 0.0):
        cfg = tiny(
            mode="sparse",
            steps=40,
            seed=1,
            keep=keep,
            lr=3e-3,
            val_fraction=0,  # the last weights of both runs, not a step validation picked
            calibrate_edges=False,
        )
        res = train(b.image, lab, config=cfg, model=_copy(start))
        after = predict_tiled(res.model, b.image, device="cpu", halo="exact")[1]
        moved[keep] = float(np.abs(after - before)[lab == 0].mean())
    # switched off, the unpainted pixels drift much further from the start
    assert moved[3.0] < 0.7 * moved[0.0], moved


def _copy(model: UNet) -> UNet:
    m = UNet(model.config, metadata=dict(model.metadata))
    m.load_state_dict(model.state_dict())
    return m


# -- the split rule stored with the model -----------------------------------------------------
def test_training_stores_the_calibrated_seed_depth_and_segment_applies_it(tmp_path):
    img = nuclei_2d((128, 128), seed=5)
    lab = np.zeros(img.labels.shape, np.int64)
    for i in range(1, 9):
        lab[img.labels == i] = 2
    lab[~ndi.binary_dilation(img.labels > 0, iterations=4) & (np.arange(128) % 9 == 0)] = 1
    res = train(img.image, lab, config=tiny(mode="sparse", steps=30, base_channels=8, seed=0))
    meta = res.model.metadata
    assert meta["provenance"]["edges"]["seed_depth"] == res.edges.seed_depth
    assert meta.get("seed_depth", 0.0) == res.edges.seed_depth
    assert meta["min_size"] == res.edges.min_size > 8  # a fifth of the median painted nucleus
    classes = segment(res.model, img.image, device="cpu", edge_offset=0)
    assert calibrate_edges([classes], [_objects(lab)]) == res.edges
    rule = SplitRule(True, res.edges.offset, res.edges.seed_depth, res.edges.min_size)
    np.testing.assert_array_equal(
        segment(res.model, img.image, device="cpu", instances=True), rule.labels(classes)[0]
    )
    # a stored depth travels with the model file; a bad one is refused on load
    res.model.metadata["seed_depth"] = 5.0
    path = save_model(res.model, tmp_path / "m.safetensors")
    deep = segment(load_model(path), img.image, device="cpu", instances=True)
    small = res.edges.min_size
    np.testing.assert_array_equal(
        deep, SplitRule(True, res.edges.offset, 5.0, small).labels(classes)[0]
    )
    np.testing.assert_array_equal(
        segment(load_model(path), img.image, device="cpu", instances=True, seed_depth=0),
        SplitRule(True, res.edges.offset, 0.0, small).labels(classes)[0],
    )
    res.model.metadata["seed_depth"] = 1e6
    bad = save_model(res.model, tmp_path / "bad.safetensors")
    with pytest.raises(ModelFileError, match="seed depth"):
        load_model(bad)
    res.model.metadata.update(seed_depth=0.0, min_size=-3)
    bad = save_model(res.model, tmp_path / "bad_size.safetensors")
    with pytest.raises(ModelFileError, match="smallest object size"):
        load_model(bad)


def _objects(lab):
    from napari_tessera.training.edges import painted_objects

    return painted_objects(lab, "sparse")


def test_a_painted_region_cut_into_object_sized_parts_is_not_penalised():
    from napari_tessera.training.edges import object_ious

    yy, xx = np.mgrid[:60, :120]
    disc = lambda cy, cx: (yy - cy) ** 2 + (xx - cx) ** 2 <= 100  # noqa: E731
    painted = np.zeros((60, 120), np.int32)
    painted[disc(30, 20) | disc(30, 38)] = 1  # two touching objects painted as one region
    painted[disc(30, 90)] = 2  # a single object
    pred = np.zeros_like(painted)
    pred[disc(30, 20)] = 1
    pred[disc(30, 38) & ~disc(30, 20)] = 2  # the region cut into its two objects
    pred[disc(30, 90) & (xx < 90)] = 3  # the single object cut in two halves
    pred[disc(30, 90) & (xx >= 90)] = 4
    half = 0.5 * np.median([(painted == 1).sum(), (painted == 2).sum()])
    ious = object_ious(painted, pred, min_part=half)
    assert ious[0] > 0.99  # the joined region: its two object-sized parts together
    assert ious[1] < 0.6  # the single object: its halves are under half a painted object
    # without the allowance (the plain best match), the joined region is penalised too
    assert object_ious(painted, pred)[0] < 0.6


def _disc_grid():
    """Twelve separate discs (radius 10) on a 200 x 300 image: ``(yy, xx, objects)``."""
    yy, xx = np.mgrid[:200, :300]
    objects = np.zeros((200, 300), np.int32)
    for k, (cy, cx) in enumerate(((y, x) for y in (30, 90, 150) for x in range(30, 300, 70)), 1):
        objects[(yy - cy) ** 2 + (xx - cx) ** 2 <= 100] = k
    return yy, xx, objects


def test_scratch_takes_the_best_rule_fine_tuning_needs_most_objects_to_gain():
    """From scratch the best-scoring rule wins; a start's rule (fine-tuning) gives way only to
    a gain that most objects share, not one carried by one object of a dozen."""
    yy, xx, objects = _disc_grid()
    k = int(objects.max())
    # one more object: two discs joined by a wide neck, which the plain rule cuts in two
    wide = ((yy - 20) ** 2 + (xx - 20) ** 2 <= 144) | ((yy - 20) ** 2 + (xx - 58) ** 2 <= 144)
    wide |= (abs(yy - 20) <= 8) & (xx > 20) & (xx < 58)
    objects[np.roll(wide, (170, 200), (0, 1)) & (objects == 0)] = k + 1
    pred = (objects > 0).astype(np.uint8)  # a perfect prediction
    cal = calibrate_edges([pred], [objects])
    deeper = max(v for (o, d), v in cal.scores.items() if o == 0)
    assert deeper > cal.scores[(0.0, 0.0)] + 0.01  # a deeper seed keeps that one object whole
    assert cal.offset == 0.0 and cal.seed_depth > 0 and cal.reason == "calibrated"
    kept = calibrate_edges([pred], [objects], trust_base=True)
    assert (kept.offset, kept.seed_depth) == (0.0, 0.0) and "clearly" in kept.reason


def test_calibration_keeps_a_base_rule_unless_another_is_clearly_better():
    """Fine-tuning starts from the start model's split rule, not from the plain one."""
    _, _, objects = _disc_grid()
    pred = (objects > 0).astype(np.uint8)  # perfect: most rules match every object
    cal = calibrate_edges([pred], [objects], base=SplitRule(True, 0.0, 3.0), trust_base=True)
    assert (cal.offset, cal.seed_depth) == (0.0, 3.0) and "clearly" in cal.reason
    assert "necks 3 px deep" in cal.describe()
    # objects predicted 2 px too large: shrinking is clearly better than the base rule
    grown = (ndi.distance_transform_edt(objects == 0) <= 2).astype(np.uint8)
    cal = calibrate_edges([grown], [objects], base=SplitRule(True, 0.0, 3.0), trust_base=True)
    assert cal.offset == 2.0 and cal.reason == "calibrated"


def test_only_fine_tuning_asks_for_clear_evidence_against_the_start_rule(monkeypatch):
    import napari_tessera.training.loop as loop

    seen = []
    real = loop.calibrate_edges

    def spy(*args, **kwargs):
        seen.append((kwargs.get("base"), kwargs.get("trust_base")))
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "calibrate_edges", spy)
    start, b, lab = _start_and_paint()
    start.metadata["seed_depth"] = 2.0
    seen.clear()
    train(b.image, lab, config=tiny(mode="sparse", steps=2))
    train(b.image, lab, config=tiny(mode="sparse", steps=2), model=_copy(start))
    small = start.metadata.get("min_size", 8)  # the start's own, from its painted objects
    assert seen == [(SplitRule(True), False), (SplitRule(True, 0.0, 2.0, small), True)]


# -- how far the kept model agrees with the painting ------------------------------------------
def test_paint_agreement_judges_the_painted_background_and_the_objects_iou():
    from napari_tessera.training.agreement import WARN_BACKGROUND, paint_agreement
    from napari_tessera.training.labels import painted_background

    lab = np.zeros((4, 5), np.int64)
    lab[0] = 1  # five pixels painted background
    lab[1, :2], lab[1, 2:] = 2, 3  # objects of two classes
    bg = painted_background(lab, "sparse")
    np.testing.assert_array_equal(bg, lab == 1)
    np.testing.assert_array_equal(painted_background(lab, "dense"), lab == 0)  # 0 = background
    pred = np.zeros((4, 5), np.int64)
    pred[0, 0] = 1  # one painted background pixel called object
    pred[1] = 0  # objects called background: the objects' IoU judges them, not this share
    pred[2:] = 2  # not painted: not judged
    a = paint_agreement([pred], [bg], objects_iou=0.8)
    assert (a.background_wrong, a.background_pixels) == (0.2, 5)
    assert not a.learnt and a.describe().startswith("the model has not learnt the painting")
    assert "it calls 20% of the painted background object" in a.describe()
    pred[0, 0] = 0
    a = paint_agreement([pred], [bg], objects_iou=0.8)
    assert a.learnt and a.describe() == "the model calls 0% of the painted background object"
    low = paint_agreement([pred], [bg], objects_iou=0.45)
    assert not low.learnt and "the painted objects come out at mean IoU 0.45" in low.describe()
    assert paint_agreement([pred], [bg]).learnt  # not calibrated: the background alone
    # the limit: a tenth of the painted background is still learnt, more is not
    ten = np.ones((2, 10), bool)
    wrong = np.zeros((2, 10), np.int64)
    wrong[0, :2] = 1
    assert paint_agreement([wrong], [ten]).background_wrong == WARN_BACKGROUND
    assert paint_agreement([wrong], [ten]).learnt
    wrong[0, 2] = 1
    assert not paint_agreement([wrong], [ten]).learnt


def test_the_run_reports_how_far_the_kept_model_agrees_with_the_painting():
    img = nuclei_2d((128, 128), seed=5)
    lab = np.zeros(img.labels.shape, np.int64)
    for i in range(1, 9):
        lab[img.labels == i] = 2
    lab[~ndi.binary_dilation(img.labels > 0, iterations=4) & (np.arange(128) % 9 == 0)] = 1
    res = train(img.image, lab, config=tiny(mode="sparse", steps=30, base_channels=8, seed=0))
    classes = segment(res.model, img.image, device="cpu", edge_offset=0)
    bg = lab == 1
    a = res.agreement
    # only what was painted: not the band of background the run adds around painted objects
    assert a.background_pixels == bg.sum()
    # the kept (returned) weights, segmenting the image as a user would
    assert a.background_wrong == pytest.approx(np.mean(classes[bg] != 0))
    assert a.objects_iou == res.edges.score
    assert res.model.metadata["provenance"]["paint_agreement"] == a.as_metadata()


def test_an_image_of_a_set_painted_with_background_only_is_judged_too():
    from napari_tessera.training import TrainImage

    img = nuclei_2d((96, 96), seed=2)
    lab = np.zeros(img.labels.shape, np.int64)
    lab[img.labels == 1], lab[img.labels == 2] = 2, 2
    lab[~ndi.binary_dilation(img.labels > 0, iterations=4) & (np.arange(96) % 9 == 0)] = 1
    only_bg = np.zeros_like(lab)
    only_bg[:4, :] = 1  # an image where only background is painted
    res = train(
        [TrainImage(img.image, lab), TrainImage(img.image, only_bg)],
        config=tiny(mode="sparse", steps=4),
    )
    assert res.agreement.background_pixels == (lab == 1).sum() + (only_bg == 1).sum()


# -- validation: only fine-tuning holds painting out ------------------------------------------
def test_from_scratch_every_painted_pixel_trains_fine_tuning_holds_some_out(monkeypatch):
    """From scratch the returned weights are the mean of the second half, which needs no
    validation, so no painting is held out; a fine-tuning start must prove itself against
    painting the run does not train on."""
    import napari_tessera.training.loop as loop

    samplers = []
    real = loop.PatchSampler

    def spy(*args, **kwargs):
        samplers.append(real(*args, **kwargs))
        return samplers[-1]

    monkeypatch.setattr(loop, "PatchSampler", spy)
    s = nuclei_2d((128, 128), seed=4)
    painted = np.where(s.labels > 0, 2, 1).astype(np.uint8)
    cfg = tiny(steps=4, calibrate_edges=False)
    assert cfg.val_fraction is None

    def trainable(sampler) -> int:
        return sum(len(ix) for pool in sampler._candidates for _, ix in pool)

    scratch = train(s.image, painted, config=cfg)
    run = scratch.model.metadata["provenance"]["config"]
    assert run["val_fraction"] == 0 and run["validation_regions"] == 0
    assert not samplers[-1].val_regions
    assert trainable(samplers[-1]) == painted.size  # every painted pixel can be drawn

    tuned = train(s.image, painted, config=cfg, model=scratch.model)
    run = tuned.model.metadata["provenance"]["config"]
    assert run["val_fraction"] == loop.FINE_TUNE_VAL_FRACTION and run["validation_regions"] > 0
    assert 0 < trainable(samplers[-1]) < painted.size

    # an explicit share holds painting out from scratch too
    train(s.image, painted, config=tiny(steps=2, calibrate_edges=False, val_fraction=0.3))
    assert samplers[-1].val_regions and trainable(samplers[-1]) < painted.size

    # stopping early is judged by validation: from scratch it needs a share held out
    with pytest.raises(InputError, match="patience stops a run by its validation"):
        train(s.image, painted, config=tiny(steps=2, patience=2))
