"""3D objects from 2D slices: a Z stack's objects are linked through the slices."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from _helpers import run
from napari_tessera import segment
from napari_tessera.images import read_image
from napari_tessera.io import load_model
from napari_tessera.metrics import match_instances
from napari_tessera.postprocess import SplitRule, link_through_z
from napari_tessera.synthetic import nuclei_3d

RULE = SplitRule(instances=True, min_size=8)


def ball(shape, centre, radius, spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    d2 = sum(((g * s - c * s) / radius) ** 2 for g, c, s in zip(grids, centre, spacing))
    return d2 <= 1.0


@pytest.mark.parametrize("anisotropy", [1.0, 2.0, 4.0])
def test_two_cells_touching_in_z_stay_apart(anisotropy):
    """Two round cells, one on top of the other, touching: one object each, at any Z step
    (their cross-sections overlap in every slice near the contact, so matching 2D objects
    slice to slice would join them)."""
    z = int(48 / anisotropy)
    r = 10.0
    spacing = (anisotropy, 1.0, 1.0)
    low = ball((z, 40, 40), (14 / anisotropy, 20, 20), r, spacing)
    high = ball((z, 40, 40), ((14 + 1.9 * r) / anisotropy, 20, 20), r, spacing)
    fg = (low | high).astype(np.uint8)
    labels, nxt = RULE.labels_3d(fg, spacing)
    assert nxt == 3
    truth = low.astype(int) + 2 * (high & ~low)
    assert match_instances(truth, labels).f1 == 1.0
    flat, _ = ndi.label(fg)  # what plain connected components give: one blob
    assert flat.max() == 1


def test_a_dim_slice_does_not_cut_an_object():
    """A cell whose middle slice came out thinner (dim): still one object."""
    fg = ball((21, 40, 40), (10, 20, 20), 9).astype(np.uint8)
    fg[10] = ndi.binary_erosion(fg[10], iterations=2)
    labels, nxt = RULE.labels_3d(fg, (1.0, 1.0, 1.0))
    assert nxt == 2 and (labels[fg > 0] == 1).all()


def test_time_points_are_never_linked():
    """TZYX: each time point's stack is linked on its own; the same cell at two times gets two
    ids. TYX (no Z): nothing is linked."""
    cell = ball((9, 32, 32), (4, 16, 16), 6).astype(np.uint8)
    series = np.stack([cell, cell])  # T, Z, Y, X
    flat = series.reshape(-1, 32, 32)
    labels = link_through_z(flat, "TZ", (2, 9), RULE, (1.0, 1.0, 1.0)).reshape(series.shape)
    assert set(np.unique(labels[0])) == {0, 1} and set(np.unique(labels[1])) == {0, 2}


def test_segment_links_a_stack_and_the_ids_do_not_depend_on_tiles(saved_threshold_model):
    """With instances, a ZYX image gives 3D objects (``link_z=False``: each slice's); tile
    sizes do not change them (exact halo), and a TZYX series is linked per time point."""
    model = load_model(saved_threshold_model)
    s = nuclei_3d((24, 96, 96), anisotropy=2.0, seed=4)
    kw = dict(axes="ZYX", instances=True, device="cpu", halo="exact", voxel_size=(2, 1, 1))
    big = segment(model, s.image, tile_size=128, **kw)
    small = segment(model, s.image, tile_size=64, **kw)
    np.testing.assert_array_equal(big, small)
    assert match_instances(s.labels, big).f1 > 0.85
    per_slice = segment(model, s.image, tile_size=128, link_z=False, **kw)
    assert match_instances(s.labels, per_slice).f1 < 0.2
    series = segment(model, np.stack([s.image, s.image]), tile_size=128, **{**kw, "axes": "TZYX"})
    first, second = series[0], series[1]
    assert not set(np.unique(first[first > 0])) & set(np.unique(second[second > 0]))
    assert match_instances(first, second - np.where(second > 0, big.max(), 0)).f1 == 1.0


def test_cli_gives_3d_objects_unless_told_2d(saved_threshold_model, tmp_path, capsys):
    import tifffile

    s = nuclei_3d((16, 64, 64), anisotropy=2.0, seed=6)
    tifffile.imwrite(tmp_path / "s.tif", s.image, metadata={"axes": "ZYX"})
    base = ["segment", tmp_path / "s.tif", "--model", saved_threshold_model, "-q"]
    code, _, err = run([*base, "-o", tmp_path / "l3.tif", "--instances"], capsys)
    assert code == 0, err
    code, _, err = run([*base, "-o", tmp_path / "l2.tif", "--instances", "2d"], capsys)
    assert code == 0, err
    linked, flat = read_image(tmp_path / "l3.tif")[0], read_image(tmp_path / "l2.tif")[0]
    spans = [len(np.unique(np.nonzero(linked == i)[0])) for i in np.unique(linked[linked > 0])]
    assert max(spans) > 3  # objects through several slices
    assert all(len(np.unique(np.nonzero(flat == i)[0])) == 1 for i in np.unique(flat[flat > 0]))
    assert match_instances(s.labels, linked).f1 > match_instances(s.labels, flat).f1 + 0.5


def test_the_z_step_comes_from_the_option_or_the_file(saved_threshold_model, tmp_path, capsys):
    """A stack of 2 um slices at 0.5 um pixels: linked with a Z step of 4 pixels, from
    --voxel-size or from the TIFF's ImageJ metadata; the same labels as the Python call."""
    import tifffile

    s = nuclei_3d((12, 64, 64), anisotropy=4.0, seed=7)
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, s.image, metadata={"axes": "ZYX"})
    meta = tmp_path / "meta.tif"
    tifffile.imwrite(
        meta,
        s.image,
        imagej=True,
        resolution=(2.0, 2.0),
        metadata={"axes": "ZYX", "spacing": 2.0, "unit": "um"},
    )
    model = load_model(saved_threshold_model)
    want = segment(model, s.image, axes="ZYX", instances=True, voxel_size=(2, 0.5, 0.5))
    cubic = segment(model, s.image, axes="ZYX", instances=True)
    assert not np.array_equal(want, cubic)  # the Z step matters
    base = ["--model", saved_threshold_model, "--instances", "-q"]
    code, _, err = run(
        ["segment", plain, "-o", tmp_path / "a.tif", *base, "--voxel-size", "2,0.5,0.5"], capsys
    )
    assert code == 0, err
    code, _, err = run(["segment", meta, "-o", tmp_path / "b.tif", *base], capsys)
    assert code == 0, err
    np.testing.assert_array_equal(read_image(tmp_path / "a.tif")[0], want)
    np.testing.assert_array_equal(read_image(tmp_path / "b.tif")[0], want)


