"""The napari widgets, docked through the npe2 manifest, driven as a user would.

Run under Xvfb (napari's canvas needs OpenGL):
    xvfb-run -a -s "-screen 0 1600x1200x24" .venv/bin/python -m pytest tests/test_widgets.py
Networks are tiny (base_channels 4, depth 2) and images at most 128 px.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")
if sys.platform.startswith("linux") and not (
    os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
):
    pytest.skip(
        "the widget tests need a display with OpenGL: run them under xvfb-run "
        "(see scripts/test.sh)",
        allow_module_level=True,
    )

from napari.layers import Image, Labels  # noqa: E402
from qtpy.QtCore import QTimer  # noqa: E402

from _helpers import ReadRecorder  # noqa: E402
from napari_tessera import UNet, UNetConfig, load_model, save_model  # noqa: E402
from napari_tessera._sample_data import sparse_annotations  # noqa: E402
from napari_tessera._widgets import SegmentWidget, TrainWidget, _common, _train, session  # noqa: E402  # noqa: E402
from napari_tessera.images import read_image  # noqa: E402
from napari_tessera.synthetic import nuclei_2d  # noqa: E402

pytestmark = pytest.mark.gui

PLUGIN = "napari-tessera"
WAIT = 60_000  # ms; generous: other jobs may share the CPU


@pytest.fixture(autouse=True)
def _fresh_session():
    session.clear()
    yield
    session.clear()


@pytest.fixture
def tiny_model_path(tmp_path):
    import torch

    torch.manual_seed(0)
    path = tmp_path / "tiny.safetensors"
    save_model(UNet(UNetConfig(base_channels=4, depth=2)), path)
    return path


@pytest.fixture
def nuclei():
    return nuclei_2d((128, 128), seed=3)


@pytest.fixture
def errors(monkeypatch):
    """Messages the widgets show with napari's show_error."""
    shown: list[str] = []
    monkeypatch.setattr(_common, "show_error", lambda msg: shown.append(str(msg)))
    return shown


@pytest.fixture
def warned(monkeypatch):
    shown: list[str] = []
    monkeypatch.setattr(_common, "show_warning", lambda msg: shown.append(str(msg)))
    return shown


@pytest.fixture
def infos(monkeypatch):
    shown: list[str] = []
    monkeypatch.setattr(_common, "show_info", lambda msg: shown.append(str(msg)))
    return shown


def dock(viewer, name):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget


def wait_idle(qtbot, widget, timeout=WAIT):
    qtbot.waitUntil(lambda: not widget.running, timeout=timeout)


def use_file_model(seg: SegmentWidget, path) -> None:
    seg.model_source.value = "file"
    seg.model_file.value = path


def segment_widget(viewer, model, *, output: str | None = None, cpu: bool = False):
    """The Segment widget docked in ``viewer``, reading the model file ``model``."""
    seg = dock(viewer, "Segment")
    use_file_model(seg, model)
    if output is not None:
        seg.output.value = output
    if cpu:
        seg.device.value = "cpu"
    return seg


def tiny_training(tr: TrainWidget, steps: int | None = 5, seconds: int | None = None) -> None:
    tr.start_from.value = "scratch"
    tr.base_channels.value = 4
    tr.depth.value = 2
    tr.device.value = "cpu"
    tr.patch_size.value = 32  # auto would be the whole 128 px image (see the report)
    if seconds is None:
        tr.limit_by.value = "steps"
        tr.steps.value = steps
    else:
        tr.limit_by.value = "time"
        tr.time_limit.value = seconds


def segment(qtbot, seg: SegmentWidget) -> None:
    with qtbot.waitSignal(seg.run_button.native.clicked, timeout=1000):
        seg.run_button.native.click()
    assert seg.running or seg.last_result is not None
    wait_idle(qtbot, seg)


# -- docking ------------------------------------------------------------------------------------
def test_widgets_dock_through_manifest(make_napari_viewer, qtbot, nuclei):
    viewer = make_napari_viewer()
    layer = viewer.add_image(nuclei.image, name="cells")
    seg = dock(viewer, "Segment")
    tr = dock(viewer, "Train")
    assert isinstance(seg, SegmentWidget)
    assert isinstance(tr, TrainWidget)
    assert seg.image.value is layer
    assert tr.image.value is layer
    # layer lists follow the viewer
    ann = viewer.add_labels(np.zeros((128, 128), np.uint8), name="paint")
    assert tr.annotations.value is ann
    assert "1 = background" in tr.convention.value


def test_samples_open_through_manifest(make_napari_viewer, qtbot):
    """The annotated sample: the image and PARTIAL sparse annotations (a Labels layer)."""
    from scipy import ndimage as ndi

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "nuclei-2d-annotated")
    image, ann = viewer.layers["nuclei"], viewer.layers["nuclei annotations"]
    assert isinstance(image, Image) and isinstance(ann, Labels)
    assert ann.data.shape == image.data.shape
    assert set(np.unique(ann.data)) == {0, 1, 2}
    assert (ann.data == 0).mean() > 0.9  # mostly not annotated
    assert 8 <= ndi.label(ann.data == 2)[1] <= 16  # about a dozen nuclei
    viewer.open_sample(PLUGIN, "nuclei-stack")
    assert viewer.layers["nuclei stack"].data.ndim == 3


# -- segmenting ---------------------------------------------------------------------------------
def test_segment_with_model_file_updates_in_place(
    make_napari_viewer, qtbot, nuclei, tiny_model_path
):
    viewer = make_napari_viewer()
    image = viewer.add_image(nuclei.image, name="cells", scale=(0.5, 0.25), translate=(3, 4))
    seg = segment_widget(viewer, tiny_model_path)
    assert seg.output.value == "instances"  # a background/object model's default
    seg.output.value = "classes"
    seg.tile_size.value = 64
    seg.device.value = "cpu"
    seg.probabilities.value = True
    segment(qtbot, seg)

    labels = viewer.layers["cells labels"]
    assert isinstance(labels, Labels)
    assert labels.data.shape == image.data.shape
    assert np.issubdtype(labels.data.dtype, np.integer)
    np.testing.assert_allclose(labels.scale, image.scale)
    np.testing.assert_allclose(labels.translate, image.translate)
    prob = viewer.layers["cells probability"]
    assert isinstance(prob, Image) and prob.data.shape == image.data.shape
    assert 0.0 <= prob.data.min() and prob.data.max() <= 1.0
    assert seg.progress.value == seg.progress.max
    # the default halo is the measured one, as in the library and the CLI
    assert seg.halo.value == "auto"
    assert seg.status.value.endswith(f"; {seg.last_result.halo}")
    from napari_tessera.halo import describe_halo

    said = describe_halo(load_model(tiny_model_path), "auto")  # the CLI's line, the same weights
    assert seg.last_result.halo == said and said.startswith("halo ") and "px (auto" in said
    from napari_tessera.inference import segment as segment_library

    want = segment_library(load_model(tiny_model_path), nuclei.image, tile_size=64, device="cpu")
    np.testing.assert_array_equal(labels.data, want)
    n_layers = len(viewer.layers)

    # re-run (instances, a halo in pixels): the same layers are updated, none added
    seg.output.value = "instances"
    seg.halo.value = "pixels"
    seg.halo_px.value = 8
    segment(qtbot, seg)
    assert len(viewer.layers) == n_layers
    assert viewer.layers["cells labels"] is labels
    assert labels.data.dtype.kind == "u"
    assert seg.run_button.enabled and not seg.cancel_button.enabled


