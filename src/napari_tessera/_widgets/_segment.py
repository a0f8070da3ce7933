"""The Segment widget: run a U-Net over an image layer in a worker thread."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    RadioButtons,
    SpinBox,
)
from napari.layers import Image, Labels

from ..axes import layout
from ..device import PRECISIONS, resolve_device
from ..errors import InputError, TesseraError
from ..files import FileDone, FileProgress, FolderReport, iter_segment_files
from ..images import read_image
from ..inference import Notice, iter_segment
from ..measure import measure, write_table_csv
from ..options import SegmentOptions
from ..postprocess import ids_after, labels_dtype
from ..sets import expand_inputs
from . import _models
from ._common import (
    ImageInput,
    JobHandle,
    available_devices,
    describe,
    find_layer,
    image_input,
    make_worker,
    notify_info,
    notify_warning,
    report_error,
    text_label,
    while_open,
)
from ._session import session

if TYPE_CHECKING:
    import napari


@dataclass
class SegmentResult:
    labels: Any  # numpy, or a zarr array (lazy input) backed by ``path``
    foreground: np.ndarray | None  # foreground probability, shaped like labels
    slice_index: int | None  # None: the whole image
    seconds: float
    path: Path | None = None  # the zarr output of a lazy image
    halo: str = ""  # e.g. "halo 64 px (auto)"
    table: Any = None  # the objects table (pandas DataFrame) of a measured whole image
    table_error: str | None = None  # why measuring failed (the labels are kept)


@dataclass(frozen=True)
class MeasureSpec:
    """How to measure the objects of an image layer's labels: the voxel size of its spatial
    axes (Z, Y, X or Y, X) in micrometres (None: pixels only)."""

    voxel_size: tuple[float, ...] | None = None
    unit: str = "um"


def _microns_per(unit) -> float | None:
    """Micrometres in one ``unit`` (a pint unit of a napari layer); None: not a length."""
    try:
        return float((1 * unit).to("micrometer").magnitude)
    except Exception:  # noqa: BLE001 - "pixel", None or anything pint cannot convert
        return None


def measure_spec(layer, inp: ImageInput) -> MeasureSpec:
    """The voxel size of an image layer for its objects table: the layer's ``scale`` (what
    its labels layer gets) in its ``units`` converted to micrometres; with napari's default
    units (pixels) a scale other than 1 is read as micrometres, and a scale of 1 everywhere
    means no voxel size (the table in pixels only)."""
    out = inp.lay.out_axes
    keep = [i for i, a in enumerate(inp.dims) if a != "C"]
    units = tuple(getattr(layer, "units", None) or ())
    idx = [k for k, a in enumerate(out) if a in "ZYX"]
    scale = [float(inp.scale[k]) for k in idx]
    per = [
        _microns_per(units[keep[k]]) if k < len(keep) and keep[k] < len(units) else None
        for k in idx
    ]
    if all(f is not None for f in per):
        return MeasureSpec(tuple(s * f for s, f in zip(scale, per)))
    if all(s == 1.0 for s in scale):
        return MeasureSpec(None)
    return MeasureSpec(tuple(scale))


def measure_labels(labels, inp: ImageInput, spec: MeasureSpec):
    """The objects table of ``labels`` (shaped ``inp.lay.out_shape``) in every channel of
    the image layer's data (RGB channels named red, green, blue, alpha)."""
    from ..rgb import NAMES

    rgb = "C" in inp.lay.axes and "C" not in inp.dims
    names = NAMES[: inp.raw.shape[-1]] if rgb else None
    return measure(
        np.asarray(labels),
        np.asarray(inp.raw),
        axes=inp.lay.out_axes,
        image_axes=inp.lay.axes,
        voxel_size=spec.voxel_size,
        unit=spec.unit,
        channel_names=names,
    )


def zyx_scale(inp: ImageInput) -> tuple[float, float, float] | None:
    """The layer's (Z, Y, X) scale, for an image with a Z axis (else None)."""
    out = inp.lay.out_axes
    if "Z" not in out:
        return None
    return tuple(float(inp.scale[out.index(a)]) for a in "ZYX")


