"""Large data: lazy inputs, zarr output written slice by slice, resume, and dask.distributed."""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
import pytest
import tifffile
import zarr

from _helpers import ReadRecorder as Recorder
from _helpers import run
from napari_tessera import chunked, segment
from napari_tessera.axes import layout
from napari_tessera.chunked import iter_segment_to_zarr, segment_to_zarr
from napari_tessera.errors import InputError, MissingExtra
from napari_tessera.images import open_image
from napari_tessera.inference import Notice, Progress, prepare, resolve_halo
from napari_tessera.io import save_model
from napari_tessera.options import SegmentOptions
from napari_tessera.synthetic import nuclei_stack

SETTINGS = dict(tile_size=64, halo="exact", device="cpu")  # several tiles per slice


def cluster_mod():
    """napari_tessera.cluster (its tests skip without dask.distributed)."""
    return pytest.importorskip("napari_tessera.cluster")


def on_cluster(cluster, model, image, output, **kw):
    """``segment_to_zarr`` with each slice a task on the test's cluster."""
    return cluster_mod().segment_to_zarr(
        model, image, output, scheduler=cluster.scheduler_address, **kw
    )


@pytest.fixture(scope="module")
def stack():
    return nuclei_stack((6, 96, 80), seed=3).image


@pytest.fixture
def model(threshold_unet):
    return threshold_unet()


def read_zarr(path):
    return np.asarray(zarr.open_array(str(path), mode="r")[...])


@pytest.mark.parametrize("instances", [False, True])
def test_zarr_output_equals_in_memory_segmentation(model, stack, tmp_path, instances):
    ref = segment(model, stack, axes="ZYX", instances=instances, **SETTINGS)
    assert ref.max() > (10 if instances else 0)  # objects in several slices
    src = Recorder(stack)
    out = segment_to_zarr(
        model, src, tmp_path / "l.zarr", axes="ZYX", instances=instances, **SETTINGS
    )
    got = zarr.open_array(str(out), mode="r")
    np.testing.assert_array_equal(np.asarray(got[...]), ref)  # ids too, unique across slices
    assert got.chunks[0] == 1 and got.attrs["axes"] == "ZYX"
    assert src.reads and all(r == (96, 80) for r in src.reads)  # one slice per read
    assert not (tmp_path / "l.zarr.partial").exists()


def test_zarr_instances_apply_the_models_edge_offset(model, stack, tmp_path):
    model.metadata["edge_offset"] = 1.5
    ref = segment(model, stack, axes="ZYX", instances=True, **SETTINGS)
    plain = segment(model, stack, axes="ZYX", instances=True, edge_offset=0, **SETTINGS)
    assert (ref > 0).sum() < 0.9 * (plain > 0).sum()  # objects really shrank
    out = segment_to_zarr(model, stack, tmp_path / "l.zarr", axes="ZYX", instances=True, **SETTINGS)
    np.testing.assert_array_equal(read_zarr(out), ref)
    out = segment_to_zarr(
        model, stack, tmp_path / "p.zarr", axes="ZYX", instances=True, edge_offset=0, **SETTINGS
    )
    np.testing.assert_array_equal(read_zarr(out), plain)


