"""The Train widget: paint a few objects, train a U-Net in a worker thread, watch it learn."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

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
from napari.layers import Image, Labels, Shapes
from napari.utils.colormaps import DirectLabelColormap

from ..device import resolve_device
from ..errors import InputError, TesseraError
from ..images import write_tiff
from ..io import save_model
from ..training.corrections import corrected_labels
from ..training.data import PaintFeed, TrainImage
from ..training.labels import CONVENTION
from ..training.loop import DEFAULT_STEPS, TrainConfig, TrainResult, TrainUpdate, iter_train
from . import _models
from ._common import (
    ImageInput,
    JobHandle,
    available_devices,
    find_layer,
    image_input,
    make_worker,
    notify_info,
    notify_warning,
    report_error,
    text_label,
    while_open,
)
from ._loss_plot import LossCurve
from ._paint_watch import PaintWatch
from ._segment import layer_choices
from ._session import session

if TYPE_CHECKING:
    import napari

PREVIEW_EVERY = 2.0  # seconds between live previews
PREVIEW_COLOR = "yellow"  # unlike the annotation colours (1 = background, 2 = objects)

HELP = {
    "sparse": "Paint a dozen whole objects with 2, edge to edge, and some background with 1; "
    "unpainted (0) pixels are not annotated and ignored.",
    "dense": "Every pixel is annotated: 0 = background, each object its own value.",
}


def train_job(
    inp: ImageInput,
    labels: np.ndarray,
    config: TrainConfig,
    spec,
    stop,
    others=(),
    paint: PaintFeed | None = None,
):
    """Runs in the worker thread: yields TrainUpdate, returns the TrainResult.

    ``others``: more ``(ImageInput, labels)`` pairs to train on with the first. ``paint``:
    where the widget posts painting done while the run trains (image 0 is ``inp``).
    """
    model = spec.load() if spec.load is not None else None
    items = [
        TrainImage(np.asarray(i.load()), lab, i.axes, i.name) for i, lab in [(inp, labels), *others]
    ]
    return (yield from iter_train(items, config=config, model=model, stop=stop, paint=paint))


def _first_slice(inp: ImageInput) -> np.ndarray:
    """The first slice ``(C, Y, X)`` of the image a model was trained on (a package's test
    input: a real image of the kind the model is for)."""
    return np.asarray(inp.lay.slice_view(np.asarray(inp.load()), 0), np.float32)


_warm = threading.Event()
warmed_up = threading.Event()  # set when the warm-up imports are done


def _warm_up() -> None:
    """Import what PyTorch loads lazily on the first optimiser (torch._dynamo: ~800 modules).

    Done once in a background thread when the widget opens, so the first training run does
    not hold the interpreter in imports for a second while the GUI waits.
    """
    if _warm.is_set():
        return
    _warm.set()

    def work():
        import torch

        try:
            torch.optim.AdamW([torch.zeros(1, requires_grad=True)])
        except Exception:  # noqa: BLE001 - only a warm-up
            pass
        finally:
            warmed_up.set()

    threading.Thread(target=work, name="tessera-warm-up", daemon=True).start()


@dataclass(frozen=True)
class _Pair:
    """Another image trained on with the selected one, its annotation layer and a copy of
    the labels at the start."""

    inp: ImageInput
    annotations: Labels
    labels: np.ndarray


@dataclass
class _Run:
    inp: ImageInput
    annotations: Labels
    labels: np.ndarray  # the painted labels the run starts from (a copy)
    preview_index: tuple[int, ...]
    stop: threading.Event
    others: tuple[_Pair, ...] = ()  # more images trained on with this one
    new_paint: str = ""  # when the run last took new painting, for the status line

    def describe(self) -> str:
        """The images trained on, with their painted pixels when there are several."""
        if not self.others:
            return self.inp.name
        pairs = [(self.inp, self.labels), *((p.inp, p.labels) for p in self.others)]
        return (
            f"{len(pairs)} images ("
            + ", ".join(f"{i.name}: {int(np.count_nonzero(lab)):,} px painted" for i, lab in pairs)
            + ")"
        )


class TrainWidget(Container):
    """Train (or fine-tune) a U-Net on painted annotations; the result goes to Segment."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        self._viewer = napari_viewer
        self._worker = None
        self._run: _Run | None = None
        self._jobs = JobHandle()
        self.result: TrainResult | None = None
        self.model = None
        self.preview_layer: Labels | None = None
        self._trained_on: _Run | None = None
        self._paint_watch: PaintWatch | None = None

        self.extend(self._data_rows(napari_viewer) + self._training_rows() + self._run_rows())
        text_label(self.convention)
        text_label(self.status)
        text_label(self.pairs_info)

        self._connect()
        self._update_convention()
        self._update_visibility()
        self._update_pairs_info()
        _warm_up()

    # -- the rows -----------------------------------------------------------------------------
    def _data_rows(self, viewer) -> list:
        """What to train on: the image, its annotations, the label convention."""
        self.image = ComboBox(label="image", choices=layer_choices(viewer, Image))
        self.axes = LineEdit(
            label="axes",
            value="auto",
            tooltip="axes of the image data, e.g. YX, ZYX, CYX; 'auto' guesses",
        )
        self.channels = LineEdit(
            label="channels",
            value="auto",
            tooltip="image channels the network reads, in order, from 0: e.g. 1 (green of an RGB "
            "image) or 1,0 (cytoplasm, then nuclei); 'all'; 'auto': those the starting model "
            "stores, else all (of an RGB image, a 1-channel model reads the one colour with "
            "signal; alpha only when picked)",
        )
        self.annotations = ComboBox(label="annotations", choices=layer_choices(viewer, Labels))
        self.new_annotations = PushButton(text="New annotation layer")
        self.correct = PushButton(
            text="Correct the segmentation",
            tooltip="turn this image's Segment result into a layer to fix, and a layer to "
            "mark what you checked; training then learns from the checked region",
        )
        self.all_images = CheckBox(
            text="also train on every other annotated image",
            value=False,
            tooltip="every annotation layer made with 'New annotation layer' (or named "
            "'<image> annotations') whose image is open trains with the selected pair",
        )
        self.pairs_info = Label(label="")
        self.mode = RadioButtons(
            label="labels",
            choices=[("sparse (painted)", "sparse"), ("dense (complete)", "dense")],
            value="sparse",
            orientation="horizontal",
        )
        self.convention = Label(label="")
        self.whole = CheckBox(
            text="objects are painted whole",
            value=True,
            tooltip="a 2-px band around each painted object then counts as background, which "
            "teaches where objects end; untick it if you painted strokes inside objects",
        )
        return [
            self.image,
            self.axes,
            self.channels,
            self.annotations,
            self.new_annotations,
            self.correct,
            self.all_images,
            self.pairs_info,
            self.mode,
            self.convention,
            self.whole,
        ]

    def _training_rows(self) -> list:
        """How to train: the start, how long, the network and patches, the device."""
        self.start_from = ComboBox(
            label="start from", choices=lambda _w=None: _models.choices(training=True)
        )
        self.start_file = FileEdit(
            label="model file", mode="r", filter="Tessera model (*.safetensors *.zip)"
        )
        self.limit_by = ComboBox(
            label="stop after",
            choices=[("number of steps", "steps"), ("time limit", "time")],
            value="steps",
            tooltip="a number of steps gives the same model on any machine; a time limit "
            "stops wherever the machine has got to",
        )
        self.time_limit = SpinBox(label="time limit (s)", min=1, max=7 * 24 * 3600, value=120)
        self.steps = SpinBox(label="steps", min=1, max=10**7, value=DEFAULT_STEPS)
        self.base_channels = SpinBox(label="base channels", min=1, max=256, value=16)
        self.depth = SpinBox(label="depth", min=1, max=7, value=4)
        self.patch_size = SpinBox(
            label="patch size (0 = auto)",
            min=0,
            max=1024,
            step=16,
            value=0,
            tooltip="side of the training patches (auto: 128 on the CPU, 256 on a GPU, never "
            "larger than the image); use a smaller one for small images",
        )
        self.device = ComboBox(label="device", choices=available_devices(), value="auto")
        self.live_preview = CheckBox(text="live preview of the current slice", value=True)
        return [
            self.start_from,
            self.start_file,
            self.limit_by,
            self.time_limit,
            self.steps,
            self.base_channels,
            self.depth,
            self.patch_size,
            self.device,
            self.live_preview,
        ]

    def _run_rows(self) -> list:
        """Train and Stop, the progress, the loss curve under the status line, and Save."""
        self.train_button = PushButton(text="Train")
        self.stop_button = PushButton(text="Stop", enabled=False)
        self.progress = ProgressBar(label="progress", min=0, max=1000, value=0)
        self.status = Label(label="status", value="ready")
        self.save_path = FileEdit(
            label="save model as",
            mode="w",
            filter="Tessera model (*.safetensors);;bioimage.io package (*.zip)",
            tooltip="a .safetensors model file, or a bioimage.io package (.zip) that Fiji, "
            "ilastik, QuPath and the bioimageio tools run",
        )
        self.save_button = PushButton(text="Save model and annotations", enabled=False)
        buttons = Container(
            widgets=[self.train_button, self.stop_button], layout="horizontal", labels=False
        )
        buttons.margins = (0, 0, 0, 0)
        self.loss_curve = LossCurve()
        plot = Container(labels=False)  # the curve is a row of its own, under the status line
        plot.margins = (0, 0, 0, 0)
        plot.native.layout().addWidget(self.loss_curve)
        return [buttons, self.progress, self.status, plot, self.save_path, self.save_button]

    def _connect(self) -> None:
        self.mode.changed.connect(self._update_convention)
        self.start_from.changed.connect(self._update_visibility)
        self.limit_by.changed.connect(self._update_visibility)
        self.new_annotations.changed.connect(self.create_annotations)
        self.correct.changed.connect(self.correct_result)
        self.all_images.changed.connect(self._update_pairs_info)
        self.annotations.changed.connect(self._update_pairs_info)
        self.train_button.changed.connect(self.train)
        self.stop_button.changed.connect(self.stop)
        self.save_button.changed.connect(self.save)
        self.native.destroyed.connect(self._jobs.abort)  # closing napari ends the run

    # -- state --------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._worker is not None

    def _update_convention(self, *_):
        mode = self.mode.value
        self.convention.value = f"{CONVENTION[mode]}.\n{HELP[mode]}"
        self.whole.visible = mode == "sparse"

    def _update_visibility(self, *_):
        self.start_file.visible = self.start_from.value == _models.FILE
        may_be_new = self.start_from.value in (_models.SCRATCH, _models.AUTO)
        self.base_channels.enabled = may_be_new
        self.depth.enabled = may_be_new
        by_time = self.limit_by.value == "time"
        self.time_limit.visible = by_time
        self.steps.visible = not by_time

    def _set_running(self, running: bool) -> None:
        self.train_button.enabled = not running
        self.stop_button.enabled = running
        self.new_annotations.enabled = not running
        self.correct.enabled = not running
        self.save_button.enabled = not running and self.model is not None

    def _spec(self):
        return _models.resolve(self.start_from.value, self.start_file.value, for_training=True)

    # -- annotations --------------------------------------------------------------------------
    def create_annotations(self, *_) -> Labels | None:
        """Add an empty annotation layer matching the image (no channels; same scale)."""
        try:
            layer = self.image.value
            try:
                spec = self._spec()
                in_channels, stored = spec.in_channels, spec.channels
            except TesseraError:
                in_channels, stored = None, None
            inp = image_input(layer, in_channels, self.axes.value, self.channels.value, stored)
        except TesseraError as err:
            report_error("New annotation layer", err)
            return None
        name = f"{inp.name} annotations"
        existing = find_layer(self._viewer, name, Labels)
        if existing is not None and tuple(existing.data.shape) == inp.lay.out_shape:
            ann = existing  # never throw away painting
        else:
            if existing is not None:
                name = f"{name} {'x'.join(map(str, inp.lay.out_shape))}"
            ann = self._viewer.add_labels(
                np.zeros(inp.lay.out_shape, np.uint8),
                name=name,
                scale=inp.scale,
                translate=inp.translate,
                opacity=0.7,
            )
        self.annotations.reset_choices()
        self.annotations.value = ann
        self._viewer.layers.selection.active = ann
        ann.metadata["tessera_image"] = layer.name  # pairs it with its image for training sets
        ann.selected_label = 2 if self.mode.value == "sparse" else 1
        ann.brush_size = 5
        ann.mode = "paint"
        notify_info(f"Annotations ({self.mode.value}): {CONVENTION[self.mode.value]}")
        return ann

    def correct_result(self, *_) -> Labels | None:
        """Start correcting this image's Segment result: a copy of it to fix ('<image>
        corrections') and an empty Shapes layer ('<image> checked') to mark what was checked.
        Existing ones are reused: corrections are never thrown away."""
        image = self.image.value
        try:
            if image is None:
                raise InputError("no image layer selected")
            result = find_layer(self._viewer, f"{image.name} labels", Labels)
            if result is None:
                raise InputError(
                    f"no result to correct: segment '{image.name}' first (Segment widget, "
                    "output: instances)"
                )
            if self.annotations.value is None:
                self.create_annotations()  # earlier paint (if any) and corrections train together
        except TesseraError as err:
            report_error("Correct", err)
            return None
        layers = self._viewer.layers
        fix = find_layer(self._viewer, f"{image.name} corrections", Labels)
        if fix is None or fix.data.shape != result.data.shape:
            fix = self._viewer.add_labels(
                np.array(result.data, np.int32), name=f"{image.name} corrections",
                scale=result.scale, translate=result.translate, opacity=0.6,
            )  # fmt: skip
        if find_layer(self._viewer, f"{image.name} checked", Shapes) is None:
            checked = self._viewer.add_shapes(
                ndim=result.ndim, name=f"{image.name} checked", scale=result.scale,
                translate=result.translate, face_color="transparent", edge_color="lime",
                edge_width=2,
            )  # fmt: skip
            checked.mode = "add_rectangle"
        layers.selection.active = fix
        fix.selected_label = int(np.max(fix.data)) + 1
        fix.mode = "paint"
        if session.last_trained_model is not None:  # retraining goes on from the current model
            self.start_from.reset_choices()
            self.start_from.value = _models.SESSION
        notify_info(
            f"Fix '{fix.name}': delete wrong objects (paint 0), paint missed ones with a new "
            f"label, give the parts of merged ones different labels. Draw rectangles over what "
            f"you checked in '{image.name} checked'. Training takes the checked region as "
            "complete labels, and keeps your earlier painting elsewhere."
        )
        return fix

    def _with_corrections(self, image: Image, labels: np.ndarray, warn: bool = True) -> np.ndarray:
        """The annotations with the checked corrections of ``image`` merged in (sparse)."""
        fix = find_layer(self._viewer, f"{image.name} corrections", Labels)
        checked = find_layer(self._viewer, f"{image.name} checked", Shapes)
        if fix is None or checked is None:
            return labels
        if len(checked.data) == 0:
            if warn:
                notify_warning(
                    f"nothing is marked as checked in '{checked.name}': draw a rectangle over "
                    f"what you checked, or '{fix.name}' is not used"
                )
            return labels
        if self.mode.value != "sparse":
            raise InputError("corrections train with sparse labels: choose 'sparse (painted)'")
        if tuple(fix.data.shape) != labels.shape:
            raise InputError(
                f"'{fix.name}' has shape {tuple(fix.data.shape)} but the annotations are "
                f"{labels.shape}"
            )
        mask = checked.to_labels(labels_shape=labels.shape) > 0
        return corrected_labels(np.asarray(fix.data), mask, earlier=labels)

    # -- training -----------------------------------------------------------------------------
    def _prepare(self):
        layer = self.image.value
        spec = self._spec()
        inp = image_input(
            layer, spec.in_channels, self.axes.value, self.channels.value, spec.channels
        )
        ann = self.annotations.value
        if ann is None:
            raise InputError(
                "no annotation layer: click 'New annotation layer', then paint objects (2) "
                "and background (1)"
            )
        labels = np.array(ann.data)  # a copy: painting may go on while the model trains
        labels = self._with_corrections(layer, labels)
        if labels.shape != inp.lay.out_shape:
            raise InputError(
                f"the annotations '{ann.name}' have shape {labels.shape} but the image "
                f"'{inp.name}' is {inp.lay.out_shape} (without channels); use 'New annotation "
                "layer' to make a matching one"
            )
        if labels.dtype.kind not in "biu":
            raise InputError(f"annotations must be integer labels, got {labels.dtype}")
        if not labels.any():
            raise InputError(
                "nothing is painted: paint some objects (label 2) and some background (label 1)"
                if self.mode.value == "sparse"
                else "the annotations contain no objects"
            )
        device = self.device.value
        resolve_device(device)
        by_time = self.limit_by.value == "time"
        lead = inp.lead_index(layer, self._viewer.dims.point)
        config = TrainConfig(
            mode=self.mode.value,
            steps=None if by_time else int(self.steps.value),
            time_limit=float(self.time_limit.value) if by_time else None,
            base_channels=int(self.base_channels.value),
            depth=int(self.depth.value),
            patch_size=int(self.patch_size.value) or None,
            device=device,
            preview_every=PREVIEW_EVERY if self.live_preview.value else 0.0,
            preview_slice=lead,
            channels=inp.lay.pick,
            start_if_fits=self.start_from.value == _models.AUTO,
            **({} if self.whole.value else {"surround": 0.0}),
        )
        others = tuple(self._other_pairs(spec)) if self.all_images.value else ()
        run = _Run(inp, ann, labels, inp.lead_tuple(lead), threading.Event(), others)
        return spec, config, run

    def _paired_layers(self) -> list[tuple[Image, Labels]]:
        """(image, annotations) layers other than the selected pair: annotation layers that
        name their image (made by 'New annotation layer', or called '<image> annotations')."""
        layers = self._viewer.layers
        out = []
        for ann in [la for la in layers if isinstance(la, Labels)]:
            if ann is self.annotations.value:
                continue
            name = ann.metadata.get("tessera_image")
            if name is None and ann.name.endswith(" annotations"):
                name = ann.name[: -len(" annotations")]
            image = find_layer(self._viewer, name, Image) if name else None
            if image is not None:
                out.append((image, ann))
        return out

    def _other_pairs(self, spec):
        """The other annotated images as :class:`_Pair`; unpainted ones are left out, a pair
        whose shapes disagree is an error that names it."""
        for image, ann in self._paired_layers():
            labels = np.array(ann.data)
            if not labels.any():
                continue
            inp = image_input(image, spec.in_channels, "auto", self.channels.value, spec.channels)
            if labels.shape != inp.lay.out_shape:
                raise InputError(
                    f"the annotations '{ann.name}' have shape {labels.shape} but their image "
                    f"'{image.name}' is {inp.lay.out_shape} (without channels)"
                )
            yield _Pair(inp, ann, labels)

    def _update_pairs_info(self, *_) -> None:
        """Under the checkbox: the other annotated images and how much of each is painted."""
        if not self.all_images.value:
            self.pairs_info.value = ""
            self.pairs_info.visible = False
            return
        pairs = self._paired_layers()
        painted = [(im.name, int(np.count_nonzero(np.asarray(an.data)))) for im, an in pairs]
        self.pairs_info.value = (
            "also: " + ", ".join(f"{n} ({c:,} px painted)" for n, c in painted)
            if painted
            else "no other annotated image is open"
        )
        self.pairs_info.visible = True

    def train(self, *_) -> None:
        """Start training in a worker thread (returns at once)."""
        if self.running:
            return
        try:
            spec, config, run = self._prepare()
        except TesseraError as err:
            report_error("Train", err)
            return
        for note in [run.inp.note, *(p.inp.note for p in run.others)]:
            if note:
                notify_info(note)
        self._run = run
        self._update_pairs_info()
        feed = PaintFeed()
        others = [(p.inp, p.labels) for p in run.others]
        worker = make_worker(train_job, run.inp, run.labels, config, spec, run.stop, others, feed)
        # connect everything before the worker starts
        worker.yielded.connect(self._on_update)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_errored)
        worker.aborted.connect(self._on_aborted)
        worker.finished.connect(self._on_finished)
        self._worker = self._jobs.worker = worker
        self._jobs.stop = run.stop
        if config.preview_every > 0:
            self._preview_layer(run)  # created now: adding a layer mid-run would stall the GUI
        if self.start_from.value == _models.SESSION and self.loss_curve.train:
            self.loss_curve.go_on(config.steps)  # retraining: the same curve goes on
        else:
            self.loss_curve.clear(config.steps)
        self.progress.value = 0
        self._set_running(True)
        self.status.value = f"training from the {spec.label} on {run.describe()} ..."
        self._paint_watch = self._watch_paint(run, feed)
        worker.start()

    def _watch_paint(self, run: _Run, feed: PaintFeed) -> PaintWatch:
        """Painting on the run's annotation layers (and its corrections) while it trains
        reaches the run at its next sampling round."""
        watch = PaintWatch(feed)
        image = find_layer(self._viewer, run.inp.name, Image)

        def selected() -> np.ndarray | None:
            labels = np.array(run.annotations.data)
            if image is None or self.mode.value != "sparse":
                return labels
            try:
                return self._with_corrections(image, labels, warn=False)
            except InputError:  # reported when training starts again
                return None

        layer = run.annotations
        events = [layer.events.paint, layer.events.data]
        fix = find_layer(self._viewer, f"{run.inp.name} corrections", Labels)
        checked = find_layer(self._viewer, f"{run.inp.name} checked", Shapes)
        if fix is not None and checked is not None:
            events += [fix.events.paint, fix.events.data, checked.events.data]
        watch.watch(0, events, selected)
        for k, pair in enumerate(run.others, 1):
            ann = pair.annotations
            watch.watch(k, [ann.events.paint, ann.events.data], lambda a=ann: np.array(a.data))
        return watch

    def stop(self, *_) -> None:
        """End training after the current step; the best model so far is kept."""
        if self._run is not None and self.running:
            self._run.stop.set()
            self.stop_button.enabled = False
            self.status.value = "stopping after this step ..."

    # -- worker signals (main thread) ---------------------------------------------------------
    @while_open
    def _on_update(self, u: TrainUpdate) -> None:
        if u.info:
            notify_info(u.info)
        if u.notice:
            notify_warning(u.notice)
        self.progress.value = int(round(1000 * u.fraction))
        self.loss_curve.add(self.loss_curve.offset + u.step, u.loss, u.val_loss)
        if self._run is not None and u.new_paint is not None:
            self._run.new_paint = f"new painting from step {u.step} ({u.new_paint:,} px)"
        if self._run is not None and not self._run.stop.is_set():
            total = f"/{u.total_steps}" if u.total_steps else ""
            limit = f"/{u.time_limit:.0f}" if u.time_limit else ""
            text = f"step {u.step}{total}, {u.elapsed:.0f}{limit} s, loss {u.loss:.3f}"
            if self.loss_curve.val:
                text += f", val loss {self.loss_curve.val[-1][1]:.3f}"
            if self._run.new_paint:
                text += f"; {self._run.new_paint}"
            self.status.value = text
        if u.preview is not None and self._run is not None:
            self._show_preview(self._run, u.preview)

    def _preview_layer(self, run: _Run) -> Labels:
        """The live preview layer of a run's image (made or reused, shaped like the labels)."""
        inp = run.inp
        name = f"{inp.name} preview"
        layer = find_layer(self._viewer, name, Labels)
        if layer is not None and tuple(layer.data.shape) != inp.lay.out_shape:
            self._viewer.layers.remove(layer)
            layer = None
        if layer is None:
            layer = self._viewer.add_labels(
                np.zeros(inp.lay.out_shape, np.uint8),
                name=name,
                scale=inp.scale,
                translate=inp.translate,
                opacity=0.5,
                colormap=DirectLabelColormap(color_dict={None: "transparent", 1: PREVIEW_COLOR}),
            )
            # keep the annotations on top and selected for painting
            if run.annotations in self._viewer.layers:
                layers = self._viewer.layers
                layers.move(layers.index(layer), layers.index(run.annotations))
                layers.selection.active = run.annotations
        self.preview_layer = layer
        return layer

    def _show_preview(self, run: _Run, preview: np.ndarray) -> None:
        layer = self._preview_layer(run)
        layer.data[run.preview_index] = (preview > 0.5).astype(np.uint8)
        layer.refresh()

    @while_open
    def _on_returned(self, result: TrainResult) -> None:
        self.result = result
        self.model = result.model
        self._trained_on = self._run
        told = result.best_val_iou is not None or result.averaged is not None
        iou = result.describe_kept() if told else ""
        edges = f"; {result.edges.describe()}" if result.edges is not None else ""
        agreement = result.agreement
        judged = f"; {agreement.describe()}" if agreement is not None else ""
        self.status.value = (
            f"done: {result.steps} steps in {result.elapsed:.0f} s "
            f"(stopped: {result.stopped}){iou}{edges}{judged}. The model is selected in Segment."
        )
        self.progress.value = 1000
        session.set_trained_model(result.model)
        if agreement is not None and not agreement.learnt:
            notify_warning(f"Training finished, but {agreement.describe()}.")
            return
        notify_info(
            f"Training finished after {result.steps} steps{iou}; the model is ready in the "
            "Segment widget (Save keeps it)."
        )

    @while_open
    def _on_errored(self, err: Exception) -> None:
        report_error("Train", err)
        self.status.value = "failed (see the notification)"

    @while_open
    def _on_aborted(self) -> None:
        self.status.value = "aborted"

    @while_open
    def _on_finished(self) -> None:
        if self._paint_watch is not None:
            self._paint_watch.close()
            self._paint_watch = None
        self._worker = self._jobs.worker = None
        self._jobs.stop = None
        self._set_running(False)

    # -- saving -------------------------------------------------------------------------------
    def save(self, *_, path: str | Path | None = None) -> Path | None:
        """Write the trained model (a ``.safetensors`` file, or a bioimage.io package for a
        ``.zip`` path) and, beside it, the painted annotations (TIFF): those of the selected
        image as ``<model>.annotations.tif``, those of each other image trained on as
        ``<model>.<image>.annotations.tif``."""
        if self.model is None:
            report_error("Save", InputError("no trained model yet: train first"))
            return None
        if path is None:
            path = self.save_path.value if _models.path_is_set(self.save_path.value) else None
        if path is None:
            path = self._ask_path()
            if path is None:
                return None
        path = Path(path)
        if path.suffix.lower() not in (".safetensors", ".zip"):
            path = path.with_name(path.name + ".safetensors")
        ann_path = path.with_name(path.stem + ".annotations.tif")
        run = self._trained_on
        written = [path]
        try:
            if path.suffix.lower() == ".zip":
                from ..bioimageio import export_bioimageio

                export_bioimageio(self.model, path, test_image=self._test_slice(run))
            else:
                save_model(self.model, path)
            if run is not None:
                image = find_layer(self._viewer, run.inp.name, Image)
                data = self._current(run.annotations, run.labels)
                if data is not run.labels and image is not None:
                    data = self._with_corrections(image, data)
                write_tiff(ann_path, data, axes=run.inp.lay.out_axes)
                written.append(ann_path)
                for pair in run.others:
                    name = re.sub(r"[^\w.-]+", "_", pair.inp.name)
                    other = path.with_name(f"{path.stem}.{name}.annotations.tif")
                    data = self._current(pair.annotations, pair.labels)
                    write_tiff(other, data, axes=pair.inp.lay.out_axes)
                    written.append(other)
        except (TesseraError, OSError, ImportError) as err:
            report_error("Save", err)
            return None
        self.save_path.value = path
        what = ", ".join(p.name for p in written[:-1]) + " and " + written[-1].name
        what = what if len(written) > 1 else path.name
        self.status.value = f"saved {what} in {path.parent}"
        notify_info(f"Saved {what} in {path.parent}")
        return path

    def _test_slice(self, run: _Run | None) -> np.ndarray | None:
        """The first slice of the image trained on, as a package's test input, when the
        network takes it whole (else None: the built-in sample)."""
        from ..bioimageio import min_size

        if run is None:
            return None
        image = _first_slice(run.inp)
        return image if min(image.shape[-2:]) >= min_size(self.model) else None

    def _current(self, layer: Labels, start: np.ndarray) -> np.ndarray:
        """A run's annotations with the painting done since (``start`` if the layer is gone
        or no longer fits)."""
        if layer not in self._viewer.layers:
            return start
        current = np.asarray(layer.data)
        return current if current.shape == start.shape else start

    def _ask_path(self) -> str | None:
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getSaveFileName(
            self.native,
            "Save model",
            "model.safetensors",
            "Tessera model (*.safetensors);;bioimage.io package (*.zip)",
        )
        return path or None
