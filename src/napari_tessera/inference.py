"""Mirrored overlap-tile inference over every 2D slice of an image.

The work is a generator (:func:`iter_slice_predictions`) that yields :class:`Progress` events
and one :class:`SliceResult` per finished slice, so the CLI can draw a progress bar, napari can
run it in a worker thread and stop it between batches, and :func:`segment` can turn each slice
into labels while only one or two slices of probabilities are in memory.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .axes import SliceLayout, check_channel_count, layout
from .device import (
    PRECISIONS,
    autocast,
    is_out_of_memory,
    probabilities,
    release_device_memory,
    resolve_device,
)
from .errors import InputError
from .normalize import check_dtype, normalize_slice
from .options import SegmentOptions
from .tiling import TilePlan, plan_tiles, round_up

DEFAULT_CORE = 1024  # pixels kept per tile side when no tile size is given (see benchmarks)


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` tiles are through the network."""

    done: int
    total: int


@dataclass(frozen=True)
class Notice:
    """Something the user should be told while the work goes on (e.g. an out-of-memory retry)."""

    message: str


@dataclass(frozen=True)
class SliceResult:
    """Class probabilities ``(n_classes, Y, X)`` of slice ``index`` (flat over the lead axes)."""

    index: int
    probabilities: np.ndarray


@dataclass(frozen=True)
class InferenceSettings:
    tile_shape: tuple[int, int]
    halo: int
    plan: TilePlan
    device: torch.device
    dtype: torch.dtype


def resolve_halo(model, halo: str | int) -> int:
    """Halo in pixels: "exact" = the receptive field on the pooling grid; "auto" = the halo
    stored with the model (one measured on an image comes from :func:`run_halo`); pixels as
    given, rounded up to the pooling grid. ``halo`` is checked where the settings are made
    (:class:`~napari_tessera.options.SegmentOptions`).

    A "valid"-padding network with transposed convolutions needs none (no padding inside it);
    with bilinear upsampling it does, because interpolation clamps at feature-map edges ("auto"
    is "exact" there).
    """
    from .halo import stored_halo

    if model.config.padding == "valid" and model.config.upsampling == "transpose":
        return 0  # no padding anywhere inside: exact by construction, whatever the tile
    if halo == "exact" or (halo == "auto" and model.config.padding == "valid"):
        return model.exact_halo()
    if halo == "auto":
        pixels = stored_halo(model)
        if pixels is None:
            raise ValueError("this model's auto halo is measured on the image: see run_halo")
        return pixels
    return round_up(int(halo), model.size_multiple)


def run_halo(
    model, image, lay: SliceLayout, options: SegmentOptions, *, levels=None, fallback=True
):
    """``(halo in pixels, notice or None)``: the halo a run with ``options`` plans its tiles
    with, once, before the first tile. "auto" is the model's stored halo, or measured on
    probes of ``image`` (:data:`~napari_tessera.halo.AUTO_HALOS`); when measuring runs out of
    memory (and ``fallback``), the exact halo and a :class:`Notice` saying so."""
    from .halo import AUTO_HALOS, read_probes

    if options.halo != "auto" or model.config.padding == "valid":
        return resolve_halo(model, options.halo), None
    dev = resolve_device(options.device)
    try:
        probe = lambda: read_probes(model, image, lay, levels)  # noqa: E731
        return AUTO_HALOS.pixels(model, probe, device=dev), None
    except Exception as err:
        if not (fallback and is_out_of_memory(err)):
            raise
    release_device_memory(dev)  # outside the handler: the probe's tensors are gone by now
    # the exact halo is always right, and the tiles may still fit where the probes did not
    notice = Notice("out of memory while measuring the halo: using the exact halo")
    return resolve_halo(model, "exact"), notice


def _gaussian_weight(shape: tuple[int, int], sigma_scale: float = 0.125) -> np.ndarray:
    """Separable Gaussian importance map over a tile (as in MONAI's "gaussian" blending)."""
    axes = []
    for n in shape:
        c = (n - 1) / 2
        sigma = max(n * sigma_scale, 1e-3)
        axes.append(np.exp(-0.5 * ((np.arange(n) - c) / sigma) ** 2))
    w = np.outer(*axes).astype(np.float32)
    return np.maximum(w, 1e-3 * w.max())