def test_lazy_inputs_tiff_zarr_ome_zarr_npy(model, stack, tmp_path):
    ref = segment(model, stack, axes="ZYX", **SETTINGS)
    tifffile.imwrite(tmp_path / "s.tif", stack, metadata={"axes": "ZYX"})
    z = zarr.open_array(
        str(tmp_path / "s.zarr"), mode="w", shape=stack.shape, chunks=(1, 48, 40), dtype=stack.dtype
    )
    z[...] = stack
    z.attrs["axes"] = "ZYX"
    g = zarr.open_group(str(tmp_path / "ome.zarr"), mode="w")
    g.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [{"name": "z"}, {"name": "y"}, {"name": "x"}],
            "datasets": [{"path": "0"}, {"path": "1"}],
        }
    ]
    create = getattr(g, "create_array", None) or g.create_dataset  # zarr 3 or zarr 2
    create("0", shape=stack.shape, dtype=stack.dtype, chunks=(1, 96, 80))[...] = stack
    create("1", shape=(6, 48, 40), dtype=stack.dtype, chunks=(1, 48, 40))
    np.save(tmp_path / "s.npy", stack)
    for name in ("s.tif", "s.zarr", "ome.zarr", "s.npy"):
        arr, axes = open_image(tmp_path / name)
        assert not isinstance(arr, np.ndarray) or isinstance(arr, np.memmap), name
        assert arr.shape == stack.shape, name
        assert axes == (None if name == "s.npy" else "ZYX"), name
        out = segment_to_zarr(
            model, tmp_path / name, tmp_path / f"{name}.out.zarr", axes="ZYX", **SETTINGS
        )
        np.testing.assert_array_equal(read_zarr(out), ref, err_msg=name)


def test_unreadable_inputs_are_one_line_errors(tmp_path):
    (tmp_path / "g.zarr").mkdir()
    zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    with pytest.raises(InputError, match="without OME-Zarr"):
        open_image(tmp_path / "g.zarr")
    (tmp_path / "t.tif").write_text("not a tiff")
    with pytest.raises(InputError, match="not a readable TIFF"):
        open_image(tmp_path / "t.tif")
    with pytest.raises(InputError, match="not found"):
        open_image(tmp_path / "nope.zarr")


def tiles_per_slice(model, shape=(6, 96, 80)) -> int:
    lay = layout(shape, "ZYX")
    opts = SegmentOptions(tile_size=64, device="cpu")
    n = prepare(model, lay, opts, resolve_halo(model, "exact")).plan.n_tiles
    assert n > 1
    return n


def _interrupt_after(gen, n_slices: int, tiles: int):
    """Run ``gen`` until ``n_slices`` slices are through, then close it (like Ctrl-C)."""
    for event in gen:
        if isinstance(event, Progress) and event.done > n_slices * tiles:  # next slice started
            break
    gen.close()


def test_interrupted_run_resumes_and_skips_finished_slices(model, stack, tmp_path, monkeypatch):
    out = tmp_path / "l.zarr"
    ref = segment(model, stack, axes="ZYX", instances=True, **SETTINGS)
    tiles = tiles_per_slice(model)
    gen = iter_segment_to_zarr(model, stack, out, axes="ZYX", instances=True, **SETTINGS)
    _interrupt_after(gen, 2, tiles)
    assert not out.exists()  # nothing under the final name
    partial = tmp_path / "l.zarr.partial"
    assert partial.is_dir()
    done = sorted(int(f.name) for f in (partial / chunked._DONE).iterdir() if f.name.isdigit())
    assert 2 <= len(done) < 6
    predicted: list[int] = []
    real = chunked.iter_slice_predictions

    def spy(*args, slices=None, **kwargs):
        predicted.extend(slices)
        return real(*args, slices=slices, **kwargs)

    monkeypatch.setattr(chunked, "iter_slice_predictions", spy)
    gen = iter_segment_to_zarr(model, stack, out, axes="ZYX", instances=True, **SETTINGS)
    notices = [e.message for e in _events(gen) if isinstance(e, Notice)]
    assert any(f"{len(done)} of 6 slices already done" in n for n in notices)
    assert sorted(predicted) == sorted(set(range(6)) - set(done))  # finished slices skipped
    np.testing.assert_array_equal(read_zarr(out), ref)
    assert not partial.exists()


def _events(gen):
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration:
            return events


def test_other_settings_start_over(model, stack, tmp_path):
    out = tmp_path / "l.zarr"
    _interrupt_after(
        iter_segment_to_zarr(model, stack, out, axes="ZYX", **SETTINGS), 2, tiles_per_slice(model)
    )
    gen = iter_segment_to_zarr(model, stack, out, axes="ZYX", instances=True, **SETTINGS)
    notices = [e.message for e in _events(gen) if isinstance(e, Notice)]
    assert any("other settings: starting over" in n for n in notices)
    np.testing.assert_array_equal(
        read_zarr(out), segment(model, stack, axes="ZYX", instances=True, **SETTINGS)
    )


