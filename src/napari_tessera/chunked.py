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

from .axes import SliceLayout
from .errors import InputError
from .images import Box, check_output_folder, is_zarr, lazy_levels, open_image, read_region
from .inference import (
    Notice,
    Progress,
    SliceResult,
    check_channels,
    image_layout,
    iter_slice_predictions,
    links_through_z,
    prepare,
    resolve_halo,
    run_halo,
    split_rule,
)
from .normalize import check_dtype
from .options import SegmentOptions
from .postprocess import (
    Slabs,
    SplitRule,
    classes_from_probabilities,
    labels_dtype,
    offset_ids,
    shift_edges,
)
from .tiling import round_up

PARTIAL = ".partial"
_STATE = ".tessera-run.json"  # settings of the run that made a partial output
_DONE = ".tessera-done"  # one small file per finished slice: its object count


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
        self.check_done(units)
        done = self.done()
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

    def check_done(self, units: list[str]) -> None:
        missing = set(units) - self.done().keys()
        if missing:
            raise RuntimeError(f"not done: {sorted(missing)[:5]}")

    def finish_linked(self, linked: Path) -> Path:
        """Move ``linked`` (every slice's labels, complete) to the final name in place of the
        class maps; until then a stopped run resumes from the class maps."""
        if self.prob_partial is not None:
            _replace_dir(self.prob_partial, self.prob_final)
        _replace_dir(linked, self.final)
        shutil.rmtree(self.partial)
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
@dataclass
class ZarrRun:
    """A zarr run checked and planned, its output open: what is left is to run ``todo``."""

    model: Any
    image: Any  # the array (a file opened lazily)
    source: str | None  # the file it was opened from (workers of a cluster open it too)
    lay: SliceLayout
    options: SegmentOptions  # with the halo as a number: every slice, block and worker's
    rule: SplitRule
    out: ZarrOutput
    block: int  # block side (0: whole slices)
    margin: int  # context read around a block
    keys: list[str]  # every unit's record key, in order
    todo: list[tuple[int, Box | None]]  # the units not done yet: (slice, block or None)

    def finish(self) -> Path:
        """Unique ids (linked through Z when the run links), then the final name."""
        if not self.out.state.get("link_z"):
            return self.out.finish(self.options.instances, self.keys)
        self.out.check_done(self.keys)
        return self.out.finish_linked(self._link())

    def _link(self) -> Path:
        """The 3D objects of every Z stack, a slab at a time (:func:`plan_slabs`), into a new
        array beside the class maps, which stay as they are until it is complete."""
        import zarr

        from .postprocess import ID_DTYPE, link_in_slabs

        lay, src = self.lay, self.out.array
        slabs = plan_slabs(lay, self.options.spacing[0])
        rule = split_rule(self.model, self.options)
        path = self.out.final.with_name(self.out.final.name + LINKING)
        dst = zarr.open_array(
            str(path), mode="w", shape=src.shape, chunks=src.chunks, dtype=ID_DTYPE, fill_value=0
        )
        dst.attrs["axes"] = lay.out_axes
        z = lay.lead_axes.index("Z")
        others = [n for k, n in enumerate(lay.lead_shape) if k != z]
        nxt = 1
        for rest in np.ndindex(*others):

            def at(z0: int, z1: int, rest=rest) -> tuple:
                index = list(rest)
                index.insert(z, slice(z0, z1))
                return (*index, slice(None), slice(None))

            def read(z0, z1, at=at):
                return np.asarray(src[at(z0, z1)])

            def write(z0, labels, at=at):
                dst[at(z0, z0 + len(labels))] = labels

            nz = lay.lead_shape[z]
            nxt = link_in_slabs(read, write, nz, rule, self.options.spacing, nxt, slabs)
        dst.attrs[MAX_ID] = nxt - 1
        return path


