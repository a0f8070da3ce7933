"""Object matching by IoU (``match_instances``)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_tessera.metrics import match_instances

SHAPE = (64, 64)


def discs(make_disc, centres, r=6) -> np.ndarray:
    lab = np.zeros(SHAPE, np.int32)
    for i, (cy, cx) in enumerate(centres, start=1):
        lab[make_disc(SHAPE, cy, cx, r)] = i
    return lab


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.fixture
def truth(make_disc):
    return discs(make_disc, [(12, 12), (12, 45), (45, 20), (48, 50)])


def test_identical_labels_match_perfectly(truth):
    m = match_instances(truth, truth)
    assert (m.tp, m.fp, m.fn) == (4, 0, 0)
    assert m.f1 == 1.0 and m.precision == 1.0 and m.recall == 1.0
    assert m.mean_matched_iou == pytest.approx(1.0)


def test_ids_need_not_agree(truth):
    relabelled = np.where(truth > 0, truth * 10 + 3, 0)
    m = match_instances(truth, relabelled)
    assert (m.tp, m.fp, m.fn) == (4, 0, 0)


def test_shifted_object_below_threshold_is_not_matched(make_disc):
    t = discs(make_disc, [(30, 30)])
    far = discs(make_disc, [(30, 39)])  # shifted by 9 px
    assert iou(t > 0, far > 0) < 0.5
    m = match_instances(t, far)
    assert (m.tp, m.fp, m.fn) == (0, 1, 1)
    assert m.f1 == 0.0 and m.mean_matched_iou == 0.0
    # power: a small shift keeps IoU above 0.5 and matches
    near = discs(make_disc, [(30, 32)])
    assert iou(t > 0, near > 0) >= 0.5
    m = match_instances(t, near)
    assert (m.tp, m.fp, m.fn) == (1, 0, 0)
    assert m.mean_matched_iou == pytest.approx(iou(t > 0, near > 0))


def test_threshold_is_respected(make_disc):
    t = discs(make_disc, [(30, 30)])
    p = discs(make_disc, [(30, 33)])
    value = iou(t > 0, p > 0)
    assert match_instances(t, p, threshold=value - 1e-3).tp == 1
    assert match_instances(t, p, threshold=value + 1e-3).tp == 0


def test_merged_prediction_matches_at_most_one_object(make_disc):
    t = discs(make_disc, [(30, 24), (30, 37)])  # two neighbouring objects
    merged = (t > 0).astype(np.int32)  # one prediction covering both
    m = match_instances(t, merged)
    assert m.tp <= 1
    assert m.tp + m.fp == 1  # one predicted object
    assert m.tp + m.fn == 2  # two true objects
    assert m.fn >= 1
    assert m.f1 <= 2 / 3 + 1e-12
    # a bigger third object makes the merge fail completely
    t3 = discs(make_disc, [(30, 18), (30, 31), (30, 44)])
    m3 = match_instances(t3, (t3 > 0).astype(np.int32))
    assert (m3.tp, m3.fp, m3.fn) == (0, 1, 3)


def test_split_prediction_matches_at_most_one_part(make_disc):
    t = (discs(make_disc, [(30, 30)], r=10) > 0).astype(np.int32)
    halves = np.where(t > 0, 1 + (np.arange(64)[None, :] >= 30), 0)
    m = match_instances(t, halves)
    assert m.tp <= 1 and m.tp + m.fp == 2 and m.tp + m.fn == 1


def test_empty_prediction_has_zero_recall(truth):
    m = match_instances(truth, np.zeros_like(truth))
    assert (m.tp, m.fp, m.fn) == (0, 0, 4)
    assert m.recall == 0.0 and m.precision == 0.0 and m.f1 == 0.0


def test_empty_truth_and_prediction():
    z = np.zeros(SHAPE, np.int32)
    m = match_instances(z, z)
    assert (m.tp, m.fp, m.fn) == (0, 0, 0)
    assert m.f1 == 1.0  # nothing to find, nothing found


def test_prediction_without_truth_is_all_false_positives(truth):
    m = match_instances(np.zeros_like(truth), truth)
    assert (m.tp, m.fp, m.fn) == (0, 4, 0)
    assert m.precision == 0.0 and m.f1 == 0.0


def test_label_permutation_invariance(truth, make_disc):
    rng = np.random.default_rng(0)
    # an imperfect prediction: one object shifted a little, one shifted away, one missing
    pred = discs(make_disc, [(12, 14), (12, 54), (45, 20)])
    pred[make_disc(SHAPE, 5, 58, 4)] = 7  # a false positive
    ref = match_instances(truth, pred)
    assert (ref.tp, ref.fp, ref.fn) == (2, 2, 2)
    for _ in range(5):
        perm_t = np.concatenate([[0], rng.permutation(np.arange(1, 5)) + 100])
        ids_p = np.unique(pred)[1:]
        new_p = rng.permutation(np.arange(len(ids_p))) + 20
        lut = np.zeros(pred.max() + 1, np.int64)
        lut[ids_p] = new_p
        m = match_instances(perm_t[truth], lut[pred])
        assert (m.tp, m.fp, m.fn) == (ref.tp, ref.fp, ref.fn)
        assert m.mean_matched_iou == pytest.approx(ref.mean_matched_iou)
    # swapping truth and prediction swaps false positives and negatives
    swapped = match_instances(pred, truth)
    assert (swapped.tp, swapped.fp, swapped.fn) == (ref.tp, ref.fn, ref.fp)


def test_shape_mismatch_is_an_error(truth):
    with pytest.raises(ValueError, match="same shape"):
        match_instances(truth, truth[:10])
