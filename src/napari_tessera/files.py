"""Segmenting image files: one file, or a set of them into a folder (CLI and Segment widget).

A folder run writes one labels file per input (``{stem}_labels.tif``, ``.zarr`` for zarr
inputs), skips the inputs whose output is already there (a re-run resumes), and reports a
file that fails without stopping the others. Every output is written to a temporary name and
renamed, so an interrupted run never leaves a half-written labels file behind.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .axes import guess_axes, layout
from .errors import InputError, TesseraError
from .images import check_output_folder
from .inference import Notice, Progress, image_layout, iter_segment
from .options import SegmentOptions
from .sets import output_for


@dataclass(frozen=True)
class ChosenAxes:
    """The axes an image is read with, and where they came from."""

    axes: str
    source: str  # "given", "file" (its metadata) or "guessed" (from the shape alone)


def choose_axes(shape, axes: str | None, from_file: str | None, in_channels: int) -> ChosenAxes:
    """Given axes (checked), else the file's, else a guess from the shape (state it)."""
    if axes:
        layout(shape, axes)  # validates
        return ChosenAxes(axes.upper(), "given")
    if from_file:
        return ChosenAxes(from_file, "file")
    return ChosenAxes(guess_axes(shape, in_channels), "guessed")


@dataclass(frozen=True)
class FileProgress:
    """File ``index`` of ``n_files`` (``name``) has ``done`` of ``total`` tiles through."""

    index: int
    n_files: int
    name: str
    done: int
    total: int

    @property
    def fraction(self) -> float:
        return (self.index + self.done / max(self.total, 1)) / max(self.n_files, 1)


@dataclass(frozen=True)
class FileDone:
    """One input of a folder run is through: ``status`` is "done", "skipped" (its output
    was there already) or "failed" (``error`` says why)."""

    image: Path
    output: Path
    status: str
    error: str | None = None


@dataclass
class FolderReport:
    """What a folder run did (the generator's return value)."""

    folder: Path
    done: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    seconds: float = 0.0