def iter_segment_to_zarr(
    model,
    image,
    output: str | os.PathLike,
    *,
    axes: str | None = "YX",
    options: SegmentOptions | None = None,
    resume: bool = True,
    block_size: int | None = None,
    probabilities: str | os.PathLike | None = None,
    **settings,
) -> Generator[Progress | Notice, None, Path]:
    """Segment ``image`` slice by slice into the zarr array ``output``, in this process;
    yields progress. (:mod:`napari_tessera.cluster` runs the same on a dask cluster.)

    ``image``: a numpy, zarr or dask array, or the path of a TIFF, zarr/OME-Zarr or .npy file
    (opened lazily; ``axes`` None: the file's own).
    ``block_size``: split each 2D plane into blocks of this side (class labels only; None:
    automatic for planes over 8192x8192 pixels, 0: never), so a plane need not fit in memory.
    ``probabilities``: also write the class probabilities ``(n_classes, *lead, Y, X)``,
    float32, to this zarr array, alongside the labels.
    ``options`` (or its fields as keyword arguments): the settings, as in
    :func:`napari_tessera.segment`. An interrupted run with the same settings resumes
    (``resume=False`` starts over). Returns the output path.
    Results equal :func:`napari_tessera.segment` (with the default auto halo, blocks of large
    planes differ from whole slices only as much as tile seams do; with ``halo="exact"`` they
    are equal).
    """
    options = SegmentOptions.build(options, **settings)
    run = yield from plan_zarr_run(
        model, image, output, axes, options, resume, block_size, probabilities
    )
    if run.block:
        yield from _run_blocks_here(run)
    else:
        yield from _run_here(run)
    return run.finish()


def _check_outputs(output: Path, prob_out: Path | None) -> None:
    """Zarr outputs that may be written: never a file or a folder that is not a zarr array
    (they are replaced at the end), never the labels' own folder for the probabilities."""
    check_output_folder(output)
    for path in (output, prob_out):
        if path is None:
            continue
        if not is_zarr(path):
            raise InputError(f"the output must be a .zarr folder, got {path.name}")
        if path.exists() and not (
            path.is_dir() and ((path / "zarr.json").is_file() or (path / ".zarray").is_file())
        ):
            raise InputError(f"output {path} exists and is not a zarr array; choose another name")
    if prob_out is not None and prob_out.resolve() == output.resolve():
        raise InputError("the probabilities need another folder than the labels")


def plan_zarr_run(
    model, image, output, axes, options: SegmentOptions, resume, block_size, probabilities,
    remote: bool = False,
):  # fmt: skip
    """Check everything, measure an auto halo once and open the output (resuming a partial
    one); yields notices, returns the :class:`ZarrRun`. ``remote``: the slices run elsewhere
    (a cluster), so this process checks the settings on the CPU."""
    output = Path(output)
    prob_out = Path(probabilities) if probabilities is not None else None
    _check_outputs(output, prob_out)
    source = None
    if isinstance(image, (str, os.PathLike)):
        source = str(Path(image).resolve())
        if Path(source) == output.resolve():
            raise InputError(f"output {output} would overwrite the input")
        image, file_axes = open_image(image)
        axes = axes or file_axes
    if axes is None:
        raise InputError("pass axes (e.g. 'ZYX') for this image")
    lay = image_layout(model, image, axes, options.channels)
    check_dtype(image.dtype)
    check_channels(model, lay)
    if links_through_z(options, lay) and plan_slabs(lay, options.spacing[0]) is None:
        yield Notice(
            "the slices are too large to be linked through Z in this machine's memory: each "
            "slice keeps its own objects (ids unique over the stack)"
        )
        options = replace(options, link_z=False)
    # the settings are checked (tile size against halo, device) before anything is written
    here = replace(options, device="cpu") if remote else options
    prepare(model, lay, here, 0)
    halo, notice = run_halo(model, image, lay, here)
    if notice is not None:
        yield notice
    halo = prepare(model, lay, here, halo).halo
    block = choose_block(block_size, lay, model, options.halo, options.instances)
    options = replace(options, halo=halo)
    rule = split_rule(model, options)
    state = _run_state(model, lay, rule, options, block)
    state["link_z"] = links_through_z(options, lay)
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
    todo = [u for u, k in zip(units, keys, strict=True) if k not in finished]
    margin = block_margin(model, halo, rule.edge_offset) if block else 0
    if state["link_z"]:  # the slices give plain class maps; the objects are made at the end
        rule = replace(rule, instances=False, edge_offset=0.0)
    return ZarrRun(model, image, source, lay, options, rule, out, block, margin, keys, todo)