def test_output_default_follows_the_model(make_napari_viewer, qtbot, tiny_model_path, tmp_path):
    """One id per object for a model whose classes are objects (built-in, 2 classes, class
    names background/object), classes for a multi-class model; until picked by hand."""
    from napari_tessera._widgets._models import ModelSpec
    from napari_tessera.models import default_model_path

    three = tmp_path / "three.safetensors"
    save_model(UNet(UNetConfig(n_classes=3, base_channels=4, depth=2)), three)
    viewer = make_napari_viewer()
    seg = dock(viewer, "Segment")
    if default_model_path() is not None:
        assert seg.model_source.value == "builtin" and seg.output.value == "instances"
    use_file_model(seg, three)
    assert seg.output.value == "classes"
    seg.model_file.value = tiny_model_path  # 2 classes: background and object
    assert seg.output.value == "instances"
    session.set_trained_model(UNet(UNetConfig(n_classes=3, base_channels=4, depth=2)))
    assert seg.model_source.value == "session" and seg.output.value == "classes"
    session.set_trained_model(UNet(UNetConfig(n_classes=2, base_channels=4, depth=2)))
    assert seg.output.value == "instances"
    names = ("background", "object")
    assert ModelSpec("m", 1, 3, None, class_names=names).finds_objects
    assert not ModelSpec("m", 1, 3, None, class_names=("background", "a", "b")).finds_objects
    # picked by hand, the output stays
    seg.output.value = "classes"
    use_file_model(seg, tiny_model_path)
    assert seg.output.value == "classes"


def test_segment_all_open_images(make_napari_viewer, qtbot, tiny_model_path, errors):
    """Every open image gets its labels layer; one that cannot be segmented is reported and
    the others still finish."""
    viewer = make_napari_viewer()
    a, b = nuclei_2d((96, 96), seed=1), nuclei_2d((64, 80), seed=2)
    viewer.add_image(a.image, name="first")
    viewer.add_image(np.full((32, 32), np.nan, np.float32), name="broken")
    viewer.add_image(b.image, name="second")
    seg = segment_widget(viewer, tiny_model_path, cpu=True, output="instances")
    seg.scope.value = "all"
    segment(qtbot, seg)
    model = load_model(tiny_model_path)
    from napari_tessera.inference import segment as segment_library

    for name, s in (("first", a), ("second", b)):
        want = segment_library(model, s.image, instances=True, device="cpu")
        np.testing.assert_array_equal(viewer.layers[f"{name} labels"].data, want)
    assert "broken labels" not in [la.name for la in viewer.layers]
    assert seg.status.value == "done: 2 of 3 images segmented; 1 failed"
    assert errors and "broken: " in errors[-1] and "NaN" in errors[-1]


def test_segment_a_folder_of_files(make_napari_viewer, qtbot, tiny_model_path, tmp_path, errors):
    """Every image file of a folder gets its labels file in another folder (the same labels
    as the library's segment); a broken file is reported while the others finish; asked, the
    results open as layers; a second run skips the finished files."""
    import tifffile

    from napari_tessera.inference import segment as segment_library

    raw, out = tmp_path / "raw", tmp_path / "labels"
    raw.mkdir()
    fields = {f"field_{k}": nuclei_2d((64 + 16 * k, 80), seed=k).image for k in range(3)}
    for name, image in fields.items():
        tifffile.imwrite(raw / f"{name}.tif", image)
    (raw / "broken.tif").write_bytes(b"not a tiff")
    viewer = make_napari_viewer()
    seg = segment_widget(viewer, tiny_model_path, cpu=True, output="instances")
    seg.scope.value = "folder"
    assert not seg.input_folder.native.isHidden() and not seg.output_folder.native.isHidden()
    seg.run()
    assert "choose the folder of images" in errors[-1] and not seg.running
    seg.input_folder.value = raw
    seg.run()
    assert "choose the folder to write the labels to" in errors[-1]
    seg.output_folder.value = out  # made by the run
    seg.open_results.value = True
    segment(qtbot, seg)
    model = load_model(tiny_model_path)
    for name, image in fields.items():
        want = segment_library(model, image, instances=True, device="cpu")
        np.testing.assert_array_equal(tifffile.imread(out / f"{name}_labels.tif"), want)
        np.testing.assert_array_equal(viewer.layers[f"{name}_labels"].data, want)
    assert sorted(p.name for p in out.iterdir()) == [f"{n}_labels.tif" for n in fields]
    assert seg.status.value.startswith(f"done: 3 of 4 files segmented into {out}")
    assert seg.status.value.endswith("; 1 failed")
    assert errors[-1].startswith("Segment: broken.tif: broken.tif is not a readable TIFF")

    seg.open_results.value = False
    segment(qtbot, seg)
    assert "; 3 already there, skipped; 1 failed" in seg.status.value
    seg.output_folder.value = raw
    seg.run()
    assert "another folder than the images" in errors[-1] and not seg.running


def test_segment_applies_the_models_edge_offset_unless_unticked(
    make_napari_viewer, qtbot, nuclei, saved_threshold_model, tmp_path
):
    from napari_tessera.postprocess import shift_edges

    model = load_model(saved_threshold_model)  # a model that really finds the nuclei
    model.metadata["edge_offset"] = 2.0
    path = save_model(model, tmp_path / "edges.safetensors")
    viewer = make_napari_viewer()
    viewer.add_image(nuclei.image, name="cells")
    seg = segment_widget(viewer, path, output="classes", cpu=True)  # compared as classes below
    assert seg.model_edges.value  # ticked by default
    segment(qtbot, seg)
    shrunk = viewer.layers["cells labels"].data.copy()
    seg.model_edges.value = False
    segment(qtbot, seg)
    plain = viewer.layers["cells labels"].data
    assert (plain > 0).sum() > 1.2 * (shrunk > 0).sum() > 0
    np.testing.assert_array_equal(shrunk, shift_edges(plain, 2.0))


