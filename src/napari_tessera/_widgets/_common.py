"""Shared helpers of the Tessera widgets: image layers -> core arrays, workers, notifications.

Nothing here computes anything heavy in the main thread: reading the image (the channels an
RGB layer gives the model, dask to numpy) is left to :meth:`ImageInput.load`, which the worker
thread runs. Finding which channel of an RGB layer carries signal reads its pixels once
(:func:`napari_tessera.rgb.rgb_channels`, a block at a time).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QEvent, QObject
from superqt.utils import GeneratorWorker

from ..axes import SliceLayout, check_channel_count, guess_axes, layout, parse_channels
from ..errors import InputError, TesseraError
from ..rgb import names, rgb_channels, take_index

log = logging.getLogger("napari_tessera")


# -- notifications ------------------------------------------------------------------------------
def notify_error(message: str) -> None:
    show_error(message)


def notify_warning(message: str) -> None:
    show_warning(message)


def notify_info(message: str) -> None:
    show_info(message)


class WorkerFailure(Exception):
    """Carries an exception out of a worker thread.

    superqt's GeneratorWorker treats a ``RuntimeError`` raised by the generator as "the worker
    was deleted" and swallows it (no ``errored`` signal). PyTorch raises RuntimeErrors (and
    ``torch.cuda.OutOfMemoryError`` is one), so the jobs wrap every error in this class.
    """

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


def plain_message(err: BaseException) -> str | None:
    """A plain-words message for an expected error, or None for a bug."""
    if isinstance(err, WorkerFailure):
        err = err.error
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return (
            "the GPU ran out of memory: use a smaller tile size or batch size "
            "(or a smaller model), or run on the CPU"
        )
    if isinstance(err, TesseraError):
        return str(err)
    if isinstance(err, MemoryError):
        return "out of memory: try a smaller image, tile size or batch size"
    if isinstance(err, OSError) and getattr(err, "strerror", None):
        name = getattr(err, "filename", None)
        return f"{err.strerror}: {name}" if name else str(err.strerror)
    return None


def report_error(what: str, err: BaseException) -> None:
    """Expected errors: one notification in plain words. Bugs: napari's error notification
    (with the traceback behind its button) and the log."""
    msg = plain_message(err)
    if msg is not None:
        notify_error(f"{what}: {msg}")
        return
    inner = err.error if isinstance(err, WorkerFailure) else err
    log.error("%s failed", what, exc_info=(type(inner), inner, inner.__traceback__))
    from napari.utils.notifications import notification_manager

    notification_manager.receive_error(type(inner), inner, inner.__traceback__)


def guarded(gen_func: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a generator function so every error leaves it as a :class:`WorkerFailure`."""

    def job(*args, **kwargs):
        try:
            return (yield from gen_func(*args, **kwargs))
        except GeneratorExit:
            raise
        except Exception as err:  # noqa: BLE001 - relayed to the main thread, see WorkerFailure
            raise WorkerFailure(err) from err

    job.__name__ = getattr(gen_func, "__name__", "job")
    job.__qualname__ = getattr(gen_func, "__qualname__", "job")
    return job


def make_worker(gen_func: Callable[..., Any], *args, **kwargs) -> GeneratorWorker:
    """A napari worker (not yet started) around a generator function.

    superqt's plain GeneratorWorker class is used so napari does not turn expected errors into
    traceback notifications; the widgets report errors themselves (:func:`report_error`).
    Connect the signals, then call ``worker.start()``.
    """
    return create_worker(
        guarded(gen_func),
        *args,
        _start_thread=False,
        _ignore_errors=True,
        _worker_class=GeneratorWorker,
        **kwargs,
    )


class JobHandle:
    """The running worker of a widget (no reference to the widget or the viewer), so the
    widget's ``destroyed`` signal can end the run when napari closes."""

    def __init__(self) -> None:
        self.worker = None
        self.stop = None  # threading.Event of a training run
        self.closed = False  # the widget is gone: worker signals must not touch it

    def abort(self, *_) -> None:
        self.closed = True
        if self.stop is not None:
            self.stop.set()
        worker = self.worker
        if worker is not None:
            try:
                worker.quit()
            except RuntimeError:  # the Qt object is already gone
                pass


