"""Segmenting image files: one file, or a set of them into a folder (CLI and Segment widget).

A folder run writes one labels file per input (``{stem}_labels.tif``, ``.zarr`` for zarr
inputs), skips the inputs whose output is already there (a re-run resumes), and reports a
file that fails without stopping the others. Every output is written to a temporary name and
renamed, so an interrupted run never leaves a half-written labels file behind. Asked, the
objects of each labels file are measured into a CSV table (:mod:`napari_tessera.measure`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .axes import guess_axes, layout
from .errors import InputError, TesseraError
from .images import check_output_folder
from .inference import Notice, Progress, image_layout, iter_segment, links_through_z
from .options import SegmentOptions
from .sets import output_for, table_for


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


def _zyx(size) -> tuple[float, float, float] | None:
    """A (Z, Y, X) voxel size, or None (unknown, or Y, X only)."""
    return tuple(size) if size is not None and len(size) == 3 else None


def iter_segment_file(
    model,
    image: Path,
    out: Path,
    options: SegmentOptions,
    axes: str | None = None,
    probabilities: Path | None = None,
    table: Path | None = None,
    voxel_size=None,
):
    """Segment one image file in memory and write its labels as TIFF (through a temporary
    file), and its class probabilities to ``probabilities`` if given. With ``table``, the
    objects of the (instance) labels are measured in the whole image (every channel) and
    written there as CSV (:func:`measure_objects`). Yields :class:`Progress` and
    :class:`Notice`; returns ``(labels, their axes)``."""
    from .images import read_image, read_voxel_size, write_tiff
    from .measure import check_voxel_size
    from .normalize import check_dtype, check_finite

    arr, file_axes = read_image(image)
    chosen = choose_axes(arr.shape, axes, file_axes, model.config.in_channels)
    check_finite(arr, image.name)
    lay = image_layout(model, arr, chosen.axes, options.channels)
    check_dtype(arr.dtype)
    if table is not None:  # before the run: a table that cannot be made is said at once
        check_measurable(options)
        check_voxel_size(voxel_size, lay.out_axes)
    note = _axes_notice(chosen, arr.shape, image.name)
    if note is not None:
        yield note
    if arr.min() == arr.max():
        yield Notice(
            f"{image.name} is constant (every pixel is {arr.flat[0]}): with no contrast, every "
            "pixel gets the same label"
        )
    if options.voxel_size is None and links_through_z(options, lay):
        options = replace(options, voxel_size=_zyx(read_voxel_size(image)))  # the file's own
    probs = None
    if probabilities is not None:
        probs = np.zeros((model.config.n_classes, *lay.out_shape), np.float32)
    labels = yield from iter_segment(
        model, arr, axes=chosen.axes, probabilities_out=probs, options=options
    )
    write_tiff(out, labels, axes=lay.out_axes)
    if probabilities is not None:
        write_tiff(probabilities, probs, axes="C" + lay.out_axes)
    if table is not None:
        note = measure_objects(table, labels, lay.out_axes, arr, chosen.axes, image, voxel_size)
        if note is not None:
            yield Notice(note)
    return labels, lay.out_axes


def check_measurable(options: SegmentOptions) -> None:
    """Objects are measured in instance labels only (classes are not objects)."""
    if not options.instances:
        raise InputError(
            "objects are measured in instance labels: segment with instances (--instances) "
            "to measure them"
        )


def measure_objects(
    table: Path, labels, labels_axes: str, image, image_axes: str, image_path: Path, voxel_size
) -> str | None:
    """Measure the objects of ``labels`` in ``image`` (all its channels) and write the table
    as CSV to ``table`` (atomically). The voxel size (micrometres) is ``voxel_size`` when
    given, else the one ``image_path`` states (:func:`~napari_tessera.images.read_voxel_size`),
    else none (pixels only). Returns a note for the user, or None."""
    from .images import read_voxel_size
    from .measure import check_voxel_size, fit_voxel_size, measure, write_table_csv

    note = None
    if voxel_size is not None:
        sizes = check_voxel_size(voxel_size, labels_axes)
    else:
        sizes, note = fit_voxel_size(read_voxel_size(image_path), labels_axes)
    data = measure(labels, image, axes=labels_axes, image_axes=image_axes, voxel_size=sizes)
    write_table_csv(data, table)
    return f"{Path(image_path).name}: {note}" if note else None


def measure_output(
    image: Path, labels_path: Path, table: Path, axes: str | None, in_channels: int, voxel_size
) -> str | None:
    """:func:`measure_objects` for labels already written to ``labels_path`` (a TIFF or a
    zarr array, read whole) from the image file ``image`` (axes as the run chose them)."""
    from .images import read_image

    arr, file_axes = read_image(image)
    chosen = choose_axes(arr.shape, axes, file_axes, in_channels)
    lay = layout(arr.shape, chosen.axes)
    labels, _ = read_image(labels_path)
    if tuple(labels.shape) != lay.out_shape:
        raise InputError(
            f"{labels_path.name} (shape {tuple(labels.shape)}) are not the labels of "
            f"{image.name} ({lay.out_axes} {lay.out_shape})"
        )
    return measure_objects(table, labels, lay.out_axes, arr, chosen.axes, image, voxel_size)


def plan_tables(images: Sequence[Path], spec: str | Path) -> list[Path]:
    """The objects table of each input for ``spec`` (:func:`~napari_tessera.sets.table_for`
    with several inputs): a folder is made if its parent exists; two inputs that would write
    one table are an error."""
    tables = [table_for(img, spec, several=True) for img in images]
    seen: dict[Path, Path] = {}
    for img, tab in zip(images, tables, strict=True):
        if tab in seen:
            raise InputError(f"{seen[tab]} and {img} would both write {tab}: rename one")
        seen[tab] = img
    for folder in {t.parent for t in tables}:
        if not folder.exists():
            check_output_folder(folder)
            folder.mkdir()
        elif not folder.is_dir():
            raise InputError(f"the tables' folder {folder} is a file")
    return tables


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
    tables: str | Path | None = None,
    voxel_size=None,
):
    """Segment every image into ``folder`` with one loaded model, one after the other
    (``run_files``: another way to run the files still to do, such as
    :func:`napari_tessera.cluster.iter_segment_files_on_cluster`'s).

    Yields :class:`FileProgress`, :class:`Notice` and a :class:`FileDone` per input; returns
    a :class:`FolderReport`. An input whose output exists is skipped unless ``restart``; one
    that fails (unreadable, wrong shape, out of memory) is reported and the others go on.

    ``tables``: a folder (or a pattern with ``{stem}``) that gets the objects table of each
    input as CSV (:func:`~napari_tessera.sets.table_for`), measured from the labels written
    (:func:`measure_output`; ``voxel_size``: given, else each file's own). A skipped input
    whose table is missing is measured; one whose measuring fails is reported as failed.
    """
    t0 = time.perf_counter()
    images = [Path(p) for p in images]
    folder = output_folder(folder)
    outs = plan_outputs(images, folder)
    table_of: dict[Path, Path] = {}
    if tables is not None:
        check_measurable(options)
        table_of = dict(zip(images, plan_tables(images, tables), strict=True))
    in_channels = model.config.in_channels

    def measured(event: FileDone):
        """Write the input's table: yields a note if there is one; returns the event (a
        failed one when measuring failed)."""
        table = table_of.get(event.image)
        if table is None or (event.status == "skipped" and table.exists()):
            return event
        try:
            note = measure_output(event.image, event.output, table, axes, in_channels, voxel_size)
        except (TesseraError, OSError, MemoryError) as err:
            why = f"measuring its objects failed: {str(err) or type(err).__name__}"
            return FileDone(event.image, event.output, "failed", why)
        if note is not None:
            yield Notice(note)
        return event

    report = FolderReport(folder)
    n = len(images)
    todo = []
    for image, out in zip(images, outs, strict=True):
        if out.exists() and not restart:
            event = yield from measured(FileDone(image, out, "skipped"))
            if event.status == "failed":
                report.failed.append((image, event.error or "failed"))
            else:
                report.skipped.append(image)
            yield event
        else:
            todo.append((image, out))
    run = (run_files or files_here)(model, todo, options, axes)
    for event in run:
        through = len(report.done) + len(report.failed) + len(report.skipped)
        if isinstance(event, FileDone) and event.status == "done":
            event = yield from measured(event)
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