def lazy_output_path(folder: str | Path, name: str) -> Path:
    """A new ``NAME_labels.zarr`` in ``folder`` (numbered if the name is taken)."""
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "image"
    path = Path(folder) / f"{stem}_labels.zarr"
    k = 1
    while path.exists() or path.with_name(path.name + ".partial").exists():
        k += 1
        path = Path(folder) / f"{stem}_labels-{k}.zarr"
    return path


def segment_job(
    inp: ImageInput,
    spec,
    slice_index,
    options: SegmentOptions,
    want_prob,
    out_path=None,
    measuring: MeasureSpec | None = None,
):
    """Runs in the worker thread: yields Progress, returns a :class:`SegmentResult`.

    With ``out_path`` (a lazy image, whole stack) the labels go slice by slice into that zarr
    array and the result holds it opened read-only: nothing is materialised. With
    ``measuring``, the objects of a whole (in-memory) image are measured here too.
    """
    t0 = time.perf_counter()
    model = spec.load()
    image = inp.load()
    axes = inp.axes
    # the whole image: its channels, and its voxel size for objects linked through Z
    options = replace(options, channels=inp.lay.pick, voxel_size=zyx_scale(inp))
    if out_path is not None and slice_index is None:
        import zarr

        from ..chunked import iter_segment_to_zarr

        path = yield from iter_segment_to_zarr(model, image, out_path, axes=axes, options=options)
        labels = zarr.open_array(str(path), mode="r")
        seconds = time.perf_counter() - t0
        return SegmentResult(labels, None, None, seconds, Path(path), halo_used(model, options))
    if slice_index is not None:
        image = inp.lay.slice_view(image, slice_index)  # (C, Y, X), channels picked
        axes = "CYX"
        options = replace(options, channels=None)
    lay = layout(np.shape(image), axes, options.channels)
    probs = None
    if want_prob:
        probs = np.zeros((model.config.n_classes, *lay.out_shape), np.float32)
    labels = yield from iter_segment(
        model, image, axes=axes, probabilities_out=probs, options=options
    )
    fg = None
    if probs is not None:
        fg = probs[0] if probs.shape[0] == 1 else 1.0 - probs[0]
    table = table_error = None
    if measuring is not None and slice_index is None:
        try:
            table = measure_labels(labels, inp, measuring)
        except TesseraError as err:
            table_error = str(err)
    seconds = time.perf_counter() - t0
    return SegmentResult(
        labels, fg, slice_index, seconds, None, halo_used(model, options), table, table_error
    )


@dataclass
class _AllImages:
    """How an all-images run is going (main thread only)."""

    total: int
    done: int = 0
    objects: int = 0
    failed: list = field(default_factory=list)


@dataclass
class ImageDone:
    """One image of an all-images run is through: its result, or why it failed."""

    inp: ImageInput
    result: SegmentResult | None
    error: str | None = None


def segment_all_job(inputs, spec, options: SegmentOptions, want_prob, folder, measuring=None):
    """Runs in the worker thread: every image in turn (lazy ones into ``folder``); yields
    Progress and an :class:`ImageDone` per image. An image that fails is reported and the
    others go on. ``measuring``: a :class:`MeasureSpec` per input, or None."""
    for k, inp in enumerate(inputs):
        out_path = lazy_output_path(folder, inp.name) if inp.lazy else None
        prob = want_prob and not inp.lazy
        how = measuring[k] if measuring is not None else None
        try:
            result = yield from segment_job(inp, spec, None, options, prob, out_path, how)
        except TesseraError as err:
            yield ImageDone(inp, None, str(err))
            continue
        yield ImageDone(inp, result)


def segment_folder_job(
    spec, images, folder, options: SegmentOptions, restart: bool, tables: Path | None = None
):
    """Runs in the worker thread: every image file into ``folder`` with one loaded model
    (:func:`~napari_tessera.files.iter_segment_files`; ``tables``: where the objects tables
    go); returns its FolderReport."""
    from ..rgb import files_by_rule

    model = spec.load()
    return (
        yield from iter_segment_files(
            model,
            images,
            folder,
            options,
            restart=restart,
            run_files=files_by_rule,
            tables=tables,
        )
    )


def halo_used(model, options: SegmentOptions) -> str:
    """The line on the auto halo a run used ("" for other halos)."""
    from ..halo import describe_halo

    return describe_halo(model, options.halo) or ""


