"""Images larger than memory: lazy inputs, zarr labels written slice by slice, resumable runs,
and the same work spread over a dask.distributed cluster.

The unit of work is one 2D slice (``(C, Y, X)`` of a stack or time series): a slice is read,
predicted with the overlap-tile engine of :mod:`napari_tessera.inference` and written as one
chunk-aligned region of the output, so memory is bounded by one slice, whatever the depth of
the stack. Class labels of planes too large for that are made in blocks (whole chunks each),
each read with a mirrored margin of the receptive field and normalised with the whole plane's
levels, so they equal the labels of the whole plane. The output is built under ``OUT.partial``
and renamed to ``OUT`` only when every slice is done; a run that is interrupted leaves
``OUT.partial`` with a record of the finished slices, and the next run with the same settings
skips them.

With instances, ids must be unique across the stack. Each slice is labelled on its own (ids from
1) and its object count recorded; when all slices are done a last pass adds to each slice the
count of the slices before it, which gives exactly the ids of the in-memory
:func:`napari_tessera.segment` (and the same ids whatever order the slices finished in).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Generator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .axes import SliceLayout, normalize_axes
from .errors import InputError
from .inference import (
    Notice,
    Progress,
    SliceResult,
    check_channels,
    image_layout,
    iter_slice_predictions,
    prepare,
    resolve_halo,
    run_halo,
    split_rule,
)
from .io import check_output_folder
from .normalize import check_dtype, slice_levels
from .options import SegmentOptions
from .postprocess import (
    SplitRule,
    classes_from_probabilities,
    labels_dtype,
    offset_ids,
    shift_edges,
)
from .tiling import mirror_indices, round_up

PARTIAL = ".partial"
_STATE = ".tessera-run.json"  # settings of the run that made a partial output
_DONE = ".tessera-done"  # one small file per finished slice: its object count


# -- lazy inputs --------------------------------------------------------------------------------
def is_zarr(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() == ".zarr"


def open_image(path: str | os.PathLike) -> tuple[Any, str | None]:
    """Open an image without reading its pixels: ``(array-like, axes or None)``.

    zarr arrays and OME-Zarr images (their full-resolution level) are opened as zarr arrays,
    TIFFs through tifffile's zarr interface (pages, strips or tiles read on demand), ``.npy``
    memory-mapped. Slicing the result reads only what the slice needs.

    A .npy or TIFF whose header declares data the file does not hold (truncated or hostile), and
    an array whose every chunk is larger than this machine's memory, are refused here with an
    :class:`InputError`, before any pixel is read.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"input file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".zarr":
        return _open_zarr(path)
    if path.is_dir():
        raise InputError(f"input is a folder, not an image file: {path}")
    if suffix == ".npy":
        from .io import check_npy

        check_npy(path)
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False), None
        except (ValueError, OSError) as err:
            raise InputError(f"{path.name} is not a readable .npy image: {err}") from err
    return _open_tiff(path)


def _letters(names: list[str]) -> str | None:
    axes = "".join(str(n) for n in names).upper()
    if len(axes) != len(names) or set(axes) - set("TZCYX") or len(set(axes)) != len(axes):
        return None
    return axes


def _open_zarr(path: Path) -> tuple[Any, str | None]:
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as err:  # zarr raises several types for a store it cannot read
        raise InputError(f"{path.name} is not a readable zarr store ({err})") from err
    if isinstance(node, zarr.Array):
        names = node.attrs.get("axes") or node.attrs.get("_ARRAY_DIMENSIONS")
        axes = _letters(list(names)) if names else None
        _check_chunks(path, node)
        return node, axes
    attrs = dict(node.attrs)
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if not multiscales:
        raise InputError(
            f"{path.name} is a zarr group without OME-Zarr 'multiscales'; "
            "give the path of its image array"
        )
    ms = multiscales[0]
    try:
        array = node[ms["datasets"][0]["path"]]
    except (KeyError, IndexError) as err:
        raise InputError(f"{path.name}: its OME-Zarr metadata names no readable level") from err
    names = [a["name"] if isinstance(a, dict) else a for a in ms.get("axes", [])]
    axes = _letters(names) if len(names) == array.ndim else None
    _check_chunks(path, array)
    return array, axes