def test_segment_min_object_size_is_the_models_unless_set(
    make_napari_viewer, qtbot, nuclei, saved_threshold_model, tmp_path
):
    model = load_model(saved_threshold_model)
    model.metadata["min_size"] = 10**6  # larger than any object: none kept
    path = save_model(model, tmp_path / "sized.safetensors")
    viewer = make_napari_viewer()
    viewer.add_image(nuclei.image, name="cells")
    seg = segment_widget(viewer, path, output="instances", cpu=True)
    assert seg.min_size.value == 0  # the model's own
    segment(qtbot, seg)
    assert not viewer.layers["cells labels"].data.any()
    seg.min_size.value = 8
    segment(qtbot, seg)
    assert viewer.layers["cells labels"].data.max() >= 5


def test_segment_current_slice_of_stack(make_napari_viewer, qtbot, saved_threshold_model):
    viewer = make_napari_viewer()
    stack = np.stack([nuclei_2d((64, 64), seed=s).image for s in range(3)])
    viewer.add_image(stack, name="stack", scale=(2.0, 0.5, 0.5))
    seg = segment_widget(viewer, saved_threshold_model)  # finds the nuclei: ids to compare
    assert seg.scope.enabled
    seg.scope.value = "slice"
    seg.output.value = "instances"
    viewer.dims.set_point(0, 2.0)  # world z = 2.0 -> slice 1
    segment(qtbot, seg)
    labels = viewer.layers["stack labels"].data
    assert labels.shape == stack.shape
    assert not labels[0].any() and not labels[2].any()
    assert seg.last_result.slice_index == 1
    # another slice: its ids continue after those of slice 1, in the one labels dtype
    from napari_tessera.postprocess import labels_dtype

    first = labels[1].copy()
    viewer.dims.set_point(0, 4.0)  # slice 2
    segment(qtbot, seg)
    labels = viewer.layers["stack labels"].data
    assert labels.dtype == labels_dtype(True)
    np.testing.assert_array_equal(labels[1], first)
    assert labels[2].any() and labels[2][labels[2] > 0].min() > first.max() > 0


