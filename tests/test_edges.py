"""The split rule: moving object edges, the seed depth, and calibrating both on painted objects."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_tessera import InputError
from napari_tessera.postprocess import (
    DEFAULT_MIN_SIZE,
    SplitRule,
    check_edge_offset,
    check_seed_depth,
    model_edge_offset,
    model_min_size,
    model_seed_depth,
    resolve_split,
    shift_edges,
    split_instances,
)
from napari_tessera.training import edges
from napari_tessera.training.edges import (
    calibrate_edges,
    object_ious,
    painted_objects,
    smallest_object,
)

CROSS = ndi.generate_binary_structure(2, 1)
SQUARE = ndi.generate_binary_structure(2, 2)


def discs(shape, centres, r):
    """Instance labels of discs (later ones drawn over earlier ones)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    out = np.zeros(shape, np.int32)
    for k, (cy, cx) in enumerate(centres, 1):
        out[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
    return out


def grown(mask, px: int):
    """``mask`` grown by ``px`` pixels (Euclidean), as an over-segmenting network draws it."""
    return ndi.distance_transform_edt(~mask) <= px


# -- shift_edges ---------------------------------------------------------------------------------
def test_shift_by_one_pixel_is_erosion_and_dilation_with_the_cross():
    mask = discs((40, 40), [(20, 20)], 9) > 0
    classes = mask.astype(np.uint8)
    np.testing.assert_array_equal(shift_edges(classes, 1) > 0, ndi.binary_erosion(mask, CROSS))
    np.testing.assert_array_equal(shift_edges(classes, -1) > 0, ndi.binary_dilation(mask, CROSS))
    # 1.5 px reaches the diagonal neighbours too
    np.testing.assert_array_equal(shift_edges(classes, 1.5) > 0, ndi.binary_erosion(mask, SQUARE))
    assert shift_edges(classes, 0) is classes


def test_shift_keeps_classes_and_grows_into_the_nearest_class():
    classes = np.zeros((20, 30), np.uint8)
    classes[5:15, 3:10] = 1
    classes[5:15, 18:26] = 2
    grown_ = shift_edges(classes, -2)
    assert set(np.unique(grown_)) == {0, 1, 2}
    assert (grown_[classes == 1] == 1).all() and (grown_[classes == 2] == 2).all()
    assert grown_[10, 11] == 1 and grown_[10, 16] == 2  # each grows with its own class
    assert grown_[10, 14] == 0  # 4 px from either: stays background
    shrunk = shift_edges(classes, 2)
    assert shrunk.dtype == classes.dtype
    assert (shrunk[classes == 2] != 1).all() and shrunk[10, 21] == 2
    assert shrunk[5:7].sum() == 0 and shrunk[10, 3:5].sum() == 0  # two rows / columns gone


def test_the_image_border_is_not_background():
    classes = np.zeros((20, 20), np.uint8)
    classes[:, :8] = 1  # an object cut by the left border
    shrunk = shift_edges(classes, 1)
    assert (shrunk[:, 0] == 1).all()  # its border column stays: the object goes on outside
    assert (shrunk[:, 7] == 0).all() and (shrunk[:, 6] == 1).all()
    full = np.ones((5, 5), np.uint8)
    assert (shift_edges(full, 2) == 1).all() and (shift_edges(full * 0, -2) == 0).all()


def test_shrinking_an_overgrown_pair_restores_their_sizes():
    truth = discs((60, 80), [(30, 28), (30, 50)], 11)  # touching discs
    over = grown(truth > 0, 2).astype(np.uint8)
    area = (truth > 0).sum()
    before = (SplitRule(True, min_size=1).labels(over)[0] > 0).sum()
    inst, nxt = SplitRule(True, edge_offset=2, min_size=1).labels(over, start=5)
    assert nxt == 7 and set(np.unique(inst)) == {0, 5, 6}
    assert abs(int((inst > 0).sum()) - area) < 0.2 * abs(int(before) - area)
    # shrinking: split_instances of the shifted foreground
    np.testing.assert_array_equal(
        SplitRule(True, edge_offset=1.5).labels(over)[0],
        split_instances(shift_edges(over, 1.5) > 0)[0],
    )


def test_growing_objects_never_joins_them():
    truth = discs((60, 80), [(30, 28), (30, 52)], 11)  # 2 px apart
    classes = (truth > 0).astype(np.uint8)
    # a seed depth so deep that each connected component is one object
    inst, _ = SplitRule(True, edge_offset=-2, seed_depth=30, min_size=1).labels(classes)
    assert len(np.unique(inst)) == 3  # two objects, both grown
    assert (inst > 0).sum() > (truth > 0).sum()
    # growing before the split would have joined them into one
    joined = split_instances(shift_edges(classes, -2) > 0, seed_depth=30)[0]
    assert len(np.unique(joined)) == 2
    # class labels grow as before
    np.testing.assert_array_equal(
        SplitRule(False, edge_offset=-2).labels(classes)[0], shift_edges(classes, -2)
    )


def _dumbbell(neck: int):
    """One object: two discs (radius 12) joined by a neck ``neck`` px wide."""
    yy, xx = np.mgrid[:40, :80]
    fg = ((yy - 20) ** 2 + (xx - 20) ** 2 <= 144) | ((yy - 20) ** 2 + (xx - 58) ** 2 <= 144)
    fg |= (abs(yy - 20) <= neck // 2) & (xx > 20) & (xx < 58)
    return fg


def test_seed_depth_cuts_only_at_deep_necks():
    wide, thin = _dumbbell(17), _dumbbell(5)
    # the plain rule cuts both, the wide one into more than two pieces; a depth of 4 px keeps
    # the wide neck (about 2.6 px deep) whole and still cuts the thin one (about 8.6 px deep)
    assert split_instances(wide)[0].max() > 2 and split_instances(thin)[0].max() > 2
    assert split_instances(wide, seed_depth=4)[0].max() == 1
    assert split_instances(thin, seed_depth=4)[0].max() == 2
    # every component gets a seed, even one shallower than the depth
    tiny = np.zeros((20, 20), bool)
    tiny[5:8, 5:8] = True
    assert split_instances(tiny, seed_depth=8, min_size=1)[0].max() == 1


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 17, -40, "1", None, True])
def test_bad_edge_offsets_are_refused(bad):
    with pytest.raises(InputError, match="edge offset"):
        check_edge_offset(bad)