def _check_chunks(path: Path, array) -> None:
    """Refuse an array whose chunks (the least that can be read of it) do not fit in memory."""
    from .io import _array_text, _nbytes_text, physical_memory

    try:
        chunks = array.chunks
    except (AttributeError, NotImplementedError, TypeError, ValueError):  # no regular grid
        return
    memory = physical_memory()
    if not chunks or memory is None:
        return
    if math.prod(int(c) for c in chunks) * np.dtype(array.dtype).itemsize > memory:
        raise InputError(
            f"{path.name}: its {_array_text(array.shape, array.dtype)} image is stored in "
            f"chunks of {'x'.join(str(int(c)) for c in chunks)}, each more than this machine's "
            f"memory ({_nbytes_text(memory)})"
        )


def _open_tiff(path: Path) -> tuple[Any, str | None]:
    import struct

    import tifffile
    import zarr

    from .io import check_tiff_data

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            check_tiff_data(path, series)
            axes = normalize_axes(series.axes.upper())
            shape = series.shape
        store = tifffile.imread(path, aszarr=True)
        array = zarr.open(store, mode="r")
    except InputError:
        raise
    except (tifffile.TiffFileError, ValueError, IndexError, OSError, struct.error) as err:
        raise InputError(f"{path.name} is not a readable TIFF image ({err})") from err
    if not isinstance(array, zarr.Array):  # a pyramid: level 0
        array = array["0"]
    _check_chunks(path, array)
    if len(axes) != len(shape) or set(axes) - set("TZCYX"):
        axes = None
    return array, axes


# -- the output store ---------------------------------------------------------------------------
def _run_state(model, lay: SliceLayout, rule: SplitRule, options: SegmentOptions, block: int):
    """What must be equal for a partial output to be continued."""
    tile = options.tile_size
    return {
        "block": int(block),
        "chunks": list(label_chunks(lay, block)),  # an older grid may not fit the blocks
        "model": model.digest(),
        "axes": lay.axes,
        "shape": list(lay.shape),
        **rule.as_state(),
        "tile_size": list(tile) if isinstance(tile, tuple) else tile,
        "halo": options.halo,
        "blend": options.blend,
        "precision": options.precision,
    }


MAX_CHUNK = 2048  # largest chunk side in Y and X of a zarr output