def text_label(label) -> None:
    """Make a magicgui Label wrap its text, left-aligned, over the row's whole width."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QSizePolicy

    q = label.native
    q.setWordWrap(True)
    q.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
    q.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
    _FitHeight(q)


class _FitHeight(QObject):
    """Keeps a word-wrapped QLabel's minimum height at what its text needs at its width.

    A dock widget sizes its content by minimum sizes, which leave out height-for-width: a
    status of three lines then gets one line's minimum, and the box layout squeezes the
    other rows to make room (radio-button rows drawn as empty boxes, the loss curve, which
    keeps its own minimum height, drawn over the rows below it).
    """

    def __init__(self, label) -> None:
        super().__init__(label)
        self._label = label
        label.installEventFilter(self)
        if label.parentWidget() is not None:  # a new text: a layout request to the row
            label.parentWidget().installEventFilter(self)

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt API
        kind = event.type()
        if kind == QEvent.Type.ParentChange and obj is self._label:
            if obj.parentWidget() is not None:
                obj.parentWidget().installEventFilter(self)
        elif kind in (QEvent.Type.Resize, QEvent.Type.Show, QEvent.Type.LayoutRequest):
            self.fit()
        return False

    def fit(self) -> None:
        q = self._label
        if not q.isVisible() or q.width() <= 0:
            return  # not laid out yet: its width means nothing
        height = q.heightForWidth(q.width())
        if height > 0 and height != q.minimumHeight():
            q.setMinimumHeight(height)


def while_open(method):
    """Skip a worker-signal handler once the widget's Qt side is gone (napari closed)."""

    @functools.wraps(method)
    def handler(self, *args):
        if self._jobs.closed:
            return None
        return method(self, *args)

    return handler