def test_an_existing_output_is_replaced_only_when_complete(model, stack, tmp_path):
    out = tmp_path / "l.zarr"
    old = zarr.open_array(str(out), mode="w", shape=(2, 2), dtype="u1")
    old[...] = 7
    _interrupt_after(
        iter_segment_to_zarr(model, stack, out, axes="ZYX", **SETTINGS), 1, tiles_per_slice(model)
    )
    np.testing.assert_array_equal(read_zarr(out), np.full((2, 2), 7))  # old labels intact
    segment_to_zarr(model, stack, out, axes="ZYX", **SETTINGS)
    assert read_zarr(out).shape == stack.shape


# -- command line --------------------------------------------------------------------------------


def test_cli_segment_tiff_to_zarr_and_zarr_to_tiff(model, stack, tmp_path, capsys):
    mpath = save_model(model, tmp_path / "m.safetensors")
    tifffile.imwrite(tmp_path / "s.tif", stack, metadata={"axes": "ZYX"})
    args = ["--model", mpath, "--tile-size", "64", "--device", "cpu", "--instances", "2d"]
    code, _, err = run(["segment", tmp_path / "s.tif", "-o", tmp_path / "l.zarr", *args], capsys)
    assert code == 0, err
    ref = segment(model, stack, axes="ZYX", instances=True, link_z=False, **SETTINGS)
    np.testing.assert_array_equal(read_zarr(tmp_path / "l.zarr"), ref)
    # a zarr input with a TIFF output goes through memory like any TIFF
    code, _, err = run(
        ["segment", tmp_path / "l.zarr", "-o", tmp_path / "back.tif", "--model", mpath, "-q"],
        capsys,
    )
    assert code == 0, err


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["-o", "{d}/l.tif", "--scheduler", "local"], "--scheduler writes zarr"),
        (["-o", "{d}/l.zarr", "--probabilities", "{d}/p.tif"], "must name a .zarr folder too"),
        (["-o", "{d}/l.zarr", "--probabilities", "{d}/l.zarr"], "another folder than the labels"),
        (["-o", "{d}/nofolder/l.zarr"], "output folder does not exist"),
        (["-o", "{d}/l.zarr", "--axes", "YX"], "axes 'YX' name 2 axes"),
    ],
)
def test_cli_zarr_bad_input_is_one_line(model, stack, tmp_path, capsys, extra, needle):
    if "--scheduler" in extra:  # without dask.distributed it first says how to install it
        pytest.importorskip("distributed")
    mpath = save_model(model, tmp_path / "m.safetensors")
    np.save(tmp_path / "s.npy", stack)
    extra = [a.format(d=tmp_path) for a in extra]
    code, _, err = run(["segment", tmp_path / "s.npy", "--model", mpath, "-q", *extra], capsys)
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], err
    assert not list(tmp_path.glob("l.*"))


# -- dask.distributed ---------------------------------------------------------------------------
# (an optional extra: the tests that need it skip without it; a cluster's start-up makes them slow)


@pytest.mark.parametrize("instances", [False, True])
@pytest.mark.slow
def test_cluster_run_equals_single_process(model, stack, tmp_path, cluster, instances):
    from distributed import Client

    tifffile.imwrite(tmp_path / "s.tif", stack, metadata={"axes": "ZYX"})
    here = segment_to_zarr(
        model,
        tmp_path / "s.tif",
        tmp_path / "here.zarr",
        axes="ZYX",
        instances=instances,
        **SETTINGS,
    )
    there = on_cluster(
        cluster,
        model,
        tmp_path / "s.tif",  # workers open the file themselves
        tmp_path / "there.zarr",
        axes="ZYX",
        instances=instances,
        **SETTINGS,
    )
    np.testing.assert_array_equal(read_zarr(there), read_zarr(here))
    with Client(cluster) as client:  # each worker loaded the model once for its 3+ slices
        loads = client.run(lambda dask_worker: dask_worker.plugins["napari-tessera-model"].loads)
    assert sorted(loads.values()) == [1, 1]