def test_a_zarr_output_gets_the_same_3d_objects(saved_threshold_model, tmp_path, monkeypatch):
    """Written slice by slice into zarr, the stack's objects are linked at the end: the same
    labels as in memory. A stack whose class maps would not fit in memory keeps each slice's
    objects, and says so."""
    import zarr

    from napari_tessera import chunked
    from napari_tessera.chunked import iter_segment_to_zarr, segment_to_zarr
    from napari_tessera.inference import Notice

    model = load_model(saved_threshold_model)
    s = nuclei_3d((12, 64, 64), anisotropy=2.0, seed=8)
    kw = dict(axes="ZYX", instances=True, device="cpu", voxel_size=(2, 1, 1), edge_offset=1.0)
    want = segment(model, s.image, **kw)
    out = segment_to_zarr(model, s.image, tmp_path / "l.zarr", **kw)
    got = zarr.open_array(str(out), mode="r")
    np.testing.assert_array_equal(np.asarray(got[...]), want)
    assert got.attrs["max_id"] == want.max()
    monkeypatch.setattr(chunked, "LINK_BYTES_PER_VOXEL", 64 * 10**9)
    gen = iter_segment_to_zarr(model, s.image, tmp_path / "f.zarr", **kw)
    notes = []
    while True:
        try:
            e = next(gen)
        except StopIteration:
            break
        if isinstance(e, Notice):
            notes.append(e.message)
    assert any("too large to be linked" in n for n in notes)
    flat = segment(model, s.image, link_z=False, **kw)
    np.testing.assert_array_equal(np.asarray(zarr.open_array(str(tmp_path / "f.zarr"))[...]), flat)