# linking's peak over its class maps, measured on 32x512x512: 37 bytes a voxel, 43 with a
# seed depth (the basins kept for the objects)
LINK_BYTES_PER_VOXEL = 96
LINK_MEMORY = 8 << 30  # at most this much (and a quarter of the machine's memory) per slab
LINK_CONTEXT_PX = 24  # context each slab is split with, above and below, in pixel units
LINKING = ".linking.partial"  # the linked labels while they are written


def plan_slabs(lay: SliceLayout, z_step: float) -> Slabs | None:
    """How the stacks of a run are linked through Z: the whole stack at once when it fits
    the linking memory, else in slabs with ``LINK_CONTEXT_PX`` of context (fewer slices when
    little fits); None when not even three slices fit."""
    from .images import physical_memory

    memory = physical_memory()
    budget = min(LINK_MEMORY, memory // 4) if memory else LINK_MEMORY
    fit = budget // (lay.yx[0] * lay.yx[1] * LINK_BYTES_PER_VOXEL)
    nz = lay.lead_shape[lay.lead_axes.index("Z")]
    if fit >= nz:
        return Slabs(nz, 1)
    if fit < 3:
        return None
    overlap = min(max(1, math.ceil(LINK_CONTEXT_PX / z_step)), fit // 3)
    return Slabs(fit - 2 * overlap, overlap)


def _run_here(run: ZarrRun):
    """Whole slices, one after the other."""
    slices = [s for s, _ in run.todo]
    if not slices:
        return
    lay, out = run.lay, run.out
    opts = replace(run.options, channels=lay.pick)
    for event in iter_slice_predictions(
        run.model, run.image, axes=lay.axes, options=opts, slices=slices
    ):
        if isinstance(event, SliceResult):
            labels, count = slice_labels(event.probabilities, run.rule)
            out.array[unit_index(lay, event.index, None)] = labels
            if out.prob is not None:
                out.prob[(slice(None), *unit_index(lay, event.index, None))] = event.probabilities
            out.mark_done(unit_key(event.index, None), count)
        else:
            yield event


def _run_blocks_here(run: ZarrRun):
    """Blocks of large planes, one after the other, each with the whole plane's levels."""
    model, lay, out = run.model, run.lay, run.out
    rule = replace(run.rule, instances=False)
    levels: dict[int, list] = {}
    for k, (s, box) in enumerate(run.todo, 1):
        if s not in levels:
            levels = {s: lazy_levels(run.image, lay, s, model.config.normalization)}
        data = read_region(run.image, lay, s, box, run.margin)
        labels, _, notices, prob = unit_labels(
            model, data, box, run.margin, levels[s], rule, run.options, lay.yx
        )
        out.array[unit_index(lay, s, box)] = labels
        if out.prob is not None:
            out.prob[(slice(None), *unit_index(lay, s, box))] = prob
        out.mark_done(unit_key(s, box), 0)
        for text in notices:
            yield Notice(text)
        yield Progress(k, len(run.todo))


def segment_to_zarr(model, image, output, **kwargs) -> Path:
    """Non-generator form of :func:`iter_segment_to_zarr`."""
    from .inference import drain

    return drain(iter_segment_to_zarr(model, image, output, **kwargs))