@pytest.mark.parametrize("bad", [float("nan"), -1, 65, "2", None])
def test_bad_seed_depths_are_refused(bad):
    with pytest.raises(InputError, match="seed depth"):
        check_seed_depth(bad)


def test_model_split_rule_reads_the_metadata():
    class M:
        metadata = {}

    assert model_edge_offset(M()) == 0.0 and model_seed_depth(M()) == 0.0
    M.metadata = {"edge_offset": 1.5, "seed_depth": 3}
    assert model_edge_offset(M()) == 1.5
    assert resolve_split(M(), instances=True) == SplitRule(True, 1.5, 3.0, 8)
    assert resolve_split(M(), instances=True, seed_depth=0, min_size=2) == SplitRule(
        True, 1.5, 0.0, 2
    )
    M.metadata = {"edge_offset": "wide"}
    with pytest.raises(InputError, match="the model's edge offset"):
        model_edge_offset(M())
    M.metadata = {"seed_depth": -2}
    with pytest.raises(InputError, match="the model's seed depth"):
        resolve_split(M(), instances=True)
    M.metadata = {"min_size": 60}
    assert model_min_size(M()) == 60 and resolve_split(M(), instances=True).min_size == 60
    assert resolve_split(M(), instances=True, min_size=3).min_size == 3
    M.metadata = {"min_size": 2.5}
    with pytest.raises(InputError, match="the model's smallest object size"):
        resolve_split(M(), instances=True)
    assert model_min_size(object()) == DEFAULT_MIN_SIZE == 8


# -- painted objects and their match ------------------------------------------------------------
def test_painted_objects_sparse_and_dense():
    lab = np.zeros((30, 30), np.uint8)
    lab[2:8, 2:8] = 2
    lab[2:8, 8:14] = 2  # touches the first: one painted region
    lab[20:26, 2:8] = 3  # another class
    lab[20:26, 8:14] = 2  # touches it, but is of another class
    lab[15, 15] = 2  # too small
    lab[28, :] = 1  # background stroke
    obj = painted_objects(lab, "sparse")
    assert len(np.unique(obj[obj > 0])) == 3
    assert len(np.unique(obj[2:8, 2:14])) == 1 and obj[15, 15] == 0 and obj[28].max() == 0
    assert obj[22, 4] != obj[22, 10]
    dense = np.zeros((30, 30), np.int32)
    dense[2:8, 2:8] = 7
    dense[2:8, 8:14] = 9  # touching instances stay distinct
    obj = painted_objects(dense, "dense")
    assert len(np.unique(obj[obj > 0])) == 2 and obj[4, 4] != obj[4, 10]


