"""Corrected results as training data (``training.corrections``)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_tessera.errors import InputError
from napari_tessera.synthetic import nuclei_2d
from napari_tessera.training import TrainConfig, train
from napari_tessera.training.corrections import corrected_labels


def two_touching() -> np.ndarray:
    obj = np.zeros((8, 12), np.int32)
    obj[1:6, 1:5] = 3
    obj[1:6, 5:9] = 7  # touches object 3 along a column
    obj[6:8, 10:12] = 9  # far away, outside the checked region
    return obj


def test_the_checked_region_becomes_complete_labels_and_nothing_else_does():
    obj = two_touching()
    checked = np.zeros(obj.shape, bool)
    checked[:, :3] = True  # reaches into object 3 only
    out = corrected_labels(obj, checked)
    assert out.dtype == np.uint8
    # checked background is background (1), never "not annotated"
    assert (out[checked & (obj == 0)] == 1).all()
    # object 3 reaches into the region: it counts whole (2), but its last column touches 7
    assert (out[1:6, 1:4] == 2).all()
    assert (out[1:6, 4] == 1).all()  # the line between touching objects is background
    assert (out[obj == 7] == 0).all() and (out[obj == 9] == 0).all()  # unchecked: unknown
    assert (out[~checked & (obj == 0)] == 0).all()


def test_earlier_paint_is_kept_outside_the_checked_region():
    obj = two_touching()
    earlier = np.zeros(obj.shape, np.uint8)
    earlier[7, :4] = 1  # a background stroke, outside
    earlier[1:6, 6] = 2  # paint on object 7, outside
    earlier[0, 0] = 2  # wrong paint inside the checked region: the correction wins
    checked = np.zeros(obj.shape, bool)
    checked[:, :3] = True
    out = corrected_labels(obj, checked, earlier=earlier)
    assert (out[7, 3] == 1) and (out[1:6, 6] == 2).all()
    assert out[0, 0] == 1
    # nothing checked: the earlier paint, unchanged
    np.testing.assert_array_equal(corrected_labels(obj, np.zeros_like(checked), earlier), earlier)


def test_a_stack_is_corrected_slice_by_slice():
    obj = np.stack([two_touching(), np.zeros((8, 12), np.int32)])
    checked = np.zeros(obj.shape, bool)
    checked[1] = True  # only the empty slice was checked: all background
    out = corrected_labels(obj, checked)
    assert (out[1] == 1).all() and not out[0].any()


def test_bad_inputs_are_one_line_errors():
    obj = two_touching()
    with pytest.raises(InputError, match="checked region is"):
        corrected_labels(obj, np.ones((3, 3), bool))
    with pytest.raises(InputError, match="integer labels"):
        corrected_labels(obj.astype(float), np.ones(obj.shape, bool))
    with pytest.raises(InputError, match="earlier annotations"):
        corrected_labels(obj, np.ones(obj.shape, bool), earlier=np.zeros((2, 2), np.uint8))


def test_a_checked_correction_trains_like_painting():
    """A checked corner of a segmentation trains a model; unchecked objects never enter."""
    s = nuclei_2d((96, 96), seed=2)
    checked = np.zeros(s.labels.shape, bool)
    checked[:48, :48] = True
    lab = corrected_labels(s.labels, checked)
    assert {0, 1, 2} == set(np.unique(lab))
    assert not lab[60:, 60:].any()
    cfg = TrainConfig(steps=2, base_channels=4, depth=2, patch_size=32, batch_size=2, device="cpu")
    res = train(s.image, lab, config=cfg)
    assert res.steps == 2