def test_measure_objects_fills_features_and_saves_the_table(
    make_napari_viewer, qtbot, nuclei, saved_threshold_model, tmp_path, errors
):
    import pandas as pd

    from napari_tessera import measure

    viewer = make_napari_viewer()
    viewer.add_image(nuclei.image, name="cells", scale=(0.5, 0.25))
    seg = segment_widget(viewer, saved_threshold_model, cpu=True, output="classes")
    shown = [seg.measure.native, seg.save_table_button.native]
    assert all(w.isHidden() for w in shown)  # no objects to measure
    seg.output.value = "instances"
    assert not any(w.isHidden() for w in shown)
    assert not seg.save_table_button.enabled  # nothing measured yet
    seg.save_table(path=tmp_path / "none.csv")
    assert errors and "no objects table yet" in errors[-1]
    seg.measure.value = True
    segment(qtbot, seg)

    layer = viewer.layers["cells labels"]
    expected = measure(layer.data, nuclei.image, voxel_size=(0.5, 0.25))
    assert len(expected) > 3 and "area_um2" in expected.columns
    feats = layer.features
    assert list(feats["index"]) == list(expected["label"])  # napari's row of each label
    pd.testing.assert_frame_equal(feats.drop(columns="index"), expected)
    np.testing.assert_allclose(feats["area_um2"], feats["area_px"] * 0.125)
    # napari shows the row of the object under the cursor
    obj = int(expected["label"].iloc[0])
    y, x = np.argwhere(layer.data == obj)[0]
    status = layer.get_status(position=(y * 0.5, x * 0.25), world=True)
    text = status["coordinates"] if isinstance(status, dict) else str(status)
    assert "area_um2" in text, text

    assert seg.save_table_button.enabled
    path = seg.save_table(path=tmp_path / "objects")  # .csv added
    assert path == tmp_path / "objects.csv"
    pd.testing.assert_frame_equal(pd.read_csv(path), expected, check_dtype=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["objects.csv"]

    # a run without measuring clears the table: it no longer fits the labels
    seg.measure.value = False
    segment(qtbot, seg)
    assert layer.features.shape[1] == 0 and seg.table is None
    assert not seg.save_table_button.enabled


def test_measure_objects_of_all_images_and_of_a_folder(
    make_napari_viewer, qtbot, saved_threshold_model, tmp_path
):
    """All open images: each labels layer gets its own table, in its own layer's scale; a
    folder run writes {stem}_objects.csv beside the labels files."""
    import pandas as pd
    import tifffile

    from napari_tessera import measure

    viewer = make_napari_viewer()
    a, b = nuclei_2d((96, 96), seed=1).image, nuclei_2d((64, 80), seed=2).image
    viewer.add_image(a, name="first", scale=(2.0, 2.0))
    viewer.add_image(b, name="second")  # scale 1, napari's pixels: no voxel size
    seg = segment_widget(viewer, saved_threshold_model, cpu=True, output="instances")
    seg.measure.value = True
    seg.scope.value = "all"
    segment(qtbot, seg)
    first, second = viewer.layers["first labels"], viewer.layers["second labels"]
    want = measure(first.data, a, voxel_size=(2.0, 2.0))
    pd.testing.assert_frame_equal(first.features.drop(columns="index"), want)
    assert "area_um2" not in second.features.columns and len(second.features) > 0
    pd.testing.assert_frame_equal(second.features.drop(columns="index"), measure(second.data, b))

    raw, out = tmp_path / "raw", tmp_path / "labels"
    raw.mkdir()
    tifffile.imwrite(raw / "one.tif", a)
    seg.scope.value = "folder"
    seg.input_folder.value = raw
    seg.output_folder.value = out
    segment(qtbot, seg)
    assert sorted(p.name for p in out.iterdir()) == ["one_labels.tif", "one_objects.csv"]
    got = pd.read_csv(out / "one_objects.csv")
    labels = tifffile.imread(out / "one_labels.tif")
    pd.testing.assert_frame_equal(got, measure(labels, a), check_dtype=False)


def test_measure_objects_of_the_current_slice_measures_the_stack(
    make_napari_viewer, qtbot, saved_threshold_model
):
    from napari_tessera import measure

    viewer = make_napari_viewer()
    stack = np.stack([nuclei_2d((64, 64), seed=s).image for s in range(3)])
    viewer.add_image(stack, name="stack", scale=(2.0, 0.5, 0.5))
    seg = segment_widget(viewer, saved_threshold_model, cpu=True)
    seg.scope.value = "slice"
    seg.output.value = "instances"
    seg.measure.value = True
    viewer.dims.set_point(0, 2.0)  # slice 1
    segment(qtbot, seg)
    viewer.dims.set_point(0, 4.0)  # slice 2
    segment(qtbot, seg)
    layer = viewer.layers["stack labels"]
    table = seg.table
    assert set(table["label"]) == set(np.unique(layer.data)) - {0}
    assert set(table["bbox_z0_px"]) == {1, 2}  # objects of both slices, none of slice 0
    expected = measure(layer.data, stack, voxel_size=(2.0, 0.5, 0.5))
    np.testing.assert_allclose(table["volume_um3"], expected["volume_um3"])
    np.testing.assert_allclose(table["volume_um3"], table["volume_vox"] * 0.5)


def test_lazy_stack_is_segmented_into_a_zarr_backed_layer(
    make_napari_viewer, qtbot, saved_threshold_model, tmp_path
):
    import dask.array as da
    import zarr

    from napari_tessera import segment as core_segment

    stack = np.stack([nuclei_2d((64, 64), seed=s).image for s in range(4)])
    src = ReadRecorder(stack)
    lazy = da.from_array(src, chunks=(1, 64, 64), asarray=False)
    viewer = make_napari_viewer()
    viewer.add_image(lazy, name="big", scale=(2.0, 0.5, 0.5))
    seg = segment_widget(viewer, saved_threshold_model)
    assert "lazy" in seg.info.value
    seg.zarr_folder.value = tmp_path
    seg.output.value = "instances"
    seg.device.value = "cpu"
    src.reads.clear()  # napari itself reads what it shows
    segment(qtbot, seg)
    layer = viewer.layers["big labels"]
    assert isinstance(layer.data, zarr.Array)  # backed by the output, not loaded into memory
    assert seg.last_result.path == tmp_path / "big_labels.zarr"
    assert all(r[0] <= 1 or len(r) < 3 for r in src.reads), src.reads  # a slice per read
    model = load_model(saved_threshold_model)  # linked through Z, as in memory
    expected = core_segment(model, stack, axes="ZYX", instances=True, voxel_size=(2, 0.5, 0.5))
    assert expected.max() > 10  # objects in the slices: the comparison means something
    np.testing.assert_array_equal(np.asarray(layer.data[...]), expected)
    np.testing.assert_allclose(layer.scale, (2.0, 0.5, 0.5))
    assert "labels in" in seg.status.value


def test_current_slice_of_a_lazy_stack_goes_into_a_zarr_array(
    make_napari_viewer, qtbot, saved_threshold_model, tmp_path
):
    import dask.array as da
    import zarr

    from napari_tessera import segment as core_segment

    stack = np.stack([nuclei_2d((64, 64), seed=s).image for s in range(5)])
    src = ReadRecorder(stack)
    viewer = make_napari_viewer()
    viewer.add_image(da.from_array(src, chunks=(1, 64, 64), asarray=False), name="big")
    seg = segment_widget(viewer, saved_threshold_model)
    seg.zarr_folder.value = tmp_path
    seg.scope.value = "slice"
    seg.output.value = "instances"
    seg.device.value = "cpu"
    seg.probabilities.value = True  # not made for lazy images: no full-size float array
    model = load_model(saved_threshold_model)
    first = core_segment(model, stack[1], instances=True)
    second = core_segment(model, stack[3], instances=True)
    assert first.max() > 0 and second.max() > 0
    viewer.dims.set_point(0, 1)
    src.reads.clear()
    segment(qtbot, seg)
    layer = viewer.layers["big labels"]
    assert isinstance(layer.data, zarr.Array) and layer.data.shape == stack.shape
    assert all(r[0] <= 1 or len(r) < 3 for r in src.reads), src.reads
    viewer.dims.set_point(0, 3)
    segment(qtbot, seg)
    assert viewer.layers["big labels"] is layer  # the same layer and array, one more slice
    got = np.asarray(layer.data[...])
    np.testing.assert_array_equal(got[1] > 0, first > 0)
    np.testing.assert_array_equal(got[3] > 0, second > 0)
    assert not got[[0, 2, 4]].any()
    assert got[3][got[3] > 0].min() > got[1].max()  # ids unique across the slices
    assert "big probability" not in viewer.layers


def test_rgb_rule_in_the_widgets(make_napari_viewer, qtbot, saved_threshold_model, infos, errors):
    """The images of tests/test_channels.py::test_cli_segment_and_train_follow_the_rgb_rule,
    as RGB layers: the same note, channel and labels as the CLI; the same error."""
    from _helpers import stain_rgb
    from napari_tessera import segment as core_segment
    from napari_tessera.rgb import rgb_channels

    viewer = make_napari_viewer()
    green, two = stain_rgb(1), stain_rgb(0, 1)
    viewer.add_image(two, name="two.tif", rgb=True)
    layer = viewer.add_image(green, name="green.tif", rgb=True)
    note = rgb_channels(green, "YXC", 1, "green.tif").note
    assert "reading channel 1 (green), the only one with signal" in note
    seg = segment_widget(viewer, saved_threshold_model, output="instances", cpu=True)
    seg.image.value = layer
    assert "1 channel (green)" in seg.info.value
    segment(qtbot, seg)
    model = load_model(saved_threshold_model)
    expected = core_segment(model=model, image=green[..., 1], device="cpu", instances=True)
    np.testing.assert_array_equal(viewer.layers["green.tif labels"].data, expected)
    assert note in infos  # the CLI's line, without "tessera: "
    seg.image.value = viewer.layers["two.tif"]
    several = (
        "two.tif is RGB with signal in several channels (red and green) but the model reads 1: "
        "choose one with channels, e.g. 0 for red"
    )
    assert several in seg.info.value  # said inline
    seg.run()
    assert not seg.running and errors == [f"Segment: {several}"]
    seg.channels.value = "0"  # the way through: choose the channel
    segment(qtbot, seg)
    red = core_segment(model=model, image=two[..., 0], device="cpu", instances=True)
    np.testing.assert_array_equal(viewer.layers["two.tif labels"].data, red)

    # Train: fine-tuning the 1-channel model reads the green too; the choice is not stored
    tr = dock(viewer, "Train")
    tr.image.value = layer
    ann = tr.create_annotations()
    assert ann.data.shape == (64, 64)
    painted = np.where(expected > 0, 2, 0).astype(np.uint8)
    painted[:, :6] = np.where(expected[:, :6] == 0, 1, painted[:, :6])
    ann.data = painted
    tiny_training(tr, steps=2)
    tr.start_from.value = "file"
    tr.start_file.value = saved_threshold_model
    infos.clear()
    tr.train()
    wait_idle(qtbot, tr)
    assert tr.result is not None and infos[0] == note
    assert "channels" not in tr.model.metadata


def test_segment_rgb_layer_picks_a_channel(make_napari_viewer, qtbot, tiny_model_path):
    viewer = make_napari_viewer()
    gray = nuclei_2d((64, 64), seed=1).image
    rgb = np.stack([gray[::-1], gray, gray[:, ::-1]], axis=-1)
    rgb = (rgb / rgb.max() * 255).astype(np.uint8)
    viewer.add_image(rgb, name="colour", rgb=True)
    seg = segment_widget(viewer, tiny_model_path)
    seg.channels.value = "1"
    assert "gray" not in seg.info.value and "1 channel" in seg.info.value
    segment(qtbot, seg)
    from napari_tessera import segment as core_segment

    model = load_model(tiny_model_path)
    expected = core_segment(model, rgb[..., 1], device="cpu", instances=True)
    np.testing.assert_array_equal(viewer.layers["colour labels"].data > 0, expected > 0)
    seg.channels.value = "1,0"  # two channels for a 1-channel model: said inline
    assert "reads 1 channel(s) but 2 are chosen (channels 1,0)" in seg.info.value


def test_segment_cancel(make_napari_viewer, qtbot, tiny_model_path):
    viewer = make_napari_viewer()
    stack = np.stack([nuclei_2d((64, 64), seed=s).image for s in range(6)])
    viewer.add_image(stack, name="stack")
    seg = segment_widget(viewer, tiny_model_path)
    seg.tile_size.value = 32  # many tiles: time to cancel
    seg.halo.value = "pixels"
    seg.halo_px.value = 0
    seg.run()
    assert seg.running and seg.cancel_button.enabled
    seg.cancel()
    wait_idle(qtbot, seg)
    assert seg.run_button.enabled
    assert seg.status.value == "cancelled"
    assert "stack labels" not in viewer.layers


def test_closing_napari_ends_a_running_segmentation(make_napari_viewer, qtbot, tiny_model_path):
    viewer = make_napari_viewer()
    stack = np.stack([nuclei_2d((128, 128), seed=s).image for s in range(24)])
    viewer.add_image(stack, name="stack")
    seg = segment_widget(viewer, tiny_model_path, cpu=True)
    seg.tile_size.value = 32  # 384 tiles: still running when napari closes
    seg.halo.value = "pixels"
    seg.halo_px.value = 0
    seg.run()
    worker = seg._worker
    ended: list[bool] = []
    returned: list[object] = []
    worker.finished.connect(lambda: ended.append(True))
    worker.returned.connect(returned.append)
    qtbot.waitUntil(lambda: seg.progress.value >= 1, timeout=WAIT)
    viewer.close()
    qtbot.waitUntil(lambda: bool(ended), timeout=10_000)  # no hang, no error from a dead widget
    assert not returned  # stopped at a tile, not run to the end
    assert seg.last_result is None


# -- training -----------------------------------------------------------------------------------
def test_train_then_segment_with_the_result(make_napari_viewer, qtbot, nuclei, tmp_path, warned):
    viewer = make_napari_viewer()
    image = viewer.add_image(nuclei.image, name="cells", scale=(0.5, 0.5))
    tr = dock(viewer, "Train")
    seg = dock(viewer, "Segment")
    ann = tr.create_annotations()
    assert isinstance(ann, Labels) and ann.name == "cells annotations"
    assert ann.data.shape == image.data.shape and not ann.data.any()
    np.testing.assert_allclose(ann.scale, image.scale)
    ann.data = sparse_annotations(nuclei.labels, n_objects=6, n_strokes=3, seed=1)
    tiny_training(tr, steps=5)
    with qtbot.waitSignal(session.changed, timeout=WAIT):
        tr.train_button.native.click()
    wait_idle(qtbot, tr)
    assert tr.result is not None and tr.result.steps == 5
    assert len(tr.loss_curve.train) == 5  # one point per step
    assert tr.preview_layer is not None and tr.preview_layer.data.shape == image.data.shape
    assert tr.save_button.enabled

    # offered to the Segment widget at once
    assert session.last_trained_model is tr.model
    assert seg.model_source.value == "session"
    assert "painted objects come out" in tr.status.value  # how well, and the rule, is said
    agreement = tr.result.agreement  # and how far the model agrees with the painting
    assert agreement.describe() in tr.status.value
    # five steps of a tiny network: whether it learnt the painting is told, and warned of
    assert len([m for m in warned if "has not learnt" in m]) == (0 if agreement.learnt else 1)
    segment(qtbot, seg)
    assert viewer.layers["cells labels"].data.shape == image.data.shape

    # saving keeps the model and the painting
    path = tr.save(path=tmp_path / "mine.safetensors")
    assert path == tmp_path / "mine.safetensors"
    assert load_model(path).config.base_channels == 4
    painted, _ = read_image(tmp_path / "mine.annotations.tif")
    np.testing.assert_array_equal(painted, ann.data)


def test_train_starts_from_the_built_in_model_only_where_it_fits(
    make_napari_viewer, qtbot, nuclei, infos
):
    """The first choice of 'start from': the run judges the built-in model on the painting
    and says which start it took; a new network's size settings stay usable for it."""
    viewer = make_napari_viewer()
    viewer.add_image(nuclei.image, name="cells")
    tr = dock(viewer, "Train")
    assert tr.start_from.value == "auto" and tr.base_channels.enabled
    ann = tr.create_annotations()
    ann.data = sparse_annotations(nuclei.labels, n_objects=8, n_strokes=3, seed=1)
    tr.device.value = "cpu"
    tr.limit_by.value = "steps"
    tr.steps.value = 2
    tr.train()
    wait_idle(qtbot, tr)
    fit = tr.result.start_fit
    assert fit is not None and fit.fits  # the built-in model segments painted nuclei
    assert tr.model.metadata["provenance"]["trained_from"] == "fine-tuned"
    assert [m for m in infos if m.startswith("fine-tuning the tessera-nuclei-v1 model")]


def _rows(widget) -> list:
    """The visible rows of a docked widget: (Qt widget, its rectangle), top to bottom."""
    lay = widget.native.layout()
    rows = [lay.itemAt(i).widget() for i in range(lay.count())]
    return [(q, q.geometry()) for q in rows if q is not None and q.isVisible()]


def _rect_in(q, container):
    """Where Qt widget ``q`` is drawn, in ``container``'s coordinates."""
    from qtpy.QtCore import QPoint, QRect

    return QRect(q.mapTo(container, QPoint(0, 0)), q.size())


def test_docked_widgets_keep_their_rows_apart(make_napari_viewer, qtbot, nuclei, tmp_path):
    """Both widgets docked in one column, after a training run and a segmentation (long
    status lines): every row gets at least its minimum height and no row is drawn over
    another; the loss curve stays clear of 'save model as', the radio buttons inside their
    boxes. Screenshots of the window and of each widget are left in tmp_path."""
    from qtpy.QtWidgets import QRadioButton

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1500, 950)
    viewer.add_image(nuclei.image, name="cells")
    seg = dock(viewer, "Segment")
    tr = dock(viewer, "Train")
    ann = tr.create_annotations()
    ann.data = sparse_annotations(nuclei.labels, n_objects=6, n_strokes=3, seed=1)
    tiny_training(tr, steps=5)
    tr.train()
    wait_idle(qtbot, tr)
    assert tr.model is not None and len(tr.loss_curve.train) == 5
    seg.device.value = "cpu"
    segment(qtbot, seg)
    assert seg.status.value.startswith("done")
    qtbot.wait(100)  # the layouts settle

    viewer.screenshot(str(tmp_path / "window.png"), canvas_only=False)
    for name, widget in (("segment", seg), ("train", tr)):
        assert widget.native.grab().save(str(tmp_path / f"{name}.png"))
        rows = _rows(widget)
        assert len(rows) > 10
        for q, rect in rows:
            assert rect.height() > 0, f"{name}: an empty row"
            assert rect.height() >= q.minimumSizeHint().height(), f"{name}: a squeezed row"
        for k, (_, a) in enumerate(rows):
            for _, b in rows[k + 1 :]:
                assert not a.intersects(b), f"{name}: rows {a} and {b} overlap"
    curve = _rect_in(tr.loss_curve, tr.native)
    assert curve.height() >= tr.loss_curve.minimumHeight()
    for w in (tr.status, tr.save_path, tr.save_button):
        assert not curve.intersects(_rect_in(w.native, tr.native)), "the loss curve covers a row"
    for radio in (tr.mode, seg.output, seg.scope):
        box = radio.native
        assert box.height() >= box.minimumSizeHint().height()
        buttons = box.findChildren(QRadioButton)
        assert buttons and all(box.rect().contains(b.geometry()) for b in buttons)
    assert (tmp_path / "window.png").stat().st_size > 0