def test_object_ious():
    painted = np.zeros((30, 30), np.int32)
    painted[5:15, 5:15] = 1  # 100 px
    painted[20:25, 20:25] = 2  # 25 px
    pred = np.zeros((30, 30), np.int32)
    pred[5:15, 5:16] = 4  # 110 px, 100 inside object 1
    pred[20:25, 20:23] = 5  # 15 px inside object 2: IoU 15 / 25 ...
    pred[20:25, 23:29] = 6  # ... 10 px inside and 20 outside: IoU 10 / 45
    ious = object_ious(painted, pred)
    np.testing.assert_allclose(ious, [100 / 110, 15 / 25])  # the best single match counts
    pred[20:25, 20:29] = 5  # one object over both: 25 inside, 20 outside
    np.testing.assert_allclose(object_ious(painted, pred)[1], 25 / 45)
    pred[:] = 0  # no prediction: 0
    np.testing.assert_allclose(object_ious(painted, pred), [0, 0])


# -- calibration --------------------------------------------------------------------------------
def _scene(seed=0, n=14):
    """Nuclei (some touching) and a sparse painting of most of them, whole."""
    rng = np.random.default_rng(seed)
    centres, shape = [], (200, 200)
    while len(centres) < n:
        c = rng.integers(15, 185, 2)
        if all(np.hypot(*(c - d)) > 17 for d in centres):
            centres.append(c)
    truth = discs(shape, centres, 9)
    lab = np.zeros(shape, np.uint8)
    for i in range(1, n - 3):
        lab[truth == i] = 2
    lab[~grown(truth > 0, 3) & (np.arange(200)[None, :] % 37 == 0)] = 1  # background strokes
    return truth, lab


@pytest.mark.parametrize("px, expected", [(2, 2.0), (1, 1.0), (0, 0.0)])
def test_calibration_finds_how_far_predictions_overgrow(px, expected):
    truth, lab = _scene()
    pred = grown(truth > 0, px).astype(np.uint8)
    cal = calibrate_edges([pred], [painted_objects(lab, "sparse")])
    assert cal.offset == expected, cal
    objects = painted_objects(lab, "sparse")
    assert cal.objects == len(np.unique(objects)) - 1 >= 8  # touching painted nuclei count once
    assert cal.scores[(expected, cal.seed_depth)] == max(cal.scores.values()) == cal.score


def test_calibration_grows_objects_that_come_out_too_small():
    truth, lab = _scene(seed=1)
    pred = ndi.binary_erosion(truth > 0, SQUARE, iterations=1).astype(np.uint8)
    cal = calibrate_edges([pred], [painted_objects(lab, "sparse")])
    assert cal.offset < 0


def test_calibration_over_several_slices_pools_their_objects():
    truth, lab = _scene(seed=2)
    pred = grown(truth > 0, 2).astype(np.uint8)
    objs = painted_objects(lab, "sparse")
    half = np.where(np.arange(200)[None, :] < 100, objs, 0)
    rest = np.where(np.arange(200)[None, :] >= 100, objs, 0)
    cal = calibrate_edges([pred, pred], [half, rest])
    assert cal.offset == 2.0 and cal.objects == len(np.unique(objs)) - 1


def test_strokes_inside_objects_leave_the_offset_at_zero():
    truth, _ = _scene(seed=3)
    pred = grown(truth > 0, 2).astype(np.uint8)
    strokes = np.zeros_like(truth)
    for i in range(1, 12):  # a short stroke through each nucleus, not the whole nucleus
        cy, cx = (int(v) for v in np.argwhere(truth == i).mean(0))
        strokes[cy - 1 : cy + 2, cx - 4 : cx + 5] = i
    cal = calibrate_edges([pred], [strokes])
    assert cal.offset == 0.0 and "not painted whole" in cal.reason


def test_too_few_objects_leave_the_offset_at_zero():
    truth, _ = _scene(seed=4)
    pred = grown(truth > 0, 2).astype(np.uint8)
    two = np.where(truth <= 2, truth, 0)
    cal = calibrate_edges([pred], [two])
    assert cal.offset == 0.0 and "only 2" in cal.reason and not cal.scores
    assert calibrate_edges([pred], [two], min_objects=2).offset == 2.0