@pytest.mark.slow
def test_cluster_run_from_an_array_in_memory(model, stack, tmp_path, cluster):
    out = on_cluster(
        cluster,
        model,
        stack,
        tmp_path / "l.zarr",
        axes="ZYX",
        **SETTINGS,
    )
    np.testing.assert_array_equal(read_zarr(out), segment(model, stack, axes="ZYX", **SETTINGS))


@pytest.mark.slow
def test_cluster_errors_reach_the_caller_as_one_line(model, stack, tmp_path, cluster):
    bad = stack.astype(np.float32)
    bad[4, 10, 10] = np.nan
    with pytest.raises(InputError, match="contains NaN"):
        on_cluster(
            cluster,
            model,
            bad,
            tmp_path / "l.zarr",
            axes="ZYX",
            **SETTINGS,
        )
    assert not (tmp_path / "l.zarr").exists()


def test_without_distributed_scheduler_says_how_to_install_it(
    model, stack, tmp_path, capsys, monkeypatch
):
    """dask.distributed is an optional extra: without it --scheduler is a one-line error that
    names the extra, before anything is written, and zarr output in one process still works."""
    monkeypatch.setitem(sys.modules, "distributed", None)  # `import distributed` now fails
    monkeypatch.delitem(sys.modules, "napari_tessera.cluster", raising=False)  # imported anew
    mpath = save_model(model, tmp_path / "m.safetensors")
    tifffile.imwrite(tmp_path / "s.tif", stack, metadata={"axes": "ZYX"})
    tifffile.imwrite(tmp_path / "t.tif", stack[:2], metadata={"axes": "ZYX"})
    base = ["--model", mpath, "-q", "--scheduler", "local"]
    for argv in (
        ["segment", tmp_path / "s.tif", "-o", tmp_path / "l.zarr", *base],
        ["segment", tmp_path / "s.tif", tmp_path / "t.tif", "-o", tmp_path / "labels", *base],
    ):
        code, _, err = run(argv, capsys)
        assert code == 2, err
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and 'pip install "napari-tessera[distributed]"' in lines[0], err
    assert not (tmp_path / "l.zarr").exists() and not (tmp_path / "labels").exists()
    with pytest.raises(MissingExtra, match=r"napari-tessera\[distributed\]"):
        import napari_tessera.cluster  # noqa: F401
    argv = ["segment", tmp_path / "s.tif", "-o", tmp_path / "l.zarr", "--model", mpath, "-q"]
    code, _, err = run(argv, capsys)
    assert code == 0, err
    assert read_zarr(tmp_path / "l.zarr").shape == stack.shape


@pytest.mark.slow
def test_local_cluster_listens_on_localhost_only():
    client, cluster, threads = cluster_mod().open_client("local", 1)
    try:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        workers = client.scheduler_info()["workers"]
        assert len(workers) == 1 and all(a.startswith("tcp://127.0.0.1:") for a in workers)
        assert threads >= 1
    finally:
        client.close()
        cluster.close()