def test_train_on_every_annotated_image(make_napari_viewer, qtbot, nuclei, errors):
    """Two image/annotation pairs (one made by the widget, one named '<image> annotations'):
    ticked, both train, and the painted pixels of the others are shown; a segmentation
    result (no image of its own) and an unpainted layer are left out."""
    viewer = make_napari_viewer()
    other = nuclei_2d((96, 112), seed=8)
    viewer.add_image(nuclei.image, name="cells")
    viewer.add_image(other.image, name="field 2")
    tr = dock(viewer, "Train")
    tr.image.value = viewer.layers["field 2"]
    second = tr.create_annotations()
    assert second.metadata["tessera_image"] == "field 2"
    second.data = sparse_annotations(other.labels, n_objects=4, n_strokes=2, seed=2)
    tr.image.value = viewer.layers["cells"]
    first = viewer.add_labels(
        sparse_annotations(nuclei.labels, n_objects=4, n_strokes=2, seed=1),
        name="cells annotations",
    )
    viewer.add_labels(np.zeros((96, 112), np.uint8), name="field 2 annotations")  # unpainted
    viewer.add_labels(nuclei.labels.astype(np.uint16), name="cells labels")  # a result
    tr.annotations.reset_choices()
    tr.annotations.value = first
    tiny_training(tr, steps=3)
    tr.all_images.value = True
    painted = int(np.count_nonzero(second.data))
    assert f"field 2 ({painted:,} px painted)" in tr.pairs_info.value
    tr.train()
    assert "2 images (cells:" in tr.status.value
    wait_idle(qtbot, tr)
    assert not errors
    assert tr.result is not None and tr.result.steps == 3
    assert tr.model.metadata["provenance"]["config"]["images"] == 2

    tr.all_images.value = False  # one pair again
    assert not tr.pairs_info.visible
    tr.train()
    wait_idle(qtbot, tr)
    assert tr.model.metadata["provenance"]["config"]["images"] == 1

    second.data = np.ones((80, 80), np.uint8)  # no longer the image's shape
    tr.all_images.value = True
    tr.train()
    assert errors and "'field 2 annotations' have shape (80, 80)" in errors[-1]
    assert not tr.running