def prepare(model, lay: SliceLayout, options: SegmentOptions, halo: int) -> InferenceSettings:
    """Check the settings against the model and image and plan the tiles with ``halo``
    pixels (from :func:`run_halo`; 0 to check the settings before it)."""
    check_channels(model, lay)
    dev = resolve_device(options.device)
    dtype = PRECISIONS[options.precision]
    tile_size = options.tile_size
    if dtype == torch.float16 and dev.type == "cpu":
        raise InputError("fp16 is not supported on the CPU; use fp32 or bf16")
    h = resolve_halo(model, halo)
    limit = getattr(model, "tile_limit", None)  # a model from another tool with a fixed size
    if tile_size is None:
        tile_size = DEFAULT_CORE + 2 * h if model.config.padding == "same" else 572
        tile_size = min(tile_size, limit or tile_size)
    elif limit is not None and max(np.atleast_1d(tile_size)) > limit:
        raise InputError(f"this model takes tiles of at most {limit} px, got tile size {tile_size}")
    plan = plan_tiles(lay.yx, tile_size, multiple=model.size_multiple, halo=h, model=model)
    return InferenceSettings(plan.tile_shape, h, plan, dev, dtype)


def check_channels(model, lay: SliceLayout) -> None:
    """A one-line error when the channels read from the image are not the model's number."""
    check_channel_count(model.config.in_channels, lay)


def image_layout(model, image, axes: str, channels=None) -> SliceLayout:
    """The layout of ``image`` for ``model``. ``channels`` picks the image channels read
    (:func:`~napari_tessera.axes.parse_channels`); None reads all, unless the image has another
    number of channels than the model reads and the model stores the channels it was trained
    on: then those."""
    shape = np.shape(image)
    if channels is None:
        stored = (getattr(model, "metadata", None) or {}).get("channels")
        if stored is not None and layout(shape, axes).channels != model.config.in_channels:
            channels = stored
    return layout(shape, axes, channels)


MIN_FALLBACK_CORE = 64  # kept pixels per tile side below which smaller tiles stop helping


@dataclass(frozen=True)
class _Attempt:
    batch_size: int
    plan: TilePlan
    device: torch.device
    dtype: torch.dtype


