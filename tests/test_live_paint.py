"""Painting while a model trains: the run takes new labels at its next sampling round."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_tessera.inference import predict_tiled
from napari_tessera.synthetic import nuclei_2d
from napari_tessera.training import PaintFeed, TrainConfig, TrainImage, iter_train
from napari_tessera.training import loop as loop_mod

CFG = dict(base_channels=8, depth=2, patch_size=32, batch_size=4, device="cpu", val_every=5)


def painted(truth: np.ndarray, *, inverted: bool = False) -> np.ndarray:
    """Nuclei interiors and background strokes; ``inverted`` swaps what is called object."""
    lab = np.zeros(truth.shape, np.uint8)
    inside = ndi.binary_erosion(truth > 0, iterations=1)
    outside = ndi.binary_erosion(truth == 0, iterations=3)
    obj, bg = (outside, inside) if inverted else (inside, outside)
    lab[obj] = 2
    lab[bg] = 1
    return lab


def run(gen) -> tuple[list, object]:
    updates = []
    while True:
        try:
            updates.append(next(gen))
        except StopIteration as done:
            return updates, done.value


@pytest.fixture(scope="module")
def nuclei():
    return nuclei_2d((96, 96), seed=11)


def object_probability(model, img, where: np.ndarray) -> float:
    prob = predict_tiled(model, img, device="cpu")
    return float(prob[1][where].mean())


@pytest.mark.slow
def test_painting_posted_during_a_run_changes_what_it_learns(nuclei):
    """A run told, after its first round, that the nuclei are background and the space
    between them the object learns the new painting; the same run without the post learns
    the old one. The kept step is chosen on the new painting."""
    img, truth = nuclei.image, nuclei.labels
    cfg = TrainConfig(steps=150, seed=0, **CFG)
    feed = PaintFeed()
    gen = iter_train(img, painted(truth), config=cfg, paint=feed)
    first = next(gen)  # the run has started on the first painting
    feed.post(0, painted(truth, inverted=True))
    updates, res = run(gen)
    updates.insert(0, first)
    taken = [(u.step, u.new_paint) for u in updates if u.new_paint is not None]
    assert taken == [(6, int(np.count_nonzero(painted(truth, inverted=True))))]
    assert not any(u.notice for u in updates)
    assert res.best_step > 5  # judged on the new validation blocks only
    assert res.model.metadata["provenance"]["config"]["paint_updates"] == 1
    nuc = ndi.binary_erosion(truth > 0, iterations=2)
    gap = ndi.binary_erosion(truth == 0, iterations=4)
    assert object_probability(res.model, img, gap) > object_probability(res.model, img, nuc)

    _, plain = run(iter_train(img, painted(truth), config=cfg))
    assert object_probability(plain.model, img, nuc) > object_probability(plain.model, img, gap)
    assert plain.model.metadata["provenance"]["config"]["paint_updates"] == 0


def test_painting_taken_late_restarts_the_mean_of_the_weights(nuclei):
    """Weights trained for the earlier painting are not averaged into the returned model:
    painting taken at step 15 of 20 leaves only step 20 in the mean (else 15 and 20)."""
    img, truth = nuclei.image, nuclei.labels
    cfg = TrainConfig(steps=20, seed=0, **CFG)

    def averaged(post: bool):
        feed = PaintFeed()
        gen = iter_train(img, painted(truth), config=cfg, paint=feed)
        for u in gen:
            if u.step == 15 and post:
                feed.post(0, painted(truth, inverted=True))
            if u.step == 15:
                break
        _, res = run(gen)
        return res.averaged

    assert averaged(post=False) == (2, 15, 20)
    assert averaged(post=True) == (1, 20, 20)


@pytest.mark.parametrize(
    ("new", "why"),
    [
        (lambda lab: np.zeros_like(lab), "nothing is painted"),
        (lambda lab: np.where(lab == 2, 3, lab).astype(lab.dtype), "class"),
        (lambda lab: lab[:-8], "shape"),
    ],
)
def test_unusable_painting_is_reported_and_the_run_goes_on(nuclei, new, why):
    img, truth = nuclei.image, nuclei.labels
    lab = painted(truth)
    feed = PaintFeed()
    feed.post(0, new(lab))
    updates, res = run(iter_train(img, lab, config=TrainConfig(steps=8, **CFG), paint=feed))
    notes = [u.notice for u in updates if u.notice]
    assert len(notes) == 1 and notes[0].startswith("the new painting is not used")
    assert why in notes[0].lower()
    assert res.steps == 8
    assert all(u.new_paint is None for u in updates)
    assert res.model.metadata["provenance"]["config"]["paint_updates"] == 0


def test_a_slice_painted_during_fine_tuning_joins_the_run(nuclei, monkeypatch):
    """Fine-tuning keeps the start's predictions where nothing is painted: a slice painted
    later gets them from the starting weights, and every painted slice reaches the sampler."""
    img, truth = nuclei.image, nuclei.labels
    stack = np.stack([img, img[:, ::-1]])
    first = np.stack([painted(truth), np.zeros_like(truth, np.uint8)])
    both = np.stack([painted(truth), painted(truth[:, ::-1])])
    _, base = run(iter_train(img, painted(truth), config=TrainConfig(steps=2, **CFG)))
    start = copy.deepcopy(base.model)

    seen = []
    real = loop_mod.PatchSampler

    def spy(images, classes, *args, soft=None, **kw):
        seen.append((len(images), soft))
        return real(images, classes, *args, soft=soft, **kw)

    monkeypatch.setattr(loop_mod, "PatchSampler", spy)
    feed = PaintFeed()
    feed.post(0, both)
    items = [TrainImage(stack, first, "ZYX", "stack")]
    updates, res = run(
        iter_train(
            items, config=TrainConfig(steps=7, keep=1.0, **CFG), model=base.model, paint=feed
        )
    )
    # (a sampler may be made twice: again without validation blocks if none fit)
    assert seen[0][0] == 1 and seen[-1][0] == 2
    assert len(seen[0][1]) == 1 and len(seen[-1][1]) == 2
    assert [u.new_paint for u in updates if u.new_paint] == [int(np.count_nonzero(both))]
    # the later slice's kept predictions come from the starting weights, not the trained
    want = predict_tiled(start, stack[1], device="cpu", halo="exact").astype(np.float16)
    now = predict_tiled(res.model, stack[1], device="cpu", halo="exact").astype(np.float16)
    assert np.array_equal(seen[-1][1][1], want)
    assert not np.array_equal(want, now)


def test_the_feed_keeps_the_latest_post_per_image():
    feed = PaintFeed()
    a = np.ones((4, 4), np.uint8)
    feed.post(1, a)
    a[:] = 2  # painting goes on in the layer: the post is a copy
    feed.post(0, a)
    feed.post(0, a * 0)
    got = feed.take()
    assert sorted(got) == [0, 1]
    assert (got[1] == 1).all() and (got[0] == 0).all()
    assert feed.take() == {}