def output_folder(folder: str | Path) -> Path:
    """The output folder of a folder run, made if its parent exists."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"the output of several images is a folder; {folder} is a file")
    if not folder.exists():
        check_output_folder(folder)
        folder.mkdir()
    return folder


def plan_outputs(images: Sequence[Path], folder: Path, zarr: bool = False) -> list[Path]:
    """The labels file of each input in ``folder`` (``.zarr`` for zarr inputs, or all with
    ``zarr``); two inputs that would write one output are an error."""
    outs: list[Path] = []
    seen: dict[Path, Path] = {}
    for img in images:
        suffix = ".zarr" if zarr or img.name.lower().endswith(".zarr") else ".tif"
        out = output_for(img, folder, suffix)
        if out.with_suffix("") in seen:  # a.tif and a.zarr are one stem's labels too
            raise InputError(
                f"{seen[out.with_suffix('')]} and {img} would both write {out}: rename one"
            )
        seen[out.with_suffix("")] = img
        outs.append(out)
    return outs


def _axes_notice(chosen: ChosenAxes, shape, name: str) -> Notice | None:
    if chosen.source == "guessed":
        return Notice(f"{name}: axes guessed as {chosen.axes} from shape {tuple(shape)}")
    return None


def iter_segment_file(
    model,
    image: Path,
    out: Path,
    options: SegmentOptions,
    axes: str | None = None,
    probabilities: Path | None = None,
):
    """Segment one image file in memory and write its labels as TIFF (through a temporary
    file), and its class probabilities to ``probabilities`` if given. Yields
    :class:`Progress` and :class:`Notice`; returns ``(labels, their axes)``."""
    from .images import read_image, write_tiff
    from .normalize import check_dtype, check_finite

    arr, file_axes = read_image(image)
    chosen = choose_axes(arr.shape, axes, file_axes, model.config.in_channels)
    check_finite(arr, image.name)
    lay = image_layout(model, arr, chosen.axes, options.channels)
    check_dtype(arr.dtype)
    note = _axes_notice(chosen, arr.shape, image.name)
    if note is not None:
        yield note
    if arr.min() == arr.max():
        yield Notice(
            f"{image.name} is constant (every pixel is {arr.flat[0]}): with no contrast, every "
            "pixel gets the same label"
        )
    probs = None
    if probabilities is not None:
        probs = np.zeros((model.config.n_classes, *lay.out_shape), np.float32)
    labels = yield from iter_segment(
        model, arr, axes=chosen.axes, probabilities_out=probs, options=options
    )
    write_tiff(out, labels, axes=lay.out_axes)
    if probabilities is not None:
        write_tiff(probabilities, probs, axes="C" + lay.out_axes)
    return labels, lay.out_axes


def iter_segment_zarr_file(model, image: Path, out: Path, options: SegmentOptions, axes=None):
    """Segment one zarr (or TIFF) image into a zarr array slice by slice; an interrupted
    run resumes. Yields :class:`Progress` and :class:`Notice`; returns the output path."""
    from .chunked import iter_segment_to_zarr
    from .images import open_image

    arr, file_axes = open_image(image)
    chosen = choose_axes(arr.shape, axes, file_axes, model.config.in_channels)
    note = _axes_notice(chosen, arr.shape, image.name)
    if note is not None:
        yield note
    return (yield from iter_segment_to_zarr(model, arr, out, axes=chosen.axes, options=options))


def iter_segment_files(
    model,
    images: Sequence[Path],
    folder: str | Path,
    options: SegmentOptions,
    *,
    axes: str | None = None,
    restart: bool = False,
    run_files: Callable | None = None,
):
    """Segment every image into ``folder`` with one loaded model, one after the other
    (``run_files``: another way to run the files still to do, such as
    :func:`napari_tessera.cluster.iter_segment_files_on_cluster`'s).

    Yields :class:`FileProgress`, :class:`Notice` and a :class:`FileDone` per input; returns
    a :class:`FolderReport`. An input whose output exists is skipped unless ``restart``; one
    that fails (unreadable, wrong shape, out of memory) is reported and the others go on.
    """
    t0 = time.perf_counter()
    images = [Path(p) for p in images]
    folder = output_folder(folder)
    outs = plan_outputs(images, folder)
    report = FolderReport(folder)
    n = len(images)
    todo = []
    for image, out in zip(images, outs, strict=True):
        if out.exists() and not restart:
            report.skipped.append(image)
            yield FileDone(image, out, "skipped")
        else:
            todo.append((image, out))
    run = (run_files or files_here)(model, todo, options, axes)
    for event in run:
        through = len(report.done) + len(report.failed) + len(report.skipped)
        if isinstance(event, FileDone):
            if event.status == "done":
                report.done.append(event.image)
            else:
                report.failed.append((event.image, event.error or "failed"))
            yield event
            yield FileProgress(through, n, event.image.name, 1, 1)
        elif isinstance(event, _TileProgress):  # of the file in hand
            yield FileProgress(through, n, event.name, event.done, event.total)
        else:
            yield event
    report.seconds = time.perf_counter() - t0
    return report


@dataclass(frozen=True)
class _TileProgress(Progress):
    name: str = ""


def files_here(model, todo, options: SegmentOptions, axes):
    """The files of a folder run one after the other in this process."""
    for image, out in todo:
        yield from segment_one_file(model, image, out, options, axes)


def segment_one_file(model, image: Path, out: Path, options, axes):
    """One file of a folder run: yields its events, then a :class:`FileDone`."""
    run = iter_segment_zarr_file if out.suffix == ".zarr" else iter_segment_file
    try:
        for event in run(model, image, out, options, axes):
            if isinstance(event, Progress):
                yield _TileProgress(event.done, event.total, image.name)
            else:
                yield event
    except (TesseraError, OSError, MemoryError) as err:
        yield FileDone(image, out, "failed", str(err) or type(err).__name__)
        return
    yield FileDone(image, out, "done")