def test_cli_ctrl_c_keeps_finished_slices_and_the_same_command_resumes(
    model, stack, tmp_path, capsys, monkeypatch
):
    from napari_tessera import UNet

    mpath = save_model(model, tmp_path / "m.safetensors")
    np.save(tmp_path / "s.npy", stack)
    out = tmp_path / "l.zarr"
    argv = ["segment", tmp_path / "s.npy", "-o", out, "--model", mpath, "--axes", "ZYX"]
    argv += ["--tile-size", "64", "--halo", "exact", "--device", "cpu", "--instances", "2d", "-q"]
    calls = {"n": 0}
    plain = UNet.forward
    limit = 2 * tiles_per_slice(model) + 1  # Ctrl-C in the third slice

    def forward(self, x):
        calls["n"] += 1
        if calls["n"] == limit:
            raise KeyboardInterrupt
        return plain(self, x)

    monkeypatch.setattr(UNet, "forward", forward)
    code, _, err = run(argv, capsys)
    assert code == 130 and "Traceback" not in err
    assert "finished slices kept in" in err and "run the same command to resume" in err
    assert not out.exists()
    monkeypatch.setattr(UNet, "forward", plain)
    code, _, err = run([a for a in argv if a != "-q"], capsys)
    assert code == 0, err
    assert "resuming: 2 of 6 slices already done" in err
    ref = segment(model, stack, axes="ZYX", instances=True, link_z=False, **SETTINGS)
    np.testing.assert_array_equal(read_zarr(out), ref)


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_an_output_that_is_not_a_zarr_array_is_never_replaced(model, stack, tmp_path, kind):
    out = tmp_path / "precious.zarr"
    if kind == "file":
        out.write_text("keep me")
    else:
        out.mkdir()
        (out / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="exists and is not a zarr array"):
        segment_to_zarr(model, stack, out, axes="ZYX", **SETTINGS)
    kept = out if kind == "file" else out / "notes.txt"
    assert kept.read_text() == "keep me"


# -- blocks of large planes ---------------------------------------------------------------------
@pytest.fixture
def loud(deep_unet):
    from napari_tessera import UNetConfig

    return deep_unet(UNetConfig(depth=2, base_channels=4, n_classes=3), seed=4)


def test_blocks_give_the_labels_of_whole_slices_and_read_only_their_region(loud, tmp_path):
    img = nuclei_stack((2, 150, 130), seed=8).image
    ref = segment(loud, img, axes="ZYX", **SETTINGS)
    assert len(np.unique(ref)) == 3  # all classes present: a strict comparison
    margin = chunked.block_margin(loud, "exact")
    src = Recorder(img)
    src.chunks = (1, 50, 50)
    out = segment_to_zarr(loud, src, tmp_path / "b.zarr", axes="ZYX", block_size=48, **SETTINGS)
    np.testing.assert_array_equal(read_zarr(out), ref)
    assert zarr.open_array(str(out)).chunks == (1, 48, 48)  # one block = one chunk
    big = [r for r in src.reads if len(r) == 3 and r[1] * r[2] > (48 + 2 * margin) ** 2]
    assert not big, big  # never more than a block and its margin (or a level chunk)


def test_an_auto_halo_is_measured_once_and_used_by_every_block(loud, tmp_path, monkeypatch):
    import napari_tessera.halo as halo_mod
    from napari_tessera.inference import predict_tiled

    img = nuclei_stack((2, 150, 130), seed=8).image
    calls = []
    real = halo_mod.measure_halo
    monkeypatch.setattr(halo_mod, "measure_halo", lambda *a, **k: calls.append(1) or real(*a, **k))
    kw = dict(axes="ZYX", block_size=48, device="cpu")
    out = segment_to_zarr(loud, img, tmp_path / "a.zarr", **kw)  # halo="auto"
    assert len(calls) == 1  # by the driver, before any block ran
    found = halo_mod.AUTO_HALOS.latest(loud)
    assert found.pixels < found.exact  # a real saving, so the numbers below can differ
    fixed = segment_to_zarr(loud, img, tmp_path / "f.zarr", halo=found.pixels, **kw)
    np.testing.assert_array_equal(read_zarr(out), read_zarr(fixed))
    # labels differ from exact ones only where two classes were nearly tied
    exact = read_zarr(segment_to_zarr(loud, img, tmp_path / "e.zarr", halo="exact", **kw))
    top2 = np.sort(predict_tiled(loud, img, axes="ZYX", device="cpu", halo="exact"), axis=0)
    tied = top2[-1] - top2[-2] < 2 * halo_mod.AUTO_TOLERANCE
    differ = read_zarr(out) != exact
    assert differ.any() and not (differ & ~tied).any()


