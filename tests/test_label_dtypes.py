"""One rule for the dtype of labels (:func:`napari_tessera.postprocess.labels_dtype`), and
instance ids that stay unique when slices are labelled one at a time."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr

from _helpers import run
from napari_tessera import chunked, segment
from napari_tessera.axes import layout
from napari_tessera.errors import InputError
from napari_tessera.images import read_image
from napari_tessera.io import load_model
from napari_tessera.postprocess import ids_after, labels_dtype, offset_ids
from napari_tessera.synthetic import nuclei_stack

SETTINGS = dict(tile_size=64, halo="exact", device="cpu")


def read_zarr(path) -> np.ndarray:
    return np.asarray(zarr.open_array(str(path), mode="r")[...])


@pytest.mark.parametrize("instances", [False, True])
def test_cli_python_and_zarr_runner_give_one_dtype(
    saved_threshold_model, tmp_path, capsys, instances
):
    stack = nuclei_stack((2, 64, 64), seed=5).image
    model = load_model(saved_threshold_model)
    api = segment(model, stack, axes="ZYX", instances=instances, link_z=False, **SETTINGS)
    # a few objects, ids a uint8 would hold: still the one type for instances
    assert (1 < api.max() < 256) if instances else api.max() == 1
    kw = dict(axes="ZYX", instances=instances, link_z=False, **SETTINGS)
    runner = chunked.segment_to_zarr(model, stack, tmp_path / "r.zarr", **kw)
    tifffile.imwrite(tmp_path / "s.tif", stack, metadata={"axes": "ZYX"})
    got = {"python": api, "zarr runner": read_zarr(runner)}
    for suffix in ("tif", "zarr"):
        out = tmp_path / f"cli.{suffix}"
        argv = ["segment", tmp_path / "s.tif", "-o", out, "--model", saved_threshold_model]
        argv += ["--tile-size", "64", "--halo", "exact", "--device", "cpu", "-q"]
        code, _, err = run(argv + (["--instances", "2d"] if instances else []), capsys)
        assert code == 0, err
        got[f"cli {suffix}"] = read_image(out)[0] if suffix == "tif" else read_zarr(out)
    want = np.dtype(np.uint32 if instances else np.uint8)
    assert labels_dtype(instances) == want
    assert {k: v.dtype for k, v in got.items()} == dict.fromkeys(got, want)
    for name, labels in got.items():
        np.testing.assert_array_equal(labels, api, err_msg=name)


def test_offset_ids_raises_ids_and_keeps_the_background():
    labels = np.array([[0, 1, 2], [2, 0, 3]], np.int32)
    out = offset_ids(labels, 10)
    assert out.dtype == labels_dtype(True)
    np.testing.assert_array_equal(out, [[0, 11, 12], [12, 0, 13]])
    np.testing.assert_array_equal(offset_ids(labels, 0), labels)
    assert offset_ids(np.zeros((2, 2), np.uint8), 5).dtype == np.uint32  # no ids: zeros
    assert not offset_ids(np.zeros((2, 2), np.uint8), 5).any()
    with pytest.raises(InputError, match="too many objects"):
        offset_ids(labels, 2**32 - 3)


def test_ids_of_one_slice_continue_after_those_of_the_others():
    stack = np.zeros((3, 4, 4), np.uint16)
    stack[0, :2] = 5
    stack[1, 2:] = 9  # the slice that is redone: its own old ids do not count
    stack[2, 1] = 7
    new = np.array([[0, 1, 1, 0], [2, 2, 0, 0]] * 2, np.int32)
    out = ids_after(new, stack, (1,))
    assert out.dtype == np.uint32
    np.testing.assert_array_equal(out, np.where(new > 0, new + 7, 0))
    np.testing.assert_array_equal(ids_after(new, None, (1,)), new)  # no other slices
    tz = np.zeros((2, 3, 4, 4), np.uint32)  # T, Z: an index per stack axis
    tz[1, 2] = 40
    assert ids_after(new, tz, (0, 1)).max() == 42 and ids_after(new, tz, (1, 2)).max() == 2


def test_slices_put_one_at_a_time_into_a_zarr_array_get_unique_ids(tmp_path):
    lay = layout((4, 16, 16), "ZYX")
    first = np.zeros((16, 16), np.int32)
    first[2:6, 2:6], first[9:12, 9:12] = 1, 2
    second = np.zeros((16, 16), np.int32)
    second[4:8, 4:8] = 1
    store = chunked.slice_store(tmp_path / "s.zarr", lay, instances=True)
    assert store.dtype == labels_dtype(True) and store.attrs["axes"] == "ZYX"
    assert store.chunks == chunked.label_chunks(lay)
    chunked.put_slice(store, (3,), first, True)
    chunked.put_slice(store, (0,), second, True)  # any order
    chunked.put_slice(store, (1,), np.zeros((16, 16), np.int32), True)  # no objects
    got = np.asarray(zarr.open_array(str(tmp_path / "s.zarr"), mode="r")[...])
    np.testing.assert_array_equal(got[3], first)
    np.testing.assert_array_equal(got[0], np.where(second > 0, 3, 0))
    assert not got[[1, 2]].any() and store.attrs[chunked.MAX_ID] == 3
    classes = chunked.slice_store(tmp_path / "c.zarr", lay, instances=False)
    chunked.put_slice(classes, (2,), (first > 0).astype(np.int64), False)
    assert classes.dtype == labels_dtype(False) and chunked.MAX_ID not in classes.attrs
    np.testing.assert_array_equal(np.asarray(classes[2]), first > 0)