def test_painting_during_training_reaches_the_run(
    make_napari_viewer, qtbot, nuclei, tmp_path, errors
):
    """A stroke on the other image's annotations while the set trains is taken at the next
    round (step 26); after the run the layers are no longer watched; Save writes the
    annotations of both images, with the new stroke."""
    viewer = make_napari_viewer()
    other = nuclei_2d((96, 112), seed=8)
    viewer.add_image(nuclei.image, name="cells")
    viewer.add_image(other.image, name="field 2")
    first = viewer.add_labels(
        sparse_annotations(nuclei.labels, n_objects=4, n_strokes=2, seed=1),
        name="cells annotations",
    )
    second = viewer.add_labels(
        sparse_annotations(other.labels, n_objects=2, n_strokes=1, seed=2),
        name="field 2 annotations",
    )
    tr = dock(viewer, "Train")
    tr.image.value = viewer.layers["cells"]
    tr.annotations.value = first
    tiny_training(tr, steps=30)
    tr.all_images.value = True
    before = int(np.count_nonzero(first.data)) + int(np.count_nonzero(second.data))
    tr.train()
    obj = int(np.unique(other.labels[other.labels > 0])[-1])
    y, x = np.argwhere(other.labels == obj).mean(axis=0).round().astype(int)
    second.brush_size = 3
    second.paint((y, x), 2)  # one stroke, as the mouse makes it
    stroke = int(np.count_nonzero(second.data)) - int(np.count_nonzero(tr._run.others[0].labels))
    assert stroke > 0
    wait_idle(qtbot, tr)
    assert not errors
    assert tr.model.metadata["provenance"]["config"]["paint_updates"] == 1
    assert tr._trained_on.new_paint == f"new painting from step 26 ({before + stroke:,} px)"
    assert tr._paint_watch is None
    watched = len(second.events.paint.callbacks)
    second.paint((y, x + 6), 2)  # after the run: nothing listens for the run any more
    assert len(second.events.paint.callbacks) == watched

    path = tr.save(path=tmp_path / "set.safetensors")
    saved, _ = read_image(path.with_name("set.field_2.annotations.tif"))
    np.testing.assert_array_equal(saved, second.data)
    assert "set.field_2.annotations.tif" in tr.status.value