# -- devices ------------------------------------------------------------------------------------
def available_devices() -> list[str]:
    """ "auto" plus the devices actually present."""
    devices = ["auto", "cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices


# -- image layers -------------------------------------------------------------------------------
@dataclass
class ImageInput:
    """An image layer read for the core: what to run and how the result maps back.

    axes: axes of the array :meth:`load` returns.
    dims: axes of the layer's napari dimensions (RGB layers have no channel dimension).
    lay: the core's slice layout of the loaded array.
    scale, translate: for the non-channel axes (``lay.out_axes``): what output layers get.
    take: the channels of the layer's last axis that :meth:`load` reads (the RGB rule of
    :func:`napari_tessera.rgb.rgb_channels`; not stored with a trained model), or None.
    note: what the user is told about it (e.g. which channel of an RGB image is read), or None.
    """

    name: str
    raw: Any
    axes: str
    dims: str
    lay: SliceLayout
    scale: tuple[float, ...]
    translate: tuple[float, ...]
    take: tuple[int, ...] | None = None
    note: str | None = None

    @property
    def lazy(self) -> bool:
        """The layer holds a lazy array (dask, zarr, ...): read it a slice at a time."""
        return not isinstance(self.raw, np.ndarray)

    def load(self) -> Any:
        """The array to run on (call it in the worker thread: it may read or convert a lot).

        Lazy data stays lazy: the channels taken become a dask operation, read a slice at a
        time.
        """
        data = self.raw
        if self.take is None:
            return data
        index = (Ellipsis, take_index(self.take))
        if self.lazy:
            import dask.array as da

            return da.asarray(data)[index]
        return np.asarray(data)[index]

    def lead_index(self, layer, world_point) -> int:
        """Flat slice number (over the lead axes) shown at ``world_point`` in the viewer."""
        if not self.lay.lead_shape:
            return 0
        try:
            pos = np.asarray(layer.world_to_data(world_point), dtype=float)
        except Exception:  # noqa: BLE001 - fall back to the first slice
            return 0
        idx = []
        for axis, size in zip(self.lay.lead_axes, self.lay.lead_shape):
            d = self.dims.index(axis)
            i = int(np.round(pos[d])) if d < len(pos) and np.isfinite(pos[d]) else 0
            idx.append(min(max(i, 0), size - 1))
        return int(np.ravel_multi_index(idx, self.lay.lead_shape))

    def lead_tuple(self, s: int) -> tuple[int, ...]:
        """Index into an output (``lay.out_shape``) array for flat slice ``s``."""
        if not self.lay.lead_shape:
            return ()
        return tuple(int(i) for i in np.unravel_index(s, self.lay.lead_shape))


def image_input(
    layer,
    in_channels: int | None,
    axes_text: str = "auto",
    channels_text: str = "auto",
    stored: tuple[int, ...] | None = None,
) -> ImageInput:
    """Read an Image layer for a model with ``in_channels`` (None: a new model from scratch).

    ``channels_text`` picks the channels read, in order ("1", "1,0"; "all": every channel;
    "auto": the model's ``stored`` channels when the layer has another number than it reads,
    else all).
    RGB(A) images (an RGB layer, or axes ending in 3 or 4 channels) without a pick follow the
    rule the command line follows (:func:`napari_tessera.rgb.rgb_channels`): a 1-channel model
    reads the one colour with signal (with a note) or asks for a choice, alpha is read only
    when picked.
    """
    if layer is None:
        raise InputError("no image layer selected: open an image and pick it in the widget")
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    shape = tuple(int(s) for s in data.shape)
    axes_text = (axes_text or "auto").strip().upper()
    auto = (channels_text or "auto").strip().lower() == "auto"
    pick = None if auto else parse_channels(channels_text)
    if auto and stored is not None:
        n = shape[-1] if getattr(layer, "rgb", False) else None
        if n is None:
            axes = guess_axes(shape, in_channels or 1) if axes_text in ("", "AUTO") else axes_text
            n = layout(shape, axes).image_channels
        if n != in_channels:
            pick, channels_text = tuple(stored), ",".join(map(str, stored))
    if getattr(layer, "rgb", False):
        lead = {2: "", 3: "Z", 4: "TZ"}.get(len(shape) - 1)
        if lead is None:
            raise InputError(
                f"{layer.name}: RGB images with {len(shape)} dimensions are not handled"
            )
        dims = lead + "YX"
        lay = layout(shape, dims + "C", pick)
    else:
        axes = guess_axes(shape, in_channels or 1) if axes_text in ("", "AUTO") else axes_text
        lay = layout(shape, axes, pick)
        dims = lay.axes
    take = note = None
    if pick is None:  # an RGB(A) image: the one rule of the CLI and the widgets
        read = rgb_channels(data, lay.axes, in_channels, layer.name)
        take, note = read.take, read.note
        if take is not None:
            lay = layout((*shape[:-1], len(take)), lay.axes)
    if in_channels is not None:
        check_channel_count(in_channels, lay, layer.name)
    keep = [i for i, a in enumerate(dims) if a != "C"]
    scale = tuple(float(layer.scale[i]) for i in keep)
    translate = tuple(float(layer.translate[i]) for i in keep)
    return ImageInput(
        name=layer.name,
        raw=data,
        axes=lay.axes,
        dims=dims,
        lay=lay,
        scale=scale,
        translate=translate,
        take=take,
        note=note,
    )


def describe(inp: ImageInput) -> str:
    """One line about how an image will be read, e.g. "512 x 512, axes YX, 1 channel"."""
    lay = inp.lay
    size = " x ".join(str(s) for s in lay.out_shape)
    ch = f"{lay.channels} channel{'s' if lay.channels != 1 else ''}"
    extra = f" ({names(inp.take)})" if inp.take is not None else ""
    lazy = ", lazy: read slice by slice, labels written to zarr" if inp.lazy else ""
    return f"{size} ({lay.out_axes}), {ch}{extra}{lazy}"


def find_layer(viewer, name: str, kind: type):
    """The layer called ``name`` if it is of type ``kind``, else None."""
    if name in viewer.layers:
        layer = viewer.layers[name]
        if isinstance(layer, kind):
            return layer
    return None