def next_fallback(attempt: _Attempt, *, lay, model, halo: int) -> tuple[_Attempt, str] | None:
    """The next, smaller way to run after an out-of-memory error, and what to tell the user.

    Order: halve the batch; then halve the tiles (exact halos keep the result the same); then
    the CPU in fp32. None when nothing smaller is left.
    """
    if attempt.batch_size > 1:
        b = attempt.batch_size // 2
        return _replace(attempt, batch_size=b), f"retrying with batch size {b}"
    cores = (attempt.plan.y.core, attempt.plan.x.core)
    if max(cores) > MIN_FALLBACK_CORE:
        tile = tuple(
            t - c + max(round_up(c // 2, model.size_multiple), min(c, MIN_FALLBACK_CORE))
            for t, c in zip(attempt.plan.tile_shape, cores)
        )
        try:
            plan = plan_tiles(lay.yx, tile, multiple=model.size_multiple, halo=halo, model=model)
        except InputError:
            plan = None
        if plan is not None and plan.n_tiles > attempt.plan.n_tiles:
            ty, tx = plan.tile_shape
            return _replace(attempt, plan=plan), f"retrying with {ty}x{tx} tiles"
    if attempt.device.type != "cpu":
        cpu = torch.device("cpu")
        return _replace(attempt, device=cpu, dtype=torch.float32), "retrying on the CPU (fp32)"
    return None


def _replace(attempt: _Attempt, **changes) -> _Attempt:
    from dataclasses import replace

    return replace(attempt, **changes)


def iter_slice_predictions(
    model,
    image,
    *,
    axes: str = "YX",
    options: SegmentOptions,
    slices: list[int] | None = None,
    fast: bool = True,
    out_of_memory_fallback: bool = True,
    levels: list[tuple[float, float]] | None = None,
) -> Generator[Progress | SliceResult | Notice, None, None]:
    """Yield :class:`Progress` after every batch and a :class:`SliceResult` per finished slice.

    ``options``: the tiling, device and channel settings (see :func:`predict_tiled`);
    ``slices`` restricts the work to some flat slice indices (e.g. the slice on screen);
    ``levels`` fixes the intensity levels (see
    :func:`~napari_tessera.normalize.normalize_slice`). Stop early by closing the generator.
    The model passed in is not changed or moved (with ``fast=False`` it is moved to the
    device).

    When the device runs out of memory the unfinished slices are redone with a smaller batch,
    then smaller tiles, then on the CPU (see :func:`next_fallback`); each step is announced by
    a :class:`Notice`. With an exact halo the result is the same as an unconstrained run.
    """
    lay = image_layout(model, image, axes, options.channels)
    check_dtype(image.dtype)
    prepare(model, lay, options, 0)  # the settings first, before the network runs
    halo, notice = run_halo(
        model, image, lay, options, levels=levels, fallback=out_of_memory_fallback
    )
    if notice is not None:
        yield notice
    st = prepare(model, lay, options, halo)
    attempt = _Attempt(options.batch_size, st.plan, st.device, st.dtype)
    blend = options.blend
    remaining = list(range(lay.n_slices)) if slices is None else list(slices)
    finished_tiles = 0  # tiles of slices already handed out
    was_training = model.training
    try:
        while True:
            failed = None
            run = _run_slices(
                model, image, lay, remaining, attempt, blend, finished_tiles, fast, levels
            )
            try:
                for event in run:
                    if isinstance(event, SliceResult):
                        remaining.remove(event.index)
                        finished_tiles += attempt.plan.n_tiles
                    yield event
                return
            except Exception as err:
                if not (out_of_memory_fallback and is_out_of_memory(err)):
                    raise
                failed = attempt.device
            finally:
                run.close()
            del run
            release_device_memory(failed)
            step = next_fallback(attempt, lay=lay, model=model, halo=st.halo)
            if step is None:
                raise InputError(
                    "out of memory even with batch size 1, the smallest tiles and the CPU"
                )
            attempt, what = step
            yield Notice(f"{failed.type.upper()} out of memory: {what}")
    finally:
        model.train(was_training)


def _run_slices(model, image, lay, todo, attempt: _Attempt, blend, finished_tiles, fast, levels):
    """One pass over the slices ``todo`` with fixed settings (see iter_slice_predictions)."""
    from .model.fast import inference_copy

    plan = attempt.plan
    n_classes = model.config.n_classes
    norm = model.config.normalization
    H, W = lay.yx
    weight = _gaussian_weight(plan.tile_shape) if blend == "gaussian" else None

    def tiles() -> Iterator[tuple[int, object, np.ndarray]]:
        for s in list(todo):
            where = f"slice {s}" if lay.n_slices > 1 else "image"
            data = normalize_slice(lay.slice_view(image, s), norm, where=where, levels=levels)
            for t in plan.tiles():
                yield s, t, plan.read(data, t)

    if fast:
        net = inference_copy(model, attempt.device)
        layout_ = torch.channels_last
    else:
        net = model.eval().to(attempt.device)
        layout_ = torch.contiguous_format
    total = finished_tiles + len(todo) * plan.n_tiles
    done = finished_tiles
    acc: dict[int, list] = {}  # slice -> [sum, weight sum or None, tiles left]
    batch: list[tuple[int, object, np.ndarray]] = []
    stream = tiles()
    try:
        while True:
            batch.clear()
            for item in stream:
                batch.append(item)
                if len(batch) == attempt.batch_size:
                    break
            if not batch:
                break
            x = torch.from_numpy(np.stack([b[2] for b in batch])).to(attempt.device)
            x = x.contiguous(memory_format=layout_)
            with torch.inference_mode(), autocast(attempt.device, attempt.dtype):
                probs = probabilities(net(x)).cpu().numpy()
            del x
            for (s, t, _), p in zip(batch, probs):
                if s not in acc:
                    out = np.zeros((n_classes, H, W), np.float32)
                    wsum = np.zeros((H, W), np.float32) if weight is not None else None
                    acc[s] = [out, wsum, plan.n_tiles]
                entry = acc[s]
                if weight is None:
                    entry[0][(slice(None), *t.dst)] = p[(slice(None), *t.src)]
                else:
                    _blend_tile(entry[0], entry[1], p, weight, plan, t)
                entry[2] -= 1
                if entry[2] == 0:
                    out, wsum, _ = acc.pop(s)
                    if wsum is not None:
                        out /= wsum
                    yield SliceResult(s, out)
            done += len(batch)
            yield Progress(done, total)
    finally:
        stream.close()


def _blend_tile(out, wsum, p, weight, plan: TilePlan, t) -> None:
    """Add a tile's whole output (clipped to the image), Gaussian-weighted."""
    oy = t.in_y + plan.y.out_offset
    ox = t.in_x + plan.x.out_offset
    h, w = p.shape[-2:]
    H, W = out.shape[-2:]
    y0, y1 = max(oy, 0), min(oy + h, H)
    x0, x1 = max(ox, 0), min(ox + w, W)
    src = (slice(y0 - oy, y1 - oy), slice(x0 - ox, x1 - ox))
    wt = weight[src]
    out[:, y0:y1, x0:x1] += p[(slice(None), *src)] * wt
    wsum[y0:y1, x0:x1] += wt


def iter_predict_tiled(
    model,
    image,
    *,
    axes: str = "YX",
    options: SegmentOptions | None = None,
    fast: bool = True,
    out_of_memory_fallback: bool = True,
    **settings,
):
    """Generator form of :func:`predict_tiled`: yields :class:`Progress`, returns the array.
    ``out_of_memory_fallback=False``: an out-of-memory error is raised, not retried."""
    options = SegmentOptions.build(options, **settings)
    lay = image_layout(model, image, axes, options.channels)
    out = np.empty((model.config.n_classes, lay.n_slices, *lay.yx), np.float32)
    run = iter_slice_predictions(
        model,
        image,
        axes=axes,
        options=options,
        fast=fast,
        out_of_memory_fallback=out_of_memory_fallback,
    )
    for event in run:
        if isinstance(event, SliceResult):
            out[:, event.index] = event.probabilities
        else:
            yield event
    return out.reshape((model.config.n_classes, *lay.out_shape))


def run_to_end(gen, on_event=None):
    """Run a job (a generator of progress events) to its end, handing each event to
    ``on_event``; returns the job's return value. The one loop that drives the jobs."""
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        if on_event is not None:
            on_event(event)


def drain(gen):
    """Run a job to its end and return its return value; notices become warnings."""
    import warnings

    def warn(event) -> None:
        if isinstance(event, Notice):
            warnings.warn(event.message, RuntimeWarning, stacklevel=4)

    return run_to_end(gen, warn)


def predict_tiled(
    model,
    image,
    *,
    axes: str = "YX",
    options: SegmentOptions | None = None,
    fast: bool = True,
    **settings,
) -> np.ndarray:
    """Class probabilities of every pixel by mirrored overlap-tile inference.

    The settings are a :class:`~napari_tessera.options.SegmentOptions` (``options``), or
    its fields as keyword arguments (they change ``options`` when both are given):

    image: array-like with ``axes`` (letters from T, Z, C, Y, X; "S" is read as C), e.g.
        "YX", "ZYX", "CYX", "ZCYX", "YXC". Every 2D slice is done on its own.
    tile_size: network input per tile (int or (ty, tx)); default: 1024 kept pixels plus halos.
        Tiles shrink to fit small images.
    halo: context around each tile's kept core. "auto" (default): what this network needs
        for tile seams to change 99.9% of class probabilities by at most 0.01, measured on the image
        (or stored with a model trained here; see :mod:`napari_tessera.halo`): not exact, but
        labels agree with one whole-image pass on all but a few pixels in a million in the
        benchmarks. "exact": the network's whole receptive field: the result does not depend
        on the tile size and equals one whole-image pass. A number of pixels: as given
        (approximate). Rounded up to the 2**depth grid. Ignored by "valid"-padding networks
        with transposed convolutions, which are exact by construction.
    blend: "crop" keeps each tile's centre (the paper); "gaussian" averages overlapping tile
        outputs with Gaussian weights (not exact).
    batch_size: tiles per forward pass; the device holds one batch at a time.
    device: "auto", "cpu", "cuda", "cuda:N" or "mps".
    precision: "fp32", "bf16" or "fp16" (autocast; fp16 on GPUs only).
    fast: run an inference copy of the model with BatchNorm folded into the convolutions and
        channels-last memory (the same function up to float rounding; the model passed in is
        left untouched). False runs the model as it is.
    channels: the image channels the network reads, in order (e.g. ``(1,)`` or ``"1,0"``);
        None: all, or those a model trained here stores when the image has another number.

    Returns float32 ``(n_classes, *non-channel axes)``, e.g. ``(n_classes, Z, Y, X)`` for "ZCYX".
    A 1-class network gives sigmoid probabilities, others softmax.
    """
    return drain(
        iter_predict_tiled(model, image, axes=axes, options=options, fast=fast, **settings)
    )


def predict_whole(model, image2d: np.ndarray, *, pad: int | None = None) -> np.ndarray:
    """Reference: the network applied once to a whole ``(C, Y, X)`` (or ``(Y, X)``) slice.

    The slice is normalised, reflect-padded by ``pad`` (default: the exact halo) plus whatever
    makes each side a valid input, run in one forward pass on the CPU, and cropped back.
    """
    arr = np.asarray(image2d)
    if arr.ndim == 2:
        arr = arr[None]
    data = normalize_slice(arr, model.config.normalization)
    m = model.size_multiple
    pad = model.exact_halo() if pad is None else round_up(pad, m)
    H, W = data.shape[-2:]
    if model.config.padding == "valid":
        from .tiling import mirror_indices

        extra = resolve_halo(model, "exact")
        k = model.margin + extra + (-(model.margin + extra)) % m
        off = k - model.margin
        sy = model.valid_input_size(round_up(H, m) + off + extra)
        sx = model.valid_input_size(round_up(W, m) + off + extra)
        iy = mirror_indices(-k, -k + sy, H)
        ix = mirror_indices(-k, -k + sx, W)
        x = data[:, iy][:, :, ix]
    else:
        ph = (pad, pad + round_up(H, m) - H)
        pw = (pad, pad + round_up(W, m) - W)
        x = np.pad(data, ((0, 0), ph, pw), mode="reflect") if pad or ph[1] or pw[1] else data
        off = pad
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            dev = next(model.parameters()).device
            p = probabilities(model(torch.from_numpy(np.ascontiguousarray(x))[None].to(dev)))
    finally:
        model.train(was_training)
    return p[0, :, off : off + H, off : off + W].cpu().numpy()


def iter_segment(
    model,
    image,
    *,
    axes: str = "YX",
    options: SegmentOptions | None = None,
    probabilities_out: np.ndarray | None = None,
    **settings,
):
    """Generator form of :func:`segment`: yields :class:`Progress` (and :class:`Notice`),
    returns the labels.

    ``probabilities_out``, if given, is filled with the class probabilities
    ``(n_classes, *lead, Y, X)`` as slices finish (e.g. a memory map or zarr array); they are
    the network's, before any edge offset.
    """
    from .postprocess import classes_from_probabilities, labels_dtype, link_through_z

    options = SegmentOptions.build(options, **settings)
    rule = split_rule(model, options)
    lay = image_layout(model, image, axes, options.channels)
    link = links_through_z(options, lay)
    # linked: the class maps wait for the whole stack (one byte a pixel)
    labels = np.zeros((lay.n_slices, *lay.yx), labels_dtype(options.instances and not link))
    next_id = 1
    for event in iter_slice_predictions(model, image, axes=axes, options=options):
        if not isinstance(event, SliceResult):
            yield event
            continue
        prob = event.probabilities
        if probabilities_out is not None:
            idx = np.unravel_index(event.index, lay.lead_shape) if lay.lead_shape else ()
            probabilities_out[(slice(None), *idx)] = prob
        classes = classes_from_probabilities(prob)
        if link:
            labels[event.index] = classes
        else:
            labels[event.index], next_id = rule.labels(classes, next_id)
    if link:
        labels = link_through_z(labels, lay.lead_axes, lay.lead_shape, rule, options.spacing)
    return labels.reshape(lay.out_shape)


def links_through_z(options: SegmentOptions, lay: SliceLayout) -> bool:
    """Whether a run's objects are 3D: instances of an image with more than one Z slice."""
    if not (options.instances and options.link_z and "Z" in lay.lead_axes):
        return False
    return (
        lay.lead_shape[lay.lead_axes.index("Z")] > 1
    )  # typed by labels_dtype: the same in every output


def segment(
    model, image, *, axes: str = "YX", options: SegmentOptions | None = None, **settings
) -> np.ndarray:
    """Labels for every pixel: the class (0 = background) or, with ``instances=True``, one id
    per object (touching objects split by a distance-transform watershed, ids unique across the
    stack). Shaped like the image without its channel axis; ``uint8`` classes or ``uint32`` ids
    (:func:`~napari_tessera.postprocess.labels_dtype`). Settings as in
    :func:`predict_tiled` (``options`` or keyword arguments), plus ``min_size`` (smallest
    object kept, in pixels) and ``edge_offset`` (pixels to move object edges by before objects
    are split, positive shrinks) and ``seed_depth`` (how deep a neck must be before touching
    objects are cut apart); None: the values stored with the model, calibrated when it was
    trained, else 0 (8 px for ``min_size``). See :class:`napari_tessera.postprocess.SplitRule`.

    Stacks go slice by slice: only the slices the current batch touches have probabilities in
    memory (one or two unless a batch holds more tiles than a slice has).
    """
    return drain(iter_segment(model, image, axes=axes, options=options, **settings))


def split_rule(model, options: SegmentOptions):
    """How this run turns classes into labels: the options' rule, or the model's own."""
    from .postprocess import resolve_split

    return resolve_split(
        model,
        instances=options.instances,
        edge_offset=options.edge_offset,
        seed_depth=options.seed_depth,
        min_size=options.min_size,
    )