def test_correct_a_result_and_retrain(make_napari_viewer, qtbot, nuclei, tmp_path, errors):
    """Segment, turn the result into corrections, fix it, mark a checked rectangle, train:
    the checked region is complete labels (background 1, objects 2), earlier paint stays
    elsewhere, retraining goes on from the last model on the same loss curve, and Save
    records the checked corrections."""
    viewer = make_napari_viewer()
    viewer.add_image(nuclei.image, name="cells")
    tr = dock(viewer, "Train")
    ann = tr.create_annotations()
    earlier = sparse_annotations(nuclei.labels, n_objects=3, n_strokes=2, seed=1)
    earlier[:64, :64] = 0  # the earlier paint lies outside the region checked below
    ann.data = earlier
    tiny_training(tr, steps=3)
    tr.train()
    wait_idle(qtbot, tr)
    assert len(tr.loss_curve.train) == 3

    assert tr.correct_result() is None and "segment 'cells' first" in errors[-1]
    viewer.add_labels(nuclei.labels.astype(np.uint16), name="cells labels")  # as if segmented
    fix = tr.correct_result()
    assert fix.name == "cells corrections" and fix.mode == "paint"
    np.testing.assert_array_equal(fix.data, nuclei.labels)
    assert fix.selected_label == int(nuclei.labels.max()) + 1
    checked = viewer.layers["cells checked"]
    assert tr.start_from.value == "session"  # retraining goes on from the last model

    wrong = int(np.unique(nuclei.labels[8:56, 8:56])[1])  # an object inside the checked box
    fix.data = np.where(fix.data == wrong, 0, fix.data)  # a wrong object deleted
    checked.add_rectangles(np.array([[0, 0], [63, 63]]))
    tr.steps.value = 2
    tr.train()
    wait_idle(qtbot, tr)
    assert not errors[1:]
    labels = tr._trained_on.labels
    box = np.zeros(labels.shape, bool)
    box[:64, :64] = True
    inside = labels[box]
    assert set(np.unique(inside)) == {1, 2}  # complete: nothing left "not annotated"
    reached = np.isin(fix.data, np.unique(fix.data[box]))  # objects reaching in count whole
    far = ~box & ~reached
    np.testing.assert_array_equal(labels[far], earlier[far])
    assert (labels[box & (nuclei.labels == wrong)] == 1).all()  # deleted: checked background
    assert tr.model.metadata["provenance"]["trained_from"] == "fine-tuned"
    assert [s for s, _ in tr.loss_curve.train] == [1, 2, 3, 4, 5]  # the same curve goes on

    path = tr.save(path=tmp_path / "fixed.safetensors")
    saved, _ = read_image(path.with_name("fixed.annotations.tif"))
    np.testing.assert_array_equal(saved, labels)


def test_fine_tune_a_model_file_on_a_stack(make_napari_viewer, qtbot, tiny_model_path):
    """Start from a file (the file's cached model is copied, not trained in place); a stack
    with one painted slice; the live preview shows the slice on screen."""
    from napari_tessera._widgets import _models

    viewer = make_napari_viewer()
    cells = [nuclei_2d((128, 128), seed=s) for s in range(3)]
    viewer.add_image(np.stack([c.image for c in cells]), name="stack")
    tr = dock(viewer, "Train")
    viewer.dims.set_point(0, 1)
    ann = tr.create_annotations()
    assert ann.data.shape == (3, 128, 128)
    painted = np.zeros((3, 128, 128), np.uint8)
    painted[1] = sparse_annotations(cells[1].labels, n_objects=5, n_strokes=3, seed=0)
    ann.data = painted
    tiny_training(tr, steps=3)
    tr.start_from.value = "file"
    tr.start_file.value = tiny_model_path
    before = {
        k: v.clone() for k, v in _models.file_spec(tiny_model_path).load().state_dict().items()
    }
    tr.train()
    wait_idle(qtbot, tr)
    assert tr.result is not None and tr.result.steps == 3
    assert tr.model.metadata["provenance"]["trained_from"] == "fine-tuned"
    cached = _models.file_spec(tiny_model_path).load().state_dict()
    assert all(np.array_equal(before[k], cached[k]) for k in before)
    preview = tr.preview_layer.data
    assert preview.shape == (3, 128, 128)
    assert not preview[0].any() and not preview[2].any()


def test_stop_ends_training_and_keeps_a_model(make_napari_viewer, qtbot, nuclei):
    viewer = make_napari_viewer()
    viewer.add_image(nuclei.image, name="cells")
    viewer.add_labels(sparse_annotations(nuclei.labels, n_objects=6, seed=2), name="paint")
    tr = dock(viewer, "Train")
    tiny_training(tr, seconds=120)
    tr.train()
    qtbot.waitUntil(lambda: len(tr.loss_curve.train) >= 2, timeout=WAIT)
    t0 = time.perf_counter()
    tr.stop_button.native.click()
    wait_idle(qtbot, tr, timeout=10_000)
    assert time.perf_counter() - t0 < 5.0
    assert tr.result.stopped == "requested"
    assert tr.model is not None and session.last_trained_model is tr.model
    assert tr.train_button.enabled and not tr.stop_button.enabled


def test_closing_napari_ends_a_running_training(make_napari_viewer, qtbot, nuclei):
    viewer = make_napari_viewer()
    viewer.add_image(nuclei.image, name="cells")
    viewer.add_labels(sparse_annotations(nuclei.labels, n_objects=6, seed=2), name="paint")
    tr = dock(viewer, "Train")
    tiny_training(tr, seconds=120)
    tr.train()
    qtbot.waitUntil(lambda: len(tr.loss_curve.train) >= 1, timeout=WAIT)
    worker = tr._worker
    ended: list[bool] = []
    worker.finished.connect(lambda: ended.append(True))
    viewer.close()
    qtbot.waitUntil(lambda: bool(ended), timeout=10_000)  # no exception from a dead widget


def test_gui_stays_responsive_while_training(make_napari_viewer, qtbot, nuclei):
    viewer = make_napari_viewer()
    viewer.add_image(nuclei.image, name="cells")
    viewer.add_labels(sparse_annotations(nuclei.labels, n_objects=6, seed=2), name="paint")
    tr = dock(viewer, "Train")
    tiny_training(tr, seconds=3)
    # the widget imports what PyTorch loads lazily in the background when it opens; a user
    # paints for a while first, so wait for it (the first run would otherwise share the
    # interpreter with ~800 module imports)
    qtbot.waitUntil(_train.warmed_up.is_set, timeout=WAIT)
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    tr.train()
    assert tr.running
    timer.start()
    wait_idle(qtbot, tr)
    timer.stop()
    assert tr.result is not None and tr.result.steps >= 2
    gaps = np.diff(ticks)
    assert len(gaps) > 100, "the event loop hardly turned"
    print(f"timer gaps while training: max {gaps.max() * 1e3:.0f} ms, n={len(gaps)}")
    assert gaps.max() < 0.100