def chunk_side(block: int = 0) -> int:
    """Chunk side in Y and X of the outputs of a run in blocks of side ``block`` (0: whole
    slices): the largest divisor of ``block`` that is at most :data:`MAX_CHUNK`, so every
    block is a whole number of chunks and no two blocks share a chunk (their writers, dask
    workers among them, rewrite whole chunks). :func:`choose_block` picks blocks that are a
    few chunks of nearly :data:`MAX_CHUNK` each."""
    if not block:
        return MAX_CHUNK
    block = int(block)
    n = -(-block // MAX_CHUNK)  # fewest chunks per block side
    while block % n:
        n += 1
    return block // n


def label_chunks(lay: SliceLayout, block: int = 0) -> tuple[int, ...]:
    """Chunks of a labels output: one per slice along the stack axes; in Y and X
    :func:`chunk_side` (the whole axis if it is shorter). Blocks start at multiples of the
    block side, so block borders are chunk borders, and the last, partial block of a row or
    column ends at the array's end, as its last chunk does."""
    y, x = lay.yx
    side = chunk_side(block)
    return (*(1 for _ in lay.lead_shape), min(y, side), min(x, side))


def fit_block(block_size: int, multiple: int) -> int:
    """The block side for a requested ``block_size``: a whole number n of chunks, n as few
    as keep a chunk within :data:`MAX_CHUNK`, each chunk a multiple of the model's size
    ``multiple`` (so is the block, which keeps blocks on the pooling grid). The block grows by
    less than n * ``multiple`` pixels, so its memory stays that of about one block asked."""
    block = round_up(int(block_size), multiple)
    n = -(-block // MAX_CHUNK)
    while round_up(-(-block // n), multiple) > MAX_CHUNK:  # only for an odd size multiple
        n += 1
    return n * round_up(-(-block // n), multiple)


# -- blocks of large 2D planes ------------------------------------------------------------------
AUTO_BLOCK_PIXELS = 8192 * 8192  # class labels of planes larger than this are made in blocks
DEFAULT_BLOCK = 4096

Box = tuple[int, int, int, int]  # y0, y1, x0, x1 of a block's kept core


def block_margin(model, halo, edge_offset: float = 0.0) -> int:
    """Context read around a block: the halo, plus the pixels an edge offset looks across,
    rounded to the pooling grid."""
    m = model.size_multiple
    reach = math.ceil(abs(edge_offset)) + 1 if edge_offset else 0
    return round_up(max(resolve_halo(model, halo) + reach, m), m)


def choose_block(block_size: int | None, lay: SliceLayout, model, halo, instances: bool) -> int:
    """Block side for this image (0: whole slices).

    A block is read with ``block_margin`` of context on each side (mirrored at the image
    border, like the whole plane) and its core is kept: with the exact halo and the
    whole-plane intensity levels the labels equal those of whole slices. ``block_size`` is
    rounded up by :func:`fit_block` to a whole number of output chunks.
    """
    if isinstance(halo, str) and halo.lower() == "auto":
        halo = "exact"  # decided before the auto halo is measured: its largest margin
    h, w = lay.yx
    if block_size is None:
        if instances or h * w <= AUTO_BLOCK_PIXELS:
            return 0
        block_size = DEFAULT_BLOCK
    if block_size <= 0:
        return 0
    if instances:
        raise InputError(
            "blocks are for class labels: instances need whole slices (leave out --block-size)"
        )
    block = fit_block(block_size, model.size_multiple)  # a whole number of chunks
    margin = block_margin(model, halo)
    if block >= max(h, w) or min(h, w) <= 2 * margin:
        return 0
    return block


def plan_blocks(lay: SliceLayout, block: int) -> list[Box]:
    h, w = lay.yx
    return [
        (y, min(y + block, h), x, min(x + block, w))
        for y in range(0, h, block)
        for x in range(0, w, block)
    ]


def read_region(image, lay: SliceLayout, s: int, box: Box, margin: int) -> np.ndarray:
    """Block ``box`` of slice ``s`` with ``margin`` pixels of context, ``(C, y, x)``: reads
    only the rows and columns needed, mirrored at the image border as the tiler mirrors."""
    y0, y1, x0, x1 = box
    h, w = lay.yx
    iy = mirror_indices(y0 - margin, y1 + margin, h)
    ix = mirror_indices(x0 - margin, x1 + margin, w)
    ylo, xlo = int(iy.min()), int(ix.min())
    rows, cols = slice(ylo, int(iy.max()) + 1), slice(xlo, int(ix.max()) + 1)
    data = np.asarray(lay.region_view(image, s, rows, cols))
    return data[:, iy - ylo][:, :, ix - xlo]


def lazy_levels(image, lay: SliceLayout, s: int, norm) -> list[tuple[float, float]]:
    """Whole-slice intensity levels of slice ``s``, read as a strided subsample."""
    if isinstance(image, np.ndarray):
        return slice_levels(lay.slice_view(image, s), norm)
    import dask
    import dask.array as da

    chunks = getattr(image, "chunks", "auto")
    image = image if isinstance(image, da.Array) else da.from_array(image, chunks=chunks)
    with dask.config.set(scheduler="synchronous"):  # here, a chunk at a time (not a cluster)
        return slice_levels(lay.slice_view(image, s), norm)


def unit_labels(model, data, box, margin, levels, rule: SplitRule, options, plane=None):
    """Labels of one unit of work: a whole slice ``(C, Y, X)`` (``box`` None) or a block read
    by :func:`read_region` from a plane of shape ``plane``. Returns
    ``(labels, object count, notices, probabilities)``.

    A block's edges are moved before its margin is cut off, so the offset sees across the
    block's border as in a whole slice; the margin's mirrored part beyond the plane's border
    is left out first (the plane's border is not background)."""
    notices, prob = [], None
    opts = replace(options, channels=None)  # the data holds the picked channels already
    for event in iter_slice_predictions(model, data, axes="CYX", options=opts, levels=levels):
        if isinstance(event, SliceResult):
            prob = event.probabilities
        elif isinstance(event, Notice):
            notices.append(event.message)
    if box is not None:  # class labels only
        y0, y1, x0, x1 = box
        core = (slice(margin, margin + y1 - y0), slice(margin, margin + x1 - x0))
        prob_core = prob[(slice(None), *core)]
        classes = classes_from_probabilities(prob)
        if rule.edge_offset:
            h, w = plane
            ty, tx = max(y0 - margin, 0), max(x0 - margin, 0)  # the region's part in the plane
            inside = (
                slice(ty - (y0 - margin), min(y1 + margin, h) - (y0 - margin)),
                slice(tx - (x0 - margin), min(x1 + margin, w) - (x0 - margin)),
            )
            classes = shift_edges(classes[inside], rule.edge_offset)
            core = (slice(y0 - ty, y1 - ty), slice(x0 - tx, x1 - tx))
        return classes[core], 0, notices, prob_core
    labels, count = slice_labels(prob, rule)
    return labels, count, notices, prob


def unit_key(s: int, box: Box | None) -> str:
    return str(s) if box is None else f"{s}_{box[0]}_{box[2]}"


def unit_index(lay: SliceLayout, s: int, box: Box | None) -> tuple:
    lead = tuple(int(i) for i in (np.unravel_index(s, lay.lead_shape) if lay.lead_shape else ()))
    if box is None:
        return (*lead, slice(None), slice(None))
    return (*lead, slice(box[0], box[1]), slice(box[2], box[3]))


MAX_ID = "max_id"  # attribute of an instance labels array: its largest id


def slice_store(path: str | os.PathLike, lay: SliceLayout, instances: bool):
    """A new zarr labels array at ``path`` for slices segmented one at a time (napari's
    "current slice" of a lazy stack; :func:`put_slice` writes them): shaped
    ``lay.out_shape``, in :func:`label_chunks`, typed by :func:`labels_dtype`, zeros."""
    import zarr

    store = zarr.open_array(
        str(path),
        mode="w",
        shape=lay.out_shape,
        chunks=label_chunks(lay),
        dtype=labels_dtype(instances),
        fill_value=0,
    )
    store.attrs["axes"] = lay.out_axes
    if instances:
        store.attrs[MAX_ID] = 0
    return store


def put_slice(store, index: tuple, labels: np.ndarray, instances: bool) -> None:
    """Write one slice's labels (ids from 1) into ``store`` at ``index`` (its indices along
    the stack axes). Instance ids continue after the largest id the array holds, its
    ``max_id`` attribute (as :meth:`ZarrOutput.finish` leaves it), which grows by the slice's
    ids: ids are unique across the slices, whichever order they come in."""
    if not instances:
        store[index] = np.asarray(labels).astype(labels_dtype(False), copy=False)
        return
    offset = int(store.attrs.get(MAX_ID, 0))
    ids = offset_ids(labels, offset)
    store[index] = ids
    store.attrs[MAX_ID] = offset + (int(np.max(labels)) if np.size(labels) else 0)


class ZarrOutput:
    """``OUT.partial`` while the work goes on: the labels array plus a record of done slices."""

    def __init__(
        self,
        final: Path,
        lay: SliceLayout,
        dtype,
        state: dict,
        *,
        resume: bool,
        prob_final: Path | None = None,
        n_classes: int = 0,
    ):
        block = int(state.get("block", 0))
        import zarr

        self.final, self.lay, self.state = final, lay, state
        self.partial = final.with_name(final.name + PARTIAL)
        self.prob_final = prob_final
        self.prob_partial = prob_final.with_name(prob_final.name + PARTIAL) if prob_final else None
        self.prob = None
        self.done_dir = self.partial / _DONE
        self.resumed = 0
        self.restarted = False
        state_file = self.partial / _STATE
        if self.partial.exists():
            old = None
            with contextlib.suppress(OSError, ValueError):
                old = json.loads(state_file.read_text())
            have_prob = self.prob_partial is None or self.prob_partial.is_dir()
            if resume and old == state and have_prob:
                self.array = zarr.open_array(str(self.partial), mode="r+")
                if self.prob_partial is not None:
                    self.prob = zarr.open_array(str(self.prob_partial), mode="r+")
                self.resumed = len(self.done())
                return
            self.restarted = True
            shutil.rmtree(self.partial)
        if self.prob_partial is not None:
            shutil.rmtree(self.prob_partial, ignore_errors=True)
            self.prob = zarr.open_array(
                str(self.prob_partial),
                mode="w",
                shape=(n_classes, *lay.out_shape),
                chunks=(n_classes, *label_chunks(lay, block)),
                dtype=np.float32,
                fill_value=0.0,
            )
            self.prob.attrs["axes"] = "C" + lay.out_axes
        self.array = zarr.open_array(
            str(self.partial),
            mode="w",
            shape=lay.out_shape,
            chunks=label_chunks(lay, block),
            dtype=dtype,
            fill_value=0,
        )
        self.array.attrs["axes"] = lay.out_axes
        self.done_dir.mkdir()
        _write_atomic(state_file, json.dumps(state))

    def done(self) -> dict[str, int]:
        """Finished units (slices, or blocks of slices) and their object counts."""
        out = {}
        for f in self.done_dir.iterdir():
            if not f.name.startswith("."):
                out[f.name] = int(f.read_text())
        return out

    def mark_done(self, key: str, count: int) -> None:
        _write_atomic(self.done_dir / key, str(int(count)))

    def finish(self, instances: bool, units: list[str]) -> Path:
        """Make instance ids unique across slices, then move the labels to the final name."""
        done = self.done()
        missing = set(units) - done.keys()
        if missing:
            raise RuntimeError(f"not done: {sorted(missing)[:5]}")
        if instances:
            offset = 0
            for s in range(self.lay.n_slices):
                if offset and done[str(s)]:
                    idx = unit_index(self.lay, s, None)
                    self.array[idx] = offset_ids(self.array[idx], offset)
                offset += done[str(s)]
            self.array.attrs[MAX_ID] = int(offset)
        shutil.rmtree(self.done_dir)
        (self.partial / _STATE).unlink()
        if self.prob_partial is not None:
            _replace_dir(self.prob_partial, self.prob_final)
        _replace_dir(self.partial, self.final)
        return self.final


def _replace_dir(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``; an existing ``dst`` is replaced only now, when ``src`` is
    complete."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def slice_labels(prob: np.ndarray, rule: SplitRule) -> tuple[np.ndarray, int]:
    """Labels of one slice from its probabilities, and its object count (ids from 1)."""
    labels, nxt = rule.labels(classes_from_probabilities(prob), 1)
    if not rule.instances:
        return labels, 0
    return labels.astype(labels_dtype(True)), nxt - 1


# -- the work -----------------------------------------------------------------------------------
def iter_segment_to_zarr(
    model,
    image,
    output: str | os.PathLike,
    *,
    axes: str = "YX",
    options: SegmentOptions | None = None,
    resume: bool = True,
    scheduler: str | None = None,
    workers: int | None = None,
    block_size: int | None = None,
    probabilities: str | os.PathLike | None = None,
    **settings,
) -> Generator[Progress | Notice, None, Path]:
    """Segment ``image`` slice by slice into the zarr array ``output``; yields progress.

    ``image``: a numpy, zarr or dask array, or the path of a TIFF, zarr/OME-Zarr or .npy file
    (opened lazily; on a cluster the workers open it themselves, so it must be on a file
    system they share). ``scheduler``: None (this process), ``"local"`` (a dask LocalCluster
    of ``workers`` processes bound to 127.0.0.1) or the address of a running dask scheduler.
    ``block_size``: split each 2D plane into blocks of this side (class labels only; None:
    automatic for planes over 8192x8192 pixels, 0: never), so a plane need not fit in memory.
    ``probabilities``: also write the class probabilities ``(n_classes, *lead, Y, X)``,
    float32, to this zarr array, alongside the labels.
    ``options`` (or its fields as keyword arguments): the settings, as in
    :func:`napari_tessera.segment`. Returns the output path.
    Results are the same in every mode and equal to :func:`napari_tessera.segment` (with the
    default auto halo, blocks of large planes differ from whole slices only as much as tile
    seams do; with ``halo="exact"`` they are equal).
    """
    options = SegmentOptions.build(options, **settings)
    output = Path(output)
    if not is_zarr(output):
        raise InputError(f"the output must be a .zarr folder, got {output.name}")
    check_output_folder(output)
    if scheduler is not None:
        require_distributed()
    prob_out = Path(probabilities) if probabilities is not None else None
    for path in (output, prob_out):
        if path is None:
            continue
        if not is_zarr(path):
            raise InputError(f"the output must be a .zarr folder, got {path.name}")
        if path.exists() and not (
            path.is_dir() and ((path / "zarr.json").is_file() or (path / ".zarray").is_file())
        ):  # replaced at the end: never a file or a folder that is not a zarr array
            raise InputError(f"output {path} exists and is not a zarr array; choose another name")
    if prob_out is not None and prob_out.resolve() == output.resolve():
        raise InputError("the probabilities need another folder than the labels")
    source = None
    if isinstance(image, (str, os.PathLike)):
        source = str(Path(image).resolve())
        if Path(source) == output.resolve():
            raise InputError(f"output {output} would overwrite the input")
        image, file_axes = open_image(image)
        if axes is None:
            axes = file_axes
    if axes is None:
        raise InputError("pass axes (e.g. 'ZYX') for this image")
    lay = image_layout(model, image, axes, options.channels)
    check_dtype(image.dtype)
    check_channels(model, lay)
    # settings are checked here (tile size against halo, device) before anything is written;
    # an auto halo is measured here once, and every slice, block and worker uses that number
    here = options if scheduler is None else replace(options, device="cpu")
    prepare(model, lay, here, 0)  # the other settings first
    halo, notice = run_halo(model, image, lay, here)
    if notice is not None:
        yield notice
    st = prepare(model, lay, here, halo)
    block = choose_block(block_size, lay, model, options.halo, options.instances)
    options = replace(options, halo=st.halo)  # the number every slice, block and worker uses
    halo = st.halo
    rule = split_rule(model, options)
    state = _run_state(model, lay, rule, options, block)
    state["probabilities"] = str(prob_out.resolve()) if prob_out is not None else None
    out = ZarrOutput(
        output,
        lay,
        labels_dtype(options.instances),
        state,
        resume=resume,
        prob_final=prob_out,
        n_classes=model.config.n_classes,
    )
    boxes = plan_blocks(lay, block) if block else [None]
    units = [(s, box) for s in range(lay.n_slices) for box in boxes]
    keys = [unit_key(s, box) for s, box in units]
    what = "slices" if not block else f"blocks ({block}x{block} px)"
    if out.restarted:
        yield Notice(f"{out.partial.name} was made with other settings: starting over")
    elif out.resumed:
        yield Notice(f"resuming: {out.resumed} of {len(units)} {what} already done")
    finished = out.done().keys()
    todo = [u for u, k in zip(units, keys) if k not in finished]
    margin = block_margin(model, halo, rule.edge_offset) if block else 0
    if scheduler is not None:
        prob_path = str(out.prob_partial) if out.prob is not None else None
        job = UnitJob(rule, options, margin, lay, str(out.partial), prob_path, state["model"])
        yield from _run_on_cluster(model, image, source, out, todo, job, scheduler, workers)
    elif block:
        yield from _run_blocks_here(model, image, lay, out, todo, margin, rule, options)
    else:
        slices = [u[0] for u in todo]
        yield from _run_here(model, image, lay, out, slices, rule, options)
    return out.finish(options.instances, keys)


def _run_here(model, image, lay, out: ZarrOutput, todo, rule: SplitRule, options):
    if not todo:
        return
    opts = replace(options, channels=lay.pick)
    for event in iter_slice_predictions(model, image, axes=lay.axes, options=opts, slices=todo):
        if isinstance(event, SliceResult):
            labels, count = slice_labels(event.probabilities, rule)
            out.array[unit_index(lay, event.index, None)] = labels
            if out.prob is not None:
                out.prob[(slice(None), *unit_index(lay, event.index, None))] = event.probabilities
            out.mark_done(unit_key(event.index, None), count)
        else:
            yield event


def _run_blocks_here(model, image, lay, out: ZarrOutput, todo, margin, rule: SplitRule, options):
    levels: dict[int, list] = {}
    for k, (s, box) in enumerate(todo, 1):
        if s not in levels:
            levels = {s: lazy_levels(image, lay, s, model.config.normalization)}
        data = read_region(image, lay, s, box, margin)
        labels, _, notices, prob = unit_labels(
            model, data, box, margin, levels[s], replace(rule, instances=False), options, lay.yx
        )
        out.array[unit_index(lay, s, box)] = labels
        if out.prob is not None:
            out.prob[(slice(None), *unit_index(lay, s, box))] = prob
        out.mark_done(unit_key(s, box), 0)
        for text in notices:
            yield Notice(text)
        yield Progress(k, len(todo))


def segment_to_zarr(model, image, output, **kwargs) -> Path:
    """Non-generator form of :func:`iter_segment_to_zarr`."""
    from .inference import drain

    return drain(iter_segment_to_zarr(model, image, output, **kwargs))


# -- dask.distributed ---------------------------------------------------------------------------


def model_bytes(model) -> bytes:
    from .io import save_model

    with tempfile.TemporaryDirectory() as d:
        path = save_model(model, Path(d) / "model.safetensors")
        return path.read_bytes()


def require_distributed() -> None:
    """A one-line error saying how to install dask.distributed (``--scheduler`` needs it)."""
    try:
        import distributed  # noqa: F401
    except ImportError as err:
        raise InputError(
            '--scheduler needs dask.distributed: pip install "napari-tessera[distributed]"'
        ) from err


def open_client(scheduler: str, workers: int | None = None):
    """``(client, cluster or None, torch threads per worker or None)``.

    ``"local"``: a LocalCluster of ``workers`` single-threaded processes on this machine,
    listening on 127.0.0.1 only (no dashboard). Anything else: the address of a running
    scheduler (e.g. ``tcp://10.0.0.5:8786``), which the user names and so chooses to expose.
    """
    require_distributed()
    from distributed import Client, LocalCluster

    if scheduler == "local":
        cores = os.cpu_count() or 1
        n = workers or max(1, min(cores, 4))
        cluster = LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            silence_logs=40,
        )
        return Client(cluster), cluster, max(1, cores // n)
    try:
        client = Client(scheduler, timeout="20s")
    except (OSError, TimeoutError, ValueError) as err:
        raise InputError(f"cannot reach the dask scheduler at {scheduler} ({err})") from err
    if workers:
        client.wait_for_workers(workers, timeout=300)
    return client, None, None


@dataclass(frozen=True)
class UnitJob:
    """What every task of a cluster run shares: how to label, where to write, which model."""

    rule: SplitRule
    options: SegmentOptions  # with the halo as a number
    margin: int  # context read around a block
    lay: SliceLayout
    out_path: str  # the labels' partial zarr array
    prob_path: str | None  # the probabilities' partial zarr array
    digest: str  # the model every worker must hold


def _run_on_cluster(model, image, source, out: ZarrOutput, todo, job: UnitJob, scheduler, n):
    from distributed import as_completed

    from . import _dask_worker

    if not todo:
        return
    lay = job.lay
    client, cluster, threads = open_client(scheduler, n)
    pending = iter(todo)
    futures: list = []
    try:
        client.register_plugin(
            _dask_worker.ModelPlugin(model_bytes(model), job.digest, threads),
            name=_dask_worker.PLUGIN,
        )
        n_workers = len(client.scheduler_info()["workers"])
        yield Notice(f"dask: {n_workers} worker(s) at {client.scheduler.address}")
        levels: dict[int, list] = {}  # whole-slice levels, for blocks

        def submit():
            unit = next(pending, None)
            if unit is None:
                return None
            s, box = unit
            if box is not None and s not in levels:
                levels.clear()
                levels[s] = lazy_levels(image, lay, s, model.config.normalization)
            if source is not None:
                data = source
            elif box is None:  # an array in this process: send only this slice
                data = np.ascontiguousarray(lay.slice_view(image, s))
            else:
                data = read_region(image, lay, s, box, job.margin)
            fut = client.submit(
                _dask_worker.unit_task, job, s, box, levels.get(s), data, pure=False
            )
            futures.append(fut)
            return fut

        # at most two units per worker in flight: the client never holds the whole stack
        queue = as_completed([f for f in (submit() for _ in range(2 * max(n_workers, 1))) if f])
        total = len(todo)
        for k, fut in enumerate(queue, 1):
            s, box, count, notices = fut.result()
            out.mark_done(unit_key(s, box), count)
            nxt = submit()
            if nxt is not None:
                queue.add(nxt)
            for text in notices:
                yield Notice(f"slice {s}: {text}")
            yield Progress(k, total)
    finally:
        for fut in futures:
            fut.cancel()
        client.close()
        if cluster is not None:
            cluster.close()