def test_blocks_without_their_margin_would_differ(loud, tmp_path, monkeypatch):
    img = nuclei_stack((1, 150, 130), seed=8).image
    ref = segment(loud, img, axes="ZYX", **SETTINGS)
    monkeypatch.setattr(chunked, "block_margin", lambda model, halo, edge_offset=0: 0)
    out = segment_to_zarr(loud, img, tmp_path / "b.zarr", axes="ZYX", block_size=48, **SETTINGS)
    assert (read_zarr(out) != ref).mean() > 0.01  # seams: the test above has power


@pytest.mark.parametrize("offset", [2.0, -1.5])
def test_an_edge_offset_gives_the_same_labels_in_blocks_and_whole_slices(loud, tmp_path, offset):
    img = nuclei_stack((1, 150, 130), seed=8).image
    plain = segment(loud, img, axes="ZYX", edge_offset=0, **SETTINGS)
    loud.metadata["edge_offset"] = offset  # the model's own offset is the default
    ref = segment(loud, img, axes="ZYX", **SETTINGS)
    assert (ref != plain).mean() > 0.01
    out = segment_to_zarr(loud, img, tmp_path / "b.zarr", axes="ZYX", block_size=48, **SETTINGS)
    np.testing.assert_array_equal(read_zarr(out), ref)
    whole = segment_to_zarr(loud, img, tmp_path / "w.zarr", axes="ZYX", block_size=0, **SETTINGS)
    np.testing.assert_array_equal(read_zarr(whole), ref)


def test_edges_moved_after_the_blocks_are_cut_would_differ(loud, tmp_path, monkeypatch):
    img = nuclei_stack((1, 150, 130), seed=8).image
    loud.metadata["edge_offset"] = 2.0
    ref = segment(loud, img, axes="ZYX", **SETTINGS)
    cut_first = chunked.unit_labels

    def unit_labels(model, data, box, margin, levels, rule, kw, plane):
        plain = dataclasses.replace(rule, edge_offset=0.0)
        labels, n, notes, prob = cut_first(model, data, box, margin, levels, plain, kw, plane)
        return chunked.shift_edges(labels, rule.edge_offset), n, notes, prob

    monkeypatch.setattr(chunked, "unit_labels", unit_labels)
    out = segment_to_zarr(loud, img, tmp_path / "b.zarr", axes="ZYX", block_size=48, **SETTINGS)
    assert (read_zarr(out) != ref).any()  # the test above has power at block borders


@pytest.mark.slow
def test_blocks_on_a_cluster_equal_blocks_here(loud, tmp_path, cluster):
    img = nuclei_stack((2, 150, 130), seed=8).image
    tifffile.imwrite(tmp_path / "s.tif", img, metadata={"axes": "ZYX"})
    kw = dict(axes="ZYX", block_size=48, **SETTINGS)
    here = segment_to_zarr(loud, tmp_path / "s.tif", tmp_path / "here.zarr", **kw)
    there = on_cluster(cluster, loud, tmp_path / "s.tif", tmp_path / "there.zarr", **kw)
    mem = on_cluster(cluster, loud, img, tmp_path / "mem.zarr", **kw)
    np.testing.assert_array_equal(read_zarr(there), read_zarr(here))
    np.testing.assert_array_equal(read_zarr(mem), read_zarr(here))
    # an edge offset goes to the workers too (the model they load carries none)
    kw["edge_offset"] = 2.0
    here = segment_to_zarr(loud, img, tmp_path / "here2.zarr", **kw)
    there = on_cluster(cluster, loud, img, tmp_path / "there2.zarr", **kw)
    np.testing.assert_array_equal(read_zarr(there), read_zarr(here))
    assert (read_zarr(here) != read_zarr(mem)).mean() > 0.01