def _also(text: str) -> str:
    return f"; {text}" if text else ""


def layer_choices(viewer, kind):
    def get(_widget=None):
        return [(layer.name, layer) for layer in viewer.layers if isinstance(layer, kind)]

    return get


class SegmentWidget(Container):
    """Segment an image layer with the built-in model, the last trained model, or a file."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        self._viewer = napari_viewer
        self._worker = None
        self._input: ImageInput | None = None
        self._instances = False
        self._all: _AllImages | None = None  # an all-images run in progress
        self._jobs = JobHandle()
        self.last_result: SegmentResult | None = None
        self.labels_layer: Labels | None = None
        self.table = None  # the objects table of the last labels measured (a DataFrame)
        self._measuring: MeasureSpec | None = None  # of the run in progress
        self._slice_stores: dict[str, Any] = {}  # layer name -> zarr array (lazy stacks)
        self._output_by_hand = False  # picked by the user: no longer follows the model
        self._output_default = "classes"

        self.extend(
            self._image_rows(napari_viewer)
            + self._tiling_rows()
            + self._output_rows()
            + self._run_rows()
        )
        text_label(self.status)
        text_label(self.info)
        self._connect()
        self._default_output()
        self._update_visibility()
        self._update_info()

    # -- the rows -----------------------------------------------------------------------------
    def _image_rows(self, viewer) -> list:
        """What to segment and with which model."""
        self.image = ComboBox(
            label="image", choices=layer_choices(viewer, Image), tooltip="image to segment"
        )
        self.axes = LineEdit(
            label="axes",
            value="auto",
            tooltip="axes of the image data, e.g. YX, ZYX, CYX (channels first), ZCYX; "
            "'auto' guesses from the shape and the model (RGB layers are handled for you)",
        )
        self.channels = LineEdit(
            label="channels",
            value="auto",
            tooltip="image channels the network reads, in order, from 0: e.g. 1 (green of an RGB "
            "image) or 1,0 (cytoplasm, then nuclei); 'all'; 'auto': those a trained model "
            "stores, else all (of an RGB image, a 1-channel model reads the one colour with "
            "signal; alpha only when picked)",
        )
        self.model_source = ComboBox(
            label="model", choices=lambda _w=None: _models.choices(training=False)
        )
        self.model_file = FileEdit(
            label="model file",
            mode="r",
            filter="Tessera or bioimage.io model (*.safetensors *.zip)",
        )
        return [self.image, self.axes, self.channels, self.model_source, self.model_file]

    def _tiling_rows(self) -> list:
        """How the image is tiled and where the network runs."""
        self.tile_size = SpinBox(
            label="tile size (0 = auto)",
            min=0,
            max=8192,
            step=16,
            value=0,
            tooltip="network input per tile in pixels (auto = 1024 kept pixels plus the halo)",
        )
        self.halo = ComboBox(
            label="halo",
            choices=[
                ("auto (measured for this model)", "auto"),
                ("exact (tile-independent)", "exact"),
                ("pixels (below)", "pixels"),
            ],
            value="auto",
            tooltip="auto: the context this model needs, measured, so tile seams change "
            "99.9% of probabilities by at most 0.01; exact: results equal one whole-image "
            "pass (slower); pixels: the halo below, approximate near tile seams",
        )
        self.halo_px = SpinBox(label="halo (px)", min=0, max=1024, value=32)
        self.batch_size = SpinBox(label="batch size", min=1, max=256, value=1)
        self.device = ComboBox(label="device", choices=available_devices(), value="auto")
        self.precision = ComboBox(label="precision", choices=list(PRECISIONS), value="fp32")
        return [
            self.tile_size,
            self.halo,
            self.halo_px,
            self.batch_size,
            self.device,
            self.precision,
        ]

    def _output_rows(self) -> list:
        """What comes out: classes or objects, and the objects table."""
        self.output = RadioButtons(
            label="output",
            choices=[("classes", "classes"), ("instances", "instances")],
            value="classes",
            orientation="horizontal",
        )
        self.min_size = SpinBox(
            label="min object (px)",
            min=0,
            max=10**6,
            value=0,
            tooltip="objects smaller than this are dropped; 0: the size the model stores (a "
            "model trained here: a fifth of its median painted object), else 8 px",
        )
        self.link_z = CheckBox(
            text="3D objects in Z stacks",
            value=True,
            tooltip="the objects of a Z stack's slices are linked into 3D objects, with the "
            "layer's Z scale; untick for each slice's own objects (time points are never "
            "linked)",
        )
        self.model_edges = CheckBox(
            text="apply the model's edge offset",
            value=True,
            tooltip="a model trained here stores how far to move object edges so its objects "
            "match the painted ones; untick to keep the edges as the network predicts them",
        )
        self.measure = CheckBox(
            text="measure objects",
            value=False,
            tooltip="measure every object (size, centroid, bounding box, shape, intensity per "
            "channel) into the labels layer's features, shown on hover; the layer's scale is "
            "the voxel size (micrometres); a folder run writes {name}_objects.csv beside the "
            "labels",
        )
        self.save_table_button = PushButton(text="Save table as CSV", enabled=False)
        return [
            self.output,
            self.min_size,
            self.link_z,
            self.model_edges,
            self.measure,
            self.save_table_button,
        ]

    def _run_rows(self) -> list:
        """Where the results go, what to run on, Segment and Cancel, the progress."""
        self.probabilities = CheckBox(text="add a probability layer", value=False)
        self.zarr_folder = FileEdit(
            label="zarr folder",
            mode="d",
            value=tempfile.gettempdir(),
            tooltip="where the labels of a lazy (dask/zarr) image are written, slice by slice",
        )
        self.scope = RadioButtons(
            label="run on",
            choices=[
                ("whole image", "stack"),
                ("current slice", "slice"),
                ("all open images", "all"),
                ("a folder of files", "folder"),
            ],
            value="stack",
            orientation="horizontal",
        )
        self.input_folder = FileEdit(
            label="images folder",
            mode="d",
            tooltip="every .tif, .tiff, .npy and .zarr image in this folder is segmented",
        )
        self.output_folder = FileEdit(
            label="write labels to",
            mode="d",
            tooltip="one {name}_labels.tif (.zarr for zarr images) per image; images whose "
            "labels are already there are skipped, so a stopped run resumes",
        )
        self.open_results = CheckBox(
            text="open each result as a layer",
            value=False,
            tooltip="for a few images; leave it off for large sets (the files are written "
            "either way)",
        )
        self.info = Label(label="")
        self.run_button = PushButton(text="Segment")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", min=0, max=1, value=0)
        self.status = Label(label="status", value="ready")
        buttons = Container(
            widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False
        )
        buttons.margins = (0, 0, 0, 0)
        return [
            self.probabilities,
            self.zarr_folder,
            self.scope,
            self.input_folder,
            self.output_folder,
            self.open_results,
            self.info,
            buttons,
            self.progress,
            self.status,
        ]

    def _connect(self) -> None:
        self.model_source.changed.connect(self._update_visibility)
        self.model_source.changed.connect(self._update_info)
        self.model_file.changed.connect(self._update_info)
        self.halo.changed.connect(self._update_visibility)
        self.output.changed.connect(self._update_visibility)
        self.output.changed.connect(self._output_picked)
        self.model_source.changed.connect(self._default_output)
        self.model_file.changed.connect(self._default_output)
        self.scope.changed.connect(self._update_visibility)
        self.image.changed.connect(self._update_info)
        self.axes.changed.connect(self._update_info)
        self.channels.changed.connect(self._update_info)
        self.run_button.changed.connect(self.run)
        self.save_table_button.changed.connect(self.save_table)
        self.cancel_button.changed.connect(self.cancel)
        session.changed.connect(self._on_session_model)
        self.native.destroyed.connect(self._jobs.abort)  # closing napari cancels the run
        self.native.destroyed.connect(self._forget_session)

    # -- state --------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._worker is not None

    def _update_visibility(self, *_):
        self.model_file.visible = self.model_source.value == _models.FILE
        self.halo_px.visible = self.halo.value == "pixels"
        self.min_size.visible = self.output.value == "instances"
        self.link_z.visible = self.output.value == "instances"
        self.measure.visible = self.output.value == "instances"
        self.save_table_button.visible = self.output.value == "instances"
        folder = self.scope.value == "folder"
        for w in (self.input_folder, self.output_folder, self.open_results):
            w.visible = folder
        self.probabilities.enabled = not folder

    def _default_output(self, *_):
        """Instances (one id per object) for a model whose classes are objects, classes for a
        multi-class model; it follows the model chosen until the user picks an output."""
        spec = self._spec(quiet=True)
        if self._output_by_hand or spec is None:
            return
        self._output_default = "instances" if spec.finds_objects else "classes"
        self.output.value = self._output_default

    def _output_picked(self, value):
        # napari's reset_choices sets the same value again: only another one is a choice
        if value != self._output_default:
            self._output_by_hand = True

    def _update_info(self, *_):
        """Say how the image will be read; errors here are shown inline, not as pop-ups."""
        layer = self.image.value
        if layer is None:
            self.info.value = "open an image layer to segment"
            return
        try:
            spec = self._spec(quiet=True)
            inp = image_input(
                layer,
                spec.in_channels if spec else None,
                self.axes.value,
                self.channels.value,
                spec.channels if spec else None,
            )
        except TesseraError as err:
            self.info.value = f"⚠ {err}"
            return
        self.info.value = describe(inp)
        self.zarr_folder.visible = inp.lazy
        if not inp.lay.lead_shape and self.scope.value == "slice":
            self.scope.value = "stack"

    def _spec(self, quiet: bool = False):
        try:
            return _models.resolve(self.model_source.value, self.model_file.value)
        except TesseraError:
            if quiet:
                return None
            raise

    def _on_session_model(self):
        try:
            self.model_source.reset_choices()
        except RuntimeError:  # the Qt widget is gone (napari closed): stop listening
            session.changed.disconnect(self._on_session_model)
            return
        if session.last_trained_model is not None:
            self.model_source.value = _models.SESSION
        self._default_output()  # the new model may have other classes
        self._update_info()

    def _forget_session(self, *_):
        session.changed.disconnect(self._on_session_model)

    def _set_running(self, running: bool) -> None:
        self.run_button.enabled = not running
        self.cancel_button.enabled = running

    # -- actions ------------------------------------------------------------------------------
    def run(self, *_) -> None:
        """Start segmenting in a worker thread (returns at once)."""
        if self.running:
            return
        try:
            spec = self._spec()
            resolve_device(self.device.value)  # unavailable device: an error now, not later
            options = self._options()
            if self.scope.value == "all":
                self._run_all(spec, options)
            elif self.scope.value == "folder":
                self._run_folder(spec, options)
            else:
                self._run_one(spec, options)
        except TesseraError as err:
            report_error("Segment", err)

    def _options(self) -> SegmentOptions:
        """The settings as picked (channels are each image's own, set per run)."""
        return SegmentOptions(
            tile_size=self.tile_size.value or None,
            halo=self.halo.value if self.halo.value != "pixels" else int(self.halo_px.value),
            batch_size=int(self.batch_size.value),
            device=self.device.value,
            precision=self.precision.value,
            instances=self.output.value == "instances",
            link_z=bool(self.link_z.value),
            min_size=int(self.min_size.value) or None,
            edge_offset=None if self.model_edges.value else 0.0,
        )

    def _measure_on(self) -> bool:
        """Objects are measured: "measure objects" ticked, with instances output."""
        return bool(self.measure.value) and self.output.value == "instances"

    def save_table(self, *_, path: str | Path | None = None) -> Path | None:
        """Write the objects table of the last labels measured as CSV (asks where when no
        ``path`` is given); returns the path written, or None."""
        if self.table is None:
            report_error(
                "Save table",
                InputError("no objects table yet: segment with 'measure objects' ticked"),
            )
            return None
        if path is None:
            path = self._ask_table_path()
            if path is None:
                return None
        path = Path(path)
        if path.suffix.lower() != ".csv":
            path = path.with_name(path.name + ".csv")
        try:
            write_table_csv(self.table, path)
        except (TesseraError, OSError) as err:
            report_error("Save table", err)
            return None
        self.status.value = f"table of {len(self.table)} objects saved to {path}"
        return path

    def _ask_table_path(self) -> str | None:
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getSaveFileName(
            self.native, "Save objects table", "objects.csv", "CSV table (*.csv)"
        )
        return path or None

    def _zarr_folder(self) -> Path:
        folder = Path(self.zarr_folder.value)
        if not folder.is_dir():
            raise TesseraError(f"zarr folder does not exist: {folder}")
        return folder

    def _run_one(self, spec, options: SegmentOptions) -> None:
        layer = self.image.value
        inp = image_input(
            layer, spec.in_channels, self.axes.value, self.channels.value, spec.channels
        )
        slice_index = None
        if self.scope.value == "slice" and inp.lay.lead_shape:
            slice_index = inp.lead_index(layer, self._viewer.dims.point)
        out_path = None
        if inp.lazy:
            folder = self._zarr_folder()
            if slice_index is None:
                out_path = lazy_output_path(folder, layer.name)
            if self.probabilities.value:
                notify_info("a lazy image gets no probability layer (labels only)")
        if inp.note:
            notify_info(inp.note)
        self._input = inp
        self._instances = options.instances
        self._measuring = measure_spec(layer, inp) if self._measure_on() else None
        if self._measuring is not None and inp.lazy:
            notify_info(f"{inp.name}: the objects of a lazy image are not measured")
            self._measuring = None
        want_prob = bool(self.probabilities.value) and not inp.lazy
        worker = make_worker(
            segment_job,
            inp,
            spec,
            slice_index,
            options,
            want_prob,
            out_path,
            self._measuring if slice_index is None else None,  # a slice: the stack, after
        )
        where = f"slice {slice_index}" if slice_index is not None else inp.name
        self._start(worker, f"segmenting {where} with the {spec.label} ...")

    def _run_all(self, spec, options: SegmentOptions) -> None:
        """Every open image layer in turn; one that cannot be read is reported and skipped."""
        inputs, skipped = [], []
        for layer in [la for la in self._viewer.layers if isinstance(la, Image)]:
            axes = self.axes.value if layer is self.image.value else "auto"
            try:
                inputs.append(
                    image_input(layer, spec.in_channels, axes, self.channels.value, spec.channels)
                )
            except TesseraError as err:
                skipped.append(f"{layer.name}: {err}")
        if not inputs:
            raise TesseraError("no open image can be segmented" + _also("; ".join(skipped)))
        for inp in inputs:
            if inp.note:
                notify_info(inp.note)
        folder = self._zarr_folder() if any(i.lazy for i in inputs) else None
        self._instances = options.instances
        self._all = _AllImages(len(inputs) + len(skipped), failed=list(skipped))
        want_prob = bool(self.probabilities.value)
        measuring = self._measuring = None
        if self._measure_on():
            self._measuring = MeasureSpec()  # each image's own, measured in the worker
            layers = {la.name: la for la in self._viewer.layers if isinstance(la, Image)}
            measuring = [
                None if inp.lazy else measure_spec(layers[inp.name], inp) for inp in inputs
            ]
            lazy = [inp.name for inp in inputs if inp.lazy]
            if lazy:
                notify_info(f"the objects of lazy images are not measured: {', '.join(lazy)}")
        worker = make_worker(segment_all_job, inputs, spec, options, want_prob, folder, measuring)
        self._start(worker, f"segmenting {len(inputs)} images with the {spec.label} ...")

    def _run_folder(self, spec, options: SegmentOptions) -> None:
        """Every image file of a folder into another folder, written as files."""
        source, target = Path(self.input_folder.value), Path(self.output_folder.value)
        if str(source) in ("", "."):
            raise InputError("choose the folder of images to segment")
        if str(target) in ("", "."):
            raise InputError("choose the folder to write the labels to")
        if not source.is_dir():
            raise InputError(f"images folder does not exist: {source}")
        images = expand_inputs([str(source)])
        if target.resolve() == source.resolve():
            raise InputError("write the labels to another folder than the images")
        self._instances = options.instances
        self._all = _AllImages(len(images))
        self._measuring = None
        tables = target if self._measure_on() else None  # {stem}_objects.csv beside the labels
        worker = make_worker(segment_folder_job, spec, images, target, options, False, tables)
        self._start(worker, f"segmenting {len(images)} files with the {spec.label} ...")

    def _start(self, worker, status: str) -> None:
        # connect everything before the worker starts
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_errored)
        worker.aborted.connect(self._on_aborted)
        worker.finished.connect(self._on_finished)
        self._worker = self._jobs.worker = worker
        self._set_running(True)
        self.progress.value = 0
        self.status.value = status
        worker.start()

    def cancel(self, *_) -> None:
        if self._worker is not None:
            self._worker.quit()
            self.status.value = "cancelling ..."
            self.cancel_button.enabled = False

    # -- worker signals (main thread) ---------------------------------------------------------
    @while_open
    def _on_progress(self, event) -> None:
        if isinstance(event, Notice):
            notify_warning(event.message)
            return
        if isinstance(event, ImageDone):
            self._on_image_done(event)
            return
        if isinstance(event, FileDone):
            self._on_file_done(event)
            return
        if isinstance(event, FileProgress):
            self.progress.max = 1000
            self.progress.value = int(1000 * event.fraction)
            self.status.value = f"file {event.index + 1} of {event.n_files}: {event.name}"
            return
        if self.progress.max != event.total:
            self.progress.max = max(int(event.total), 1)
        self.progress.value = int(event.done)
        self.status.value = f"tile {event.done} of {event.total}"
        if self._all is not None:
            self.status.value = f"image {self._all.done + 1} of {self._all.total}: " + (
                self.status.value
            )

    def _on_image_done(self, event: ImageDone) -> None:
        """An image of an all-images run: its layers now, or its failure noted."""
        run = self._all
        if event.result is None:
            run.failed.append(f"{event.inp.name}: {event.error}")
        else:
            self._input = event.inp
            self._on_returned(event.result)
            run.done += 1

    def _on_file_done(self, event: FileDone) -> None:
        """A file of a folder run: noted, and opened as a layer when asked."""
        run = self._all
        if event.status == "failed":
            run.failed.append(f"{event.image.name}: {event.error}")
            return
        run.done += 1
        if self.open_results.value and event.output.suffix == ".tif":
            labels, _ = read_image(event.output)
            self._viewer.add_labels(labels, name=event.output.stem)

    def _folder_done(self, report: FolderReport) -> None:
        self.status.value = (
            f"done: {len(report.done)} of {self._all.total} files segmented into "
            f"{report.folder} in {report.seconds:.1f} s"
        )
        if report.skipped:
            self.status.value += f"; {len(report.skipped)} already there, skipped"
        if report.failed:
            self.status.value += f"; {len(report.failed)} failed"
            report_error("Segment", TesseraError("; ".join(self._all.failed)))

    @while_open
    def _on_returned(self, result: SegmentResult | FolderReport | None) -> None:
        if isinstance(result, FolderReport):
            self._folder_done(result)
            return
        if result is None:  # the end of an all-images run
            run = self._all
            self.status.value = f"done: {run.done} of {run.total} images segmented"
            if run.failed:
                self.status.value += f"; {len(run.failed)} failed"
                report_error("Segment", TesseraError("; ".join(run.failed)))
            return
        inp = self._input
        self.last_result = result
        if result.foreground is not None:
            self._show_probability(inp, result)
        self.labels_layer = self._show_labels(inp, result)
        self._show_table(inp, result, self.labels_layer)
        lab = result.labels
        if result.path is not None:  # lazy: say where, without reading the labels back
            n = lab.attrs.get("max_id") if self._instances else None
            what = f"{n} objects, " if n is not None else ""
            self.status.value = (
                f"done in {result.seconds:.1f} s: {what}labels in {result.path}{_also(result.halo)}"
            )
            return
        if self._instances:
            what = f"{len(np.unique(lab[lab > 0]))} objects"
        else:
            what = f"{int((lab > 0).sum())} foreground pixels"
        self.status.value = f"done in {result.seconds:.1f} s: {what}{_also(result.halo)}"

    @while_open
    def _on_errored(self, err: Exception) -> None:
        report_error("Segment", err)
        self.status.value = "failed (see the notification)"

    @while_open
    def _on_aborted(self) -> None:
        self.status.value = "cancelled"

    @while_open
    def _on_finished(self) -> None:
        self._worker = self._jobs.worker = None
        self._all = None
        self._set_running(False)

    # -- output layers ------------------------------------------------------------------------
    def _show_table(self, inp: ImageInput, result: SegmentResult, layer: Labels) -> None:
        """The objects table into the labels layer's ``features`` (shown on hover), kept for
        "Save table as CSV". A slice run measures the whole stack of labels here; without
        measuring, the layer's old table is cleared (it no longer fits the labels)."""
        table = None
        if self._measuring is not None:
            table = result.table
            if result.table_error is not None:
                report_error("Measure", TesseraError(result.table_error))
            elif table is None and result.path is None and not inp.lazy:
                try:
                    table = measure_labels(layer.data, inp, self._measuring)
                except TesseraError as err:
                    report_error("Measure", err)
        if table is None:
            if layer.features.shape[1] > 0:
                layer.features = {}
            self.table = None
            self.save_table_button.enabled = False
            return
        features = table.copy()
        features.insert(0, "index", table["label"].to_numpy())  # napari: the row of a label
        layer.features = features
        self.table = table
        self.save_table_button.enabled = True

    def _write(self, existing, inp: ImageInput, result: SegmentResult, values, dtype):
        """The full-size array for a result: whole image, or one slice written into the stack."""
        if result.slice_index is None:
            return values
        full = inp.lay.out_shape
        if existing is not None and tuple(existing.data.shape) == full:
            data = np.asarray(existing.data)
        else:
            data = np.zeros(full, dtype)
        data = data.astype(np.promote_types(data.dtype, values.dtype), copy=False)
        data[inp.lead_tuple(result.slice_index)] = values
        return data

    def _show_labels(self, inp: ImageInput, result: SegmentResult) -> Labels:
        name = f"{inp.name} labels"
        existing = find_layer(self._viewer, name, Labels)
        values = result.labels
        if inp.lazy and result.slice_index is not None:
            return self._show_lazy_slice(inp, result, existing, name)
        if result.path is not None:  # a zarr array: the layer reads it lazily
            return self._put_labels(existing, values, inp, name)
        if result.slice_index is not None and self._instances:
            # ids unique across the stack: continue after the ids of the other slices
            same = existing is not None and tuple(existing.data.shape) == inp.lay.out_shape
            stack = existing.data if same else None
            values = ids_after(values, stack, inp.lead_tuple(result.slice_index))
        data = self._write(existing, inp, result, values, values.dtype)
        return self._put_labels(existing, data, inp, name)

    def _put_labels(self, existing, data, inp: ImageInput, name: str) -> Labels:
        """Show ``data`` in the labels layer ``existing`` (updated in place) or a new one."""
        if existing is not None:
            existing.data = data
            existing.scale = inp.scale
            existing.translate = inp.translate
            existing.refresh()
            return existing
        return self._viewer.add_labels(
            data, name=name, scale=inp.scale, translate=inp.translate, opacity=0.6
        )

    def _show_lazy_slice(self, inp: ImageInput, result: SegmentResult, existing, name: str):
        """One slice of a lazy stack goes into a zarr array in the zarr folder (a full-size
        array in memory might not fit); further slices go into the same array."""
        from ..chunked import put_slice, slice_store

        full = inp.lay.out_shape
        dtype = labels_dtype(self._instances)
        store = self._slice_stores.get(name)
        fresh = (
            store is None
            or existing is None
            or existing.data is not store
            or tuple(store.shape) != full
            or store.dtype != dtype
        )
        if fresh:
            path = lazy_output_path(self.zarr_folder.value, inp.name)
            store = slice_store(path, inp.lay, self._instances)
            self._slice_stores[name] = store
        # instance ids continue after those of the slices done before
        put_slice(store, inp.lead_tuple(result.slice_index), result.labels, self._instances)
        return self._put_labels(existing, store, inp, name)

    def _show_probability(self, inp: ImageInput, result: SegmentResult) -> Image:
        name = f"{inp.name} probability"
        existing = find_layer(self._viewer, name, Image)
        data = self._write(existing, inp, result, result.foreground, np.float32)
        if existing is not None:
            existing.data = data
            existing.scale = inp.scale
            existing.translate = inp.translate
            existing.contrast_limits = (0.0, 1.0)
            return existing
        return self._viewer.add_image(
            data,
            name=name,
            scale=inp.scale,
            translate=inp.translate,
            colormap="magma",
            contrast_limits=(0.0, 1.0),
            blending="additive",
        )