def test_the_smallest_object_kept_is_a_fifth_of_the_median_painted_object():
    assert smallest_object(np.array([100, 500, 400, 0, 300])) == 70  # median 350
    assert smallest_object(np.array([20, 30, 25])) == 8  # never under the default
    assert smallest_object(np.array([], int)) == 8


def _specks(truth, n=12, seed=0):
    """Small fragments (9-25 px) in the background, as an undertrained network draws them."""
    rng = np.random.default_rng(seed)
    out = np.zeros(truth.shape, bool)
    far = ~grown(truth > 0, 4)
    while out.sum() == 0 or ndi.label(out)[1] < n:
        y, x = rng.integers(3, truth.shape[0] - 6, 2)
        h, w = rng.integers(3, 6, 2)
        if far[y : y + h, x : x + w].all() and not grown(out, 2)[y : y + h, x : x + w].any():
            out[y : y + h, x : x + w] = True
    return out


def test_calibration_drops_fragments_much_smaller_than_the_painted_objects(monkeypatch):
    truth, lab = _scene(seed=5)
    specks = _specks(truth)
    pred = ((truth > 0) | specks).astype(np.uint8)
    cal = calibrate_edges([pred], [painted_objects(lab, "sparse")])
    assert cal.min_size == round(0.2 * 253)  # discs of radius 9: 253 px
    assert "objects under 51 px dropped" in cal.describe()
    rule = SplitRule(True, cal.offset, cal.seed_depth, cal.min_size)
    labels = rule.labels(pred)[0]
    assert not (labels[specks] > 0).any()  # every fragment gone
    assert np.count_nonzero(np.unique(labels[truth > 0])) == truth.max()  # every nucleus kept
    # switched off (no fraction), the fragments stay as objects
    monkeypatch.setattr(edges, "MIN_OBJECT_FRACTION", 0.0)
    off = calibrate_edges([pred], [painted_objects(lab, "sparse")])
    assert off.min_size == 8
    assert (SplitRule(True, off.offset, off.seed_depth, off.min_size).labels(pred)[0][specks]).any()


def test_a_kept_rule_keeps_the_base_smallest_object():
    truth, _ = _scene(seed=4)
    pred = grown(truth > 0, 2).astype(np.uint8)
    two = np.where(truth <= 2, truth, 0)
    cal = calibrate_edges([pred], [two], base=SplitRule(True, 1.0, 2.0, 40))
    assert (cal.offset, cal.seed_depth, cal.min_size) == (1.0, 2.0, 40) and "only 2" in cal.reason


def test_calibration_finds_the_seed_depth_that_keeps_big_objects_whole():
    objects = np.zeros((120, 240), np.int32)
    k = 0
    for oy in (0, 60):
        for ox in (0, 80, 160):
            k += 1
            objects[oy + 10 : oy + 50, ox : ox + 80][_dumbbell(17)] = k  # wide necks
    pred = (objects > 0).astype(np.uint8)
    plain = calibrate_edges([pred], [objects], depths=(0.0,))
    cal = calibrate_edges([pred], [objects])
    assert plain.score < 0.8  # the plain rule cuts every object in two
    assert cal.seed_depth > 0 and cal.score > 0.95 and cal.offset == 0.0
    assert "necks" in cal.describe()


# -- segment applies it ---------------------------------------------------------------------------
def test_segment_applies_the_models_edge_offset_unless_told_otherwise(threshold_unet):
    from napari_tessera import segment
    from napari_tessera.synthetic import nuclei_2d

    model = threshold_unet()
    image = nuclei_2d((96, 96), seed=0).image
    plain = segment(model, image, device="cpu")
    inst = segment(model, image, device="cpu", instances=True)
    model.metadata["edge_offset"] = 1.5
    shrunk = segment(model, image, device="cpu")
    np.testing.assert_array_equal(shrunk, shift_edges(plain, 1.5))
    assert (shrunk > 0).sum() < 0.9 * (plain > 0).sum()
    np.testing.assert_array_equal(
        segment(model, image, device="cpu", instances=True),
        SplitRule(True, edge_offset=1.5).labels(plain)[0],
    )
    np.testing.assert_array_equal(segment(model, image, device="cpu", edge_offset=0), plain)
    np.testing.assert_array_equal(
        segment(model, image, device="cpu", instances=True, edge_offset=0.0), inst
    )
    with pytest.raises(InputError, match="edge offset"):
        segment(model, image, device="cpu", edge_offset=float("nan"))