# -- errors -------------------------------------------------------------------------------------
def test_error_no_image_layer(make_napari_viewer, qtbot, errors):
    viewer = make_napari_viewer()
    tr = dock(viewer, "Train")
    seg = dock(viewer, "Segment")
    tr.train_button.native.click()
    assert errors and "no image layer" in errors[-1]
    assert tr.train_button.enabled and not tr.running
    seg.model_source.value = "file"
    seg.run_button.native.click()
    assert len(errors) == 2
    assert seg.run_button.enabled and not seg.running


def test_error_annotations_of_another_shape(make_napari_viewer, qtbot, nuclei, errors):
    viewer = make_napari_viewer()
    viewer.add_image(nuclei.image, name="cells")
    viewer.add_labels(np.ones((64, 64), np.uint8), name="wrong")
    tr = dock(viewer, "Train")
    tiny_training(tr)
    tr.train_button.native.click()
    assert errors and "shape" in errors[-1] and "(64, 64)" in errors[-1]
    assert tr.train_button.enabled and not tr.running


def test_error_nothing_painted(make_napari_viewer, qtbot, nuclei, errors):
    viewer = make_napari_viewer()
    viewer.add_image(nuclei.image, name="cells")
    tr = dock(viewer, "Train")
    tr.create_annotations()
    tiny_training(tr)
    tr.train_button.native.click()
    assert errors and "nothing is painted" in errors[-1]
    assert tr.train_button.enabled and not tr.running


def test_error_in_the_worker_is_a_notification(
    make_napari_viewer, qtbot, nuclei, errors, tiny_model_path
):
    """Errors found by the core in the worker thread come back through ``errored``."""
    viewer = make_napari_viewer()
    viewer.add_image(nuclei.image, name="cells")
    only_objects = (sparse_annotations(nuclei.labels, seed=0) == 2).astype(np.uint8) * 2
    viewer.add_labels(only_objects, name="paint")
    tr = dock(viewer, "Train")
    tiny_training(tr)
    tr.train()
    wait_idle(qtbot, tr)
    assert errors and "background" in errors[-1]
    assert tr.train_button.enabled and tr.model is None

    seg = segment_widget(viewer, tiny_model_path, cpu=True)
    seg.precision.value = "fp16"  # refused by the core, in the worker
    seg.run()
    wait_idle(qtbot, seg)
    assert "fp16" in errors[-1]
    assert seg.run_button.enabled and "cells labels" not in viewer.layers


def test_segment_gives_3d_objects_for_a_z_stack(make_napari_viewer, qtbot, saved_threshold_model):
    """Instances of a Z stack are 3D objects, linked with the layer's Z scale; unticked,
    each slice keeps its own."""
    from napari_tessera import segment as core_segment
    from napari_tessera.synthetic import nuclei_3d

    s = nuclei_3d((12, 64, 64), anisotropy=2.0, seed=6)
    viewer = make_napari_viewer()
    viewer.add_image(s.image, name="nuclei", scale=(2.0, 1.0, 1.0))
    seg = segment_widget(viewer, saved_threshold_model, cpu=True, output="instances")
    assert seg.link_z.value and not seg.link_z.native.isHidden()
    segment(qtbot, seg)
    model = load_model(saved_threshold_model)
    want = core_segment(
        model, s.image, axes="ZYX", instances=True, device="cpu", voxel_size=(2, 1, 1)
    )
    got = viewer.layers["nuclei labels"].data
    np.testing.assert_array_equal(got, want)
    assert max(len(np.unique(np.nonzero(got == i)[0])) for i in np.unique(got[got > 0])) > 2
    seg.link_z.value = False
    segment(qtbot, seg)
    flat = viewer.layers["nuclei labels"].data
    assert all(len(np.unique(np.nonzero(flat == i)[0])) == 1 for i in np.unique(flat[flat > 0]))


def test_save_a_bioimageio_package_and_segment_with_it(
    make_napari_viewer, qtbot, nuclei, tmp_path, errors
):
    """Save as .zip writes a bioimage.io package; the Segment widget runs it as a model file
    and gives the labels the trained model gives."""
    pytest.importorskip("bioimageio.spec")
    from napari_tessera.inference import segment as core_segment

    viewer = make_napari_viewer()
    viewer.add_image(nuclei.image, name="cells")
    tr = dock(viewer, "Train")
    tr.create_annotations().data = sparse_annotations(nuclei.labels, n_objects=4, n_strokes=2)
    tiny_training(tr, steps=3)
    tr.train()
    wait_idle(qtbot, tr)
    path = tr.save(path=tmp_path / "cells.zip")
    assert not errors and path == tmp_path / "cells.zip" and path.is_file()
    assert (tmp_path / "cells.annotations.tif").is_file()
    seg = segment_widget(viewer, path, cpu=True, output="classes")
    segment(qtbot, seg)
    want = core_segment(tr.model, nuclei.image, device="cpu")
    np.testing.assert_array_equal(viewer.layers["cells labels"].data, want)


def test_a_bioimageio_model_from_another_tool(make_napari_viewer, qtbot, nuclei, tmp_path, errors):
    """The Segment widget runs another tool's ONNX package through the tiling engine, as the
    core does; the Train widget refuses to train it, in one line."""
    pytest.importorskip("onnxruntime")
    from napari_tessera.inference import segment as core_segment
    from napari_tessera.io import load_model
    from test_foreign import Variant, build_package

    path = build_package(tmp_path / "other.zip", Variant())
    viewer = make_napari_viewer()
    viewer.add_image(nuclei.image, name="cells")
    seg = segment_widget(viewer, path, cpu=True, output="instances")
    segment(qtbot, seg)
    want = core_segment(load_model(path), nuclei.image, instances=True)
    assert not errors
    np.testing.assert_array_equal(viewer.layers["cells labels"].data, want)
    tr = dock(viewer, "Train")
    tr.create_annotations().data = sparse_annotations(nuclei.labels, n_objects=4, n_strokes=2)
    tiny_training(tr, steps=2)
    tr.start_from.value = "file"
    tr.start_file.value = path
    tr.train()
    assert len(errors) == 1 and "another tool" in errors[0] and "\n" not in errors[0]