def test_instances_may_stand_before_the_input(saved_threshold_model, tmp_path, capsys):
    import tifffile

    s = nuclei_3d((6, 48, 48), anisotropy=2.0, seed=9)
    tifffile.imwrite(tmp_path / "s.tif", s.image, metadata={"axes": "ZYX"})
    for flags in (["--instances"], ["--instances", "2d"]):
        argv = ["segment", *flags, tmp_path / "s.tif", "-o", tmp_path / "l.tif"]
        code, _, err = run([*argv, "--model", saved_threshold_model, "-q"], capsys)
        assert code == 0, err


def same_up_to_ids(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two label images are the same objects, whatever their ids."""
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


def _slab_link(fg, spacing, slabs):
    from napari_tessera.postprocess import link_in_slabs

    out = np.zeros(fg.shape, np.uint32)

    def write(z0, labels):
        out[z0 : z0 + len(labels)] = labels

    nxt = link_in_slabs(lambda a, b: fg[a:b], write, len(fg), RULE, spacing, 1, slabs)
    return out, nxt


def test_linking_in_slabs_equals_the_whole_stack():
    """A stack linked a few slices at a time, with context around each slab, gives the
    objects of linking it whole; without enough context it does not (the test has power)."""
    from napari_tessera.postprocess import Slabs

    s = nuclei_3d((40, 64, 64), anisotropy=2.0, seed=3)
    fg = (s.labels > 0).astype(np.uint8)
    spacing = (2.0, 1.0, 1.0)
    whole, _ = RULE.labels_3d(fg, spacing)
    crossing = 0
    for z in (6, 12, 18, 24, 30, 36):  # objects cut by a slab boundary of depth 6
        crossing += len(set(np.unique(whole[z - 1])) & set(np.unique(whole[z])) - {0})
    assert crossing > 10
    slabbed, nxt = _slab_link(fg, spacing, Slabs(6, 12))
    assert same_up_to_ids(slabbed, whole)
    assert nxt - 1 == len(np.unique(whole)) - 1
    short, _ = _slab_link(fg, spacing, Slabs(6, 1))
    assert not same_up_to_ids(short, whole)


def test_a_deep_zarr_stack_is_linked_in_slabs(saved_threshold_model, tmp_path, monkeypatch):
    """When a stack does not fit the linking memory it is linked in slabs: the same objects
    as in memory; a run stopped while linking resumes from its class maps."""
    import zarr

    from napari_tessera import chunked
    from napari_tessera.chunked import plan_slabs, segment_to_zarr

    model = load_model(saved_threshold_model)
    s = nuclei_3d((40, 64, 64), anisotropy=2.0, seed=4)
    kw = dict(axes="ZYX", instances=True, device="cpu", voxel_size=(2, 1, 1))
    want = segment(model, s.image, **kw)
    monkeypatch.setattr(chunked, "LINK_MEMORY", 20 * 64 * 64 * chunked.LINK_BYTES_PER_VOXEL)
    from napari_tessera.axes import layout

    slabs = plan_slabs(layout(s.image.shape, "ZYX"), 2.0)
    assert slabs is not None and slabs.depth < 40 and slabs.depth + 2 * slabs.overlap <= 20
    calls = []
    from napari_tessera import postprocess

    original = postprocess.link_in_slabs

    def stop_once(*args, **kwargs):
        calls.append(args[-1])
        if len(calls) == 1:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(postprocess, "link_in_slabs", stop_once)
    with pytest.raises(KeyboardInterrupt):
        segment_to_zarr(model, s.image, tmp_path / "l.zarr", **kw)
    assert not (tmp_path / "l.zarr").exists()
    out = segment_to_zarr(model, s.image, tmp_path / "l.zarr", **kw)
    got = np.asarray(zarr.open_array(str(out), mode="r")[...])
    assert calls == [slabs, slabs]
    assert same_up_to_ids(got, want)
    assert zarr.open_array(str(out)).attrs["max_id"] == len(np.unique(want)) - 1
    assert not [p for p in tmp_path.iterdir() if p.name != "l.zarr"]