def test_blocks_are_refused_for_instances(model, stack, tmp_path):
    with pytest.raises(InputError, match="blocks are for class labels"):
        segment_to_zarr(
            model, stack, tmp_path / "l.zarr", axes="ZYX", instances=True, block_size=48, **SETTINGS
        )
    assert chunked.choose_block(None, layout((1, 9000, 9000), "ZYX"), model, "exact", True) == 0
    assert chunked.choose_block(None, layout((1, 9000, 9000), "ZYX"), model, "exact", False) > 0
    assert chunked.choose_block(None, layout((9, 4000, 4000), "ZYX"), model, "exact", False) == 0


@pytest.mark.parametrize(
    ("shape", "block_size"),
    [
        ((5000, 7000), 3000),  # 3008: not a multiple of 2048
        ((4100, 9000), 2100),
        ((20000, 3000), 2049),
        ((9000, 9000), None),  # the automatic 4096
        ((12345, 6789), 5000),
        ((3000, 40000), 16 * 131),  # 16 x a prime: no good divisor of its own
        ((700, 900), 100),
    ],
)
def test_every_block_border_is_a_chunk_border(deep_unet, shape, block_size):
    """Blocks are written by separate workers, each rewriting whole zarr chunks: a chunk
    shared by two blocks could lose one block's labels. So every block is whole chunks,
    including the last, partial block of a row or column at the image's edge."""
    from napari_tessera import UNetConfig

    model = deep_unet(UNetConfig(depth=4, base_channels=2, n_classes=2))  # size multiple 16
    lay = layout((2, *shape), "ZYX")
    block = chunked.choose_block(block_size, lay, model, "exact", False)
    assert block and block % model.size_multiple == 0
    chunks = chunked.label_chunks(lay, block)
    for y0, y1, x0, x1 in chunked.plan_blocks(lay, block):
        for lo, hi, side, end in ((y0, y1, chunks[1], shape[0]), (x0, x1, chunks[2], shape[1])):
            assert lo % side == 0, (lo, side)
            assert hi % side == 0 or hi == end, (hi, side)
    assert chunks[0] == 1 and max(chunks[1:]) <= 2048  # chunks stay small for large blocks
    asked = block_size or chunked.DEFAULT_BLOCK
    per_side = -(-block // min(block, 2048))
    assert asked <= block < asked + per_side * model.size_multiple  # memory: about one block


@pytest.mark.parametrize("case", ["wide plane", "small chunks"])
def test_blocks_of_several_chunks_on_a_cluster_equal_the_whole_plane(
    loud, tmp_path, cluster, monkeypatch, case
):
    """A block size that is not a multiple of the chunk side (2100 > 2048, or 100 with
    chunks of at most 40): on two dask workers the labels equal those of the whole plane."""
    if case == "wide plane":
        img, block_size = nuclei_stack((1, 72, 4200), seed=8).image, 2100
    else:
        monkeypatch.setattr(chunked, "MAX_CHUNK", 40, raising=False)
        img, block_size = nuclei_stack((2, 150, 130), seed=8).image, 100
    kw = dict(axes="ZYX", tile_size=128, halo="exact", device="cpu")
    ref = segment(loud, img, **kw)
    assert len(np.unique(ref)) == 3
    out = on_cluster(
        cluster,
        loud,
        img,
        tmp_path / "c.zarr",
        block_size=block_size,
        **kw,
    )
    got = zarr.open_array(str(out), mode="r")
    block = chunked.choose_block(block_size, layout(img.shape, "ZYX"), loud, "exact", False)
    assert block and got.chunks[0] == 1
    for side, end in zip(got.chunks[1:], img.shape[1:]):  # several chunks per block
        assert side == end or (block % side == 0 and side < block), (side, block)
    np.testing.assert_array_equal(np.asarray(got[...]), ref)


def test_an_interrupted_block_run_resumes_from_its_finished_blocks(loud, tmp_path, monkeypatch):
    img = nuclei_stack((1, 150, 130), seed=8).image
    out = tmp_path / "b.zarr"
    kw = dict(axes="ZYX", block_size=48, **SETTINGS)
    gen = iter_segment_to_zarr(loud, img, out, **kw)
    for event in gen:  # Progress counts blocks here: stop after the third
        if isinstance(event, Progress) and event.done == 3:
            break
    gen.close()
    assert not out.exists()
    done = [f.name for f in (tmp_path / "b.zarr.partial" / chunked._DONE).iterdir()]
    assert sorted(done) == ["0_0_0", "0_0_48", "0_0_96"]
    read: list = []
    real = chunked.read_region
    monkeypatch.setattr(chunked, "read_region", lambda *a: read.append(a[3]) or real(*a))
    events = _events(iter_segment_to_zarr(loud, img, out, **kw))
    assert any("resuming: 3 of 12 blocks (48x48 px) already done" in e.message
               for e in events if isinstance(e, Notice))  # fmt: skip
    assert len(read) == 9 and (0, 48, 0, 48) not in read  # only the other blocks
    np.testing.assert_array_equal(read_zarr(out), segment(loud, img, axes="ZYX", **SETTINGS))


@pytest.mark.slow
def test_probabilities_go_to_zarr_too_here_in_blocks_and_on_a_cluster(loud, tmp_path, cluster):
    from napari_tessera import predict_tiled

    img = nuclei_stack((2, 150, 130), seed=8).image
    ref = predict_tiled(loud, img, axes="ZYX", **SETTINGS)
    here = lambda *a, **kw: segment_to_zarr(*a, **kw)  # noqa: E731
    there = lambda *a, **kw: on_cluster(cluster, *a, **kw)  # noqa: E731
    runs = {
        "slices": (here, None),
        "blocks": (here, 48),
        "cluster": (there, 48),
    }
    for name, (run_it, block) in runs.items():
        prob = tmp_path / f"{name}_p.zarr"
        kw = dict(axes="ZYX", probabilities=prob, block_size=block, **SETTINGS)
        run_it(loud, img, tmp_path / f"{name}.zarr", **kw)
        got = zarr.open_array(str(prob), mode="r")
        assert got.shape == ref.shape and got.attrs["axes"] == "CZYX", name
        np.testing.assert_allclose(np.asarray(got[...]), ref, atol=1e-5, err_msg=name)
        assert not (tmp_path / f"{name}_p.zarr.partial").exists()


def test_cli_probabilities_zarr(model, stack, tmp_path, capsys):
    from napari_tessera import predict_tiled

    mpath = save_model(model, tmp_path / "m.safetensors")
    np.save(tmp_path / "s.npy", stack)
    argv = ["segment", tmp_path / "s.npy", "-o", tmp_path / "l.zarr", "--model", mpath]
    argv += ["--axes", "ZYX", "--probabilities", tmp_path / "p.zarr", "--tile-size", "64", "-q"]
    code, _, err = run(argv, capsys)
    assert code == 0, err
    np.testing.assert_allclose(
        read_zarr(tmp_path / "p.zarr"),
        predict_tiled(model, stack, axes="ZYX", **SETTINGS),
        atol=1e-5,
    )


def test_probabilities_survive_an_interruption(model, stack, tmp_path):
    from napari_tessera import predict_tiled

    kw = dict(axes="ZYX", probabilities=tmp_path / "p.zarr", **SETTINGS)
    _interrupt_after(
        iter_segment_to_zarr(model, stack, tmp_path / "l.zarr", **kw), 2, tiles_per_slice(model)
    )
    assert not (tmp_path / "p.zarr").exists() and (tmp_path / "p.zarr.partial").is_dir()
    events = _events(iter_segment_to_zarr(model, stack, tmp_path / "l.zarr", **kw))
    assert any("resuming" in e.message for e in events if isinstance(e, Notice))
    np.testing.assert_allclose(
        read_zarr(tmp_path / "p.zarr"),
        predict_tiled(model, stack, axes="ZYX", **SETTINGS),
        atol=1e-5,
    )
