"""The ``tessera`` command line.

Expected problems (bad files, wrong axes, bad numbers) end with one line on stderr and exit
code 2; an interruption (Ctrl-C, SIGTERM) ends with exit code 130. Outputs are written to a
temporary file and renamed, so nothing half-written is ever left under the final name.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

import numpy as np

from .errors import TesseraError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error on one line (exit code 2)."""

    def error(self, message: str):  # noqa: D401
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _positive_float(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (0 < value < math.inf):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def _tile_size(text: str) -> int | tuple[int, int]:
    parts = text.lower().split("x") if "x" in text.lower() else [text]
    if len(parts) > 2:
        raise argparse.ArgumentTypeError(f"expected N or NxM, got {text!r}")
    sizes = [_positive_int(p) for p in parts]
    return sizes[0] if len(sizes) == 1 else (sizes[0], sizes[1])


def _channels(text: str) -> tuple[int, ...] | None:
    from .axes import parse_channels
    from .errors import InputError

    try:
        return parse_channels(text)
    except InputError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


CHANNELS_HELP = (
    "image channels the network reads, in order, from 0: e.g. 1 (green of an RGB image) or 1,0 "
    "(cytoplasm, then nuclei); default: all"
)


def _edge_offset(text: str) -> float:
    from .errors import InputError
    from .postprocess import check_edge_offset

    try:
        return check_edge_offset(float(text), "the edge offset")
    except ValueError as err:
        msg = str(err) if isinstance(err, InputError) else f"expected pixels, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None


def _halo(text: str) -> str | int:
    if text.lower() in ("auto", "exact"):
        return text.lower()
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'auto', 'exact' or pixels, got {text!r}"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def _say_halo(model, halo) -> None:
    if halo == "auto":
        from .halo import describe_auto

        line = describe_auto(model)
        if line:
            _warn(line)


def _warn(msg: str) -> None:
    print(f"tessera: {msg}", file=sys.stderr)


class _Progress:
    """A progress bar on stderr (tqdm), silent with --quiet."""

    def __init__(self, quiet: bool, desc: str, unit: str):
        self.bar = None
        self.quiet, self.desc, self.unit = quiet, desc, unit

    def update(self, done: int, total: int, **postfix) -> None:
        if self.quiet:
            return
        if self.bar is None:  # created on the first update: errors before it stay one line
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, desc=self.desc, unit=self.unit, file=sys.stderr, dynamic_ncols=True
            )
        self.bar.total = total
        self.bar.n = done
        if postfix:
            self.bar.set_postfix(postfix, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _check_output(path: Path, *inputs: Path) -> None:
    from .errors import InputError

    if not path.parent.is_dir():
        raise InputError(f"output folder does not exist: {path.parent}")
    if path.is_dir():
        raise InputError(f"output is a folder, not a file: {path}")
    for inp in inputs:
        if inp.exists() and path.exists() and path.resolve() == inp.resolve():
            raise InputError(f"output {path} would overwrite an input")


def _resolve_axes(
    arr: np.ndarray, axes: str | None, from_file: str | None, in_channels: int, quiet: bool
) -> tuple[str, str | None]:
    """The axes to use and a note saying where they came from (None: nothing to say).

    The note is printed once the work has started, so an error stays a single line (error
    messages about the layout name the axes themselves).
    """
    from .axes import guess_axes, layout

    if axes:
        layout(arr.shape, axes)  # validates
        return axes.upper(), None
    if from_file:
        note = f"axes {from_file} (from the TIFF metadata); pass --axes to override"
        return from_file, None if quiet else note
    guessed = guess_axes(arr.shape, in_channels)
    # a guess is always stated, --quiet or not: it may be wrong
    return guessed, f"axes guessed as {guessed} from shape {arr.shape}; pass --axes to override"


def _load_model_arg(path: str | None, device: str):
    from .errors import InputError
    from .io import load_model
    from .models import default_model_path

    if path is None:
        path = default_model_path()
        if path is None:
            raise InputError("no default model is installed; pass --model MODEL.safetensors")
    return load_model(path, device="cpu")


def cmd_segment(args: argparse.Namespace) -> int:
    from .inference import iter_segment
    from .io import read_image, write_tiff

    inp, out = Path(args.input), Path(args.output)
    from .chunked import is_zarr

    if is_zarr(out) or args.scheduler:
        return _segment_chunked(args, inp, out)
    _check_output(out, inp)
    prob_path = Path(args.probabilities) if args.probabilities else None
    if prob_path is not None:
        _check_output(prob_path, inp)
        if prob_path.resolve() == out.resolve():
            from .errors import InputError

            raise InputError("--probabilities must name another file than -o")
    model = _load_model_arg(args.model, args.device)
    arr, file_axes = read_image(inp)
    axes, note = _resolve_axes(arr, args.axes, file_axes, model.config.in_channels, args.quiet)
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        from .errors import InputError

        raise InputError(f"{inp.name} contains NaN or infinite pixels")
    from .inference import image_layout
    from .normalize import check_dtype

    lay = image_layout(model, arr, axes, args.channels)
    check_dtype(arr.dtype)
    notes = [note] if note else []
    if arr.min() == arr.max():  # said even with --quiet: the labels carry no information
        notes.append(
            f"{inp.name} is constant (every pixel is {arr.flat[0]}): with no contrast, every "
            "pixel gets the same label"
        )
    probs = None
    if prob_path is not None:
        probs = np.zeros((model.config.n_classes, *lay.out_shape), np.float32)
    t0 = time.perf_counter()
    bar = _Progress(args.quiet, "segment", "tile")
    gen = iter_segment(
        model,
        arr,
        axes=axes,
        instances=args.instances,
        min_size=args.min_size,
        edge_offset=args.edge_offset,
        probabilities_out=probs,
        channels=args.channels,
        tile_size=args.tile_size,
        halo=args.halo,
        blend=args.blend,
        batch_size=args.batch_size,
        device=args.device,
        precision=args.precision,
    )
    labels = _drive(gen, bar, notes)
    out_axes = lay.out_axes
    write_tiff(out, labels, axes=out_axes)
    if prob_path is not None:
        write_tiff(prob_path, probs, axes="C" + out_axes)
    n = (
        f"{len(np.unique(labels)) - (1 if (labels == 0).any() else 0)} objects"
        if args.instances
        else f"classes {sorted(int(v) for v in np.unique(labels))}"
    )
    if not args.quiet:
        _warn(
            f"wrote {out} ({'x'.join(map(str, labels.shape))} {out_axes}, {labels.dtype}, {n}) "
            f"in {time.perf_counter() - t0:.1f} s"
        )
        _say_halo(model, args.halo)
    return 0


def _drive(gen, bar: _Progress, notes: list[str]):
    """Run a segmentation generator to its end, showing progress and notices; returns its value.

    ``notes`` are printed once the work has started (so an error before that stays one line).
    """
    from .inference import Notice, Progress

    try:
        while True:
            try:
                event = next(gen)
            except StopIteration as stop:
                result = stop.value
                break
            for text in notes:
                _warn(text)
            notes = []
            if isinstance(event, Progress):
                bar.update(event.done, event.total)
            elif isinstance(event, Notice):
                _warn(event.message)
    finally:
        bar.close()
    for text in notes:  # nothing was yielded (e.g. nothing left to do): say them now
        _warn(text)
    return result


def _segment_chunked(args: argparse.Namespace, inp: Path, out: Path) -> int:
    """``tessera segment`` into a zarr array, slice by slice, here or on a dask cluster."""
    from .chunked import is_zarr, iter_segment_to_zarr, open_image
    from .errors import InputError

    if not is_zarr(out):
        raise InputError("--scheduler writes zarr: give an output ending in .zarr")
    if args.probabilities and not is_zarr(args.probabilities):
        raise InputError("with a .zarr output, --probabilities must name a .zarr folder too")
    if not out.parent.is_dir():
        raise InputError(f"output folder does not exist: {out.parent}")
    if out.exists() and inp.exists() and out.resolve() == inp.resolve():
        raise InputError(f"output {out} would overwrite an input")
    model = _load_model_arg(args.model, args.device)
    arr, file_axes = open_image(inp)
    axes, note = _resolve_axes(arr, args.axes, file_axes, model.config.in_channels, args.quiet)
    t0 = time.perf_counter()
    from .chunked import choose_block
    from .inference import image_layout

    lay = image_layout(model, arr, axes, args.channels)
    blocks = choose_block(args.block_size, lay, model, args.halo, args.instances)
    unit = "block" if blocks else "slice" if args.scheduler else "tile"
    bar = _Progress(args.quiet, "segment", unit)
    gen = iter_segment_to_zarr(
        model,
        str(inp) if args.scheduler else arr,
        out,
        axes=axes,
        instances=args.instances,
        min_size=args.min_size,
        edge_offset=args.edge_offset,
        channels=args.channels,
        resume=not args.restart,
        scheduler=args.scheduler,
        workers=args.workers,
        block_size=args.block_size,
        probabilities=args.probabilities,
        tile_size=args.tile_size,
        halo=args.halo,
        blend=args.blend,
        batch_size=args.batch_size,
        device=args.device,
        precision=args.precision,
    )
    path = _drive(gen, bar, [note] if note else [])
    if not args.quiet:
        shape = "x".join(map(str, arr.shape))
        _warn(f"wrote {path} (labels of a {shape} image) in {time.perf_counter() - t0:.1f} s")
        _say_halo(model, args.halo)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """``tessera train``; under torchrun, one of several processes (rank 0 writes)."""
    from .training import distributed as ddp

    ctx = ddp.from_env()
    if ctx is not None and not ctx.is_main:
        args.quiet = True
    try:
        return _train(args, ctx)
    finally:
        if ctx is not None:
            ddp.teardown()


def _train(args: argparse.Namespace, ctx) -> int:
    import threading

    from .errors import InputError
    from .io import load_model, read_image, save_model
    from .models import default_model_path
    from .training import TrainConfig, TrainUpdate, iter_train

    inp, lab_path, out = Path(args.image), Path(args.labels_file), Path(args.output)
    _check_output(out, inp, lab_path)
    ckpt = (
        Path(args.checkpoint) if args.checkpoint else out.with_name(out.stem + ".ckpt.safetensors")
    )
    _check_output(ckpt, inp, lab_path)
    cfg = TrainConfig(
        mode=args.labels,
        steps=args.steps,
        time_limit=args.time_limit,
        batch_size=args.batch_size,
        patch_size=args.patch_size,
        lr=args.lr,
        val_fraction=args.val_fraction,
        seed=args.seed,
        device=args.device,
        base_channels=args.base_channels,
        depth=args.depth,
        checkpoint=str(ckpt),
        calibrate_edges=args.calibrate_edges,
        **({"surround": 0.0} if args.strokes else {}),
        **({} if args.entropy is None else {"entropy": args.entropy}),
    )
    model = None
    if args.from_model:
        src = default_model_path() if args.from_model == "default" else args.from_model
        if src is None:
            raise InputError("no default model is installed to fine-tune")
        model = load_model(src)
    image, image_axes = read_image(inp)
    labels, _ = read_image(lab_path)
    axes, note = _resolve_axes(
        image,
        args.axes,
        image_axes,
        model.config.in_channels if model is not None else 1,
        args.quiet,
    )
    if ctx is not None and not ctx.is_main:
        note = None  # said once, by rank 0
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        raise InputError(f"{inp.name} contains NaN or infinite pixels")
    stop = threading.Event()
    first_signal = [0.0]

    def request_stop(signum, frame):  # first Ctrl-C: finish the step, keep the best model
        if stop.is_set():
            # under torchrun a stop can arrive twice at once (from the scheduler, e.g. SLURM,
            # and forwarded by torchrun): only a later one aborts
            if ctx is None or time.monotonic() - first_signal[0] > 5:
                raise KeyboardInterrupt
            return
        stop.set()  # only the flag: printing here could re-enter a write the signal interrupted
        first_signal[0] = time.monotonic()

    told = [False]

    def announce() -> None:  # the first stop request, said once, outside the signal handler
        if stop.is_set() and not told[0]:
            told[0] = True
            if ctx is None or ctx.is_main:
                _warn("stopping after this step (press Ctrl-C again to abort without saving)")

    old_int = signal.signal(signal.SIGINT, request_stop)
    old_term = signal.signal(signal.SIGTERM, request_stop)
    bar = _Progress(args.quiet, "train", "step")
    gen = iter_train(
        image,
        labels,
        axes=axes,
        config=cfg,
        model=model,
        resume=args.resume,
        stop=stop,
        dist_ctx=ctx,
    )
    last_val = None
    try:
        while True:
            try:
                u: TrainUpdate = next(gen)
            except StopIteration as done:
                announce()
                result = done.value
                break
            announce()
            if note:
                _warn(note)
                note = None
            if u.notice:
                _warn(u.notice)
            if u.val_iou is not None:
                last_val = u.val_iou
            post = {"loss": f"{u.loss:.3f}"}
            if last_val is not None:
                post["val IoU"] = f"{last_val:.3f}"
            bar.update(u.step, u.total_steps, **post)
    finally:
        bar.close()
        if ctx is None:
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, old_term)
    try:  # under torchrun the stop handler stays until every rank is done
        if note:
            _warn(note)
        if ctx is None or ctx.is_main:  # rank 0 writes the model
            save_model(result.model, out)
            if not args.quiet:
                iou = (
                    f", kept step {result.best_step} (validation IoU {result.best_val_iou:.3f})"
                    if (result.best_val_iou is not None)
                    else " (no validation: too few annotated regions)"
                )
                _warn(
                    f"wrote {out} after {result.steps} steps in {result.elapsed:.0f} s "
                    f"(stopped: {result.stopped}){iou}; resume with --resume {ckpt}"
                )
                if result.edges is not None:
                    _warn(result.edges.describe())
                if result.stopped == "time":
                    _warn(
                        f"the time limit cut the run at step {result.steps} of "
                        f"{result.planned_steps}: on another machine the same command gives "
                        "another model (lower --steps to fit, or raise --time-limit)"
                    )
        if ctx is not None:
            from .training import distributed as ddp

            ddp.teardown(together=True)  # no rank leaves while rank 0 still writes
    finally:
        if ctx is not None:
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, old_term)
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from .io import write_tiff
    from .synthetic import nuclei_2d, nuclei_stack

    out = Path(args.output)
    _check_output(out)
    if args.depth > 1:
        s = nuclei_stack((args.depth, args.size, args.size), seed=args.seed)
        axes = "ZYX"
    else:
        s = nuclei_2d((args.size, args.size), seed=args.seed)
        axes = "YX"
    write_tiff(out, s.image, axes=axes)
    if args.labels:
        lab = Path(args.labels)
        _check_output(lab)
        write_tiff(lab, s.labels, axes=axes)
    if not args.quiet:
        _warn(
            f"wrote {out} ({'x'.join(map(str, s.image.shape))} {axes}, "
            f"{int(s.labels.max())} nuclei)"
        )
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .convert import convert_weights
    from .io import read_model_info

    src, out = Path(args.input), Path(args.output)
    _check_output(out, src)
    convert_weights(
        src,
        out,
        padding=args.padding,
        normalization=tuple(args.normalization) if args.normalization else None,
        class_names=args.class_names,
    )
    if not args.quiet:
        cfg, meta = read_model_info(out)
        _warn(
            f"wrote {out}: U-Net depth {cfg.depth}, width {cfg.base_channels}, "
            f"{cfg.in_channels} channel(s) in, {cfg.n_classes} classes, {cfg.upsampling} "
            f"upsampling, {cfg.padding} padding ({meta['provenance']['layout']} layout)"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="tessera", description="U-Net segmentation of microscopy images.")
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser(
        "segment",
        help="segment an image (TIFF or .npy) with a U-Net",
        description=(
            "Segment every 2D slice of an image with mirrored overlap-tile inference and write "
            "the labels as a TIFF or a zarr array: per-pixel classes (0 = background) or, with "
            "--instances, one id per object. A .zarr output is written slice by slice, so the "
            "image need not fit in memory; an interrupted run resumes where it stopped."
        ),
    )
    s.add_argument("input", help="image: .tif/.tiff, .npy, or a zarr / OME-Zarr folder (.zarr)")
    s.add_argument(
        "-o",
        "--output",
        required=True,
        help="labels to write: a TIFF, or a .zarr folder written slice by slice (larger than "
        "memory; an interrupted run resumes)",
    )
    s.add_argument("--model", help="model file (.safetensors); default: the built-in nuclei model")
    s.add_argument(
        "--axes",
        help="axes of the image, e.g. YX, ZYX, CYX, ZCYX, YXC (default: TIFF metadata or a guess)",
    )
    s.add_argument(
        "--channels",
        type=_channels,
        help=CHANNELS_HELP + ", or those a model trained here was trained on",
    )
    s.add_argument(
        "--tile-size",
        type=_tile_size,
        default=None,
        help="network input per tile, N or NxM pixels (default: 1024 kept pixels plus the halo)",
    )
    s.add_argument(
        "--halo",
        type=_halo,
        default="auto",
        help="context around each tile: 'auto' (what this model needs for tile seams to change "
        "99.9%% of probabilities by at most 0.01, measured), 'exact' (the receptive field: the "
        "same as one whole-image pass, slower) or pixels (default: auto)",
    )
    s.add_argument("--blend", choices=["crop", "gaussian"], default="crop", help="tile merging")
    s.add_argument("--batch-size", type=_positive_int, default=1, help="tiles per forward pass")
    s.add_argument(
        "--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)"
    )
    s.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    s.add_argument("--instances", action="store_true", help="one id per object instead of classes")
    s.add_argument("--min-size", type=_positive_int, default=8, help="smallest object kept (px)")
    s.add_argument(
        "--edge-offset",
        type=_edge_offset,
        metavar="PX",
        help="move object edges by PX pixels before objects are split (positive shrinks); "
        "default: the offset the model was calibrated with when it was trained, else 0",
    )
    s.add_argument(
        "--probabilities",
        metavar="PATH",
        help="also write class probabilities (a TIFF, or a .zarr folder with a .zarr output)",
    )
    s.add_argument(
        "--scheduler",
        metavar="local|ADDRESS",
        help="run slices as dask tasks: 'local' (a cluster on this machine, 127.0.0.1 only) or "
        "a dask scheduler's address; needs a .zarr output",
    )
    s.add_argument(
        "--workers", type=_positive_int, help="dask worker processes (local) or workers to wait for"
    )
    s.add_argument(
        "--block-size",
        type=_non_negative_int,
        metavar="N",
        help="with .zarr output: split each 2D plane into NxN blocks so a plane need not fit in "
        "memory (class labels only; default: automatic above 8192x8192 px; 0: never)",
    )
    s.add_argument(
        "--restart",
        action="store_true",
        help="with .zarr output: ignore the finished slices of an interrupted run",
    )
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    s.set_defaults(func=cmd_segment)

    from .training.labels import CONVENTION

    t = sub.add_parser(
        "train",
        help="train a U-Net from painted (sparse) or complete (dense) labels",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Train a U-Net on an image and its labels and write a model file for "
            "`tessera segment --model`.\n\nLabel conventions:\n"
            f"  sparse (default): {CONVENTION['sparse']}\n"
            f"  dense:            {CONVENTION['dense']}\n"
            "Slices of a stack with nothing painted are skipped. Ctrl-C stops after the "
            "current step and keeps the best model; --resume continues from the checkpoint."
        ),
    )
    t.add_argument("image", help="image file (.tif/.tiff or .npy)")
    t.add_argument("labels_file", metavar="LABELS", help="labels file, same shape as the image")
    t.add_argument("-o", "--output", required=True, help="model file to write (.safetensors)")
    t.add_argument("--labels", choices=["sparse", "dense"], default="sparse", help="convention")
    t.add_argument("--axes", help="axes of the image (default: from the TIFF, else guessed)")
    t.add_argument("--channels", type=_channels, help=CHANNELS_HELP + " (stored with the model)")
    t.add_argument(
        "--time-limit",
        type=_positive_float,
        metavar="S",
        help="stop after S seconds even if the planned steps are not done",
    )
    t.add_argument(
        "--steps",
        type=_positive_int,
        help="planned optimiser steps (default 500; the learning-rate schedule follows them, "
        "so the same command gives the same model on any machine)",
    )
    t.add_argument(
        "--from",
        dest="from_model",
        metavar="MODEL",
        help="fine-tune this model file, or 'default' for the built-in nuclei model",
    )
    t.add_argument("--resume", metavar="CHECKPOINT", help="continue an interrupted run")
    t.add_argument(
        "--checkpoint", help="checkpoint path (default: OUTPUT stem + .ckpt.safetensors)"
    )
    t.add_argument("--base-channels", type=_positive_int, default=16, help="width (from scratch)")
    t.add_argument("--depth", type=_positive_int, default=4, help="poolings (from scratch)")
    t.add_argument("--val-fraction", type=float, default=0.2, help="share held out (default 0.2)")
    t.add_argument(
        "--batch-size",
        type=_positive_int,
        help="patches per step; under torchrun the global batch, shared by the processes "
        "(default: auto)",
    )
    t.add_argument("--patch-size", type=_positive_int, help="patch side (default: auto)")
    t.add_argument("--lr", type=_positive_float, help="peak learning rate (default: auto)")
    t.add_argument(
        "--entropy",
        type=float,
        metavar="W",
        help="weight of the term that asks the network to be decided about unpainted pixels "
        "without giving them a class, e.g. 0.3 (default 0: off)",
    )
    t.add_argument(
        "--no-edge-calibration",
        dest="calibrate_edges",
        action="store_false",
        help="do not store a split rule calibrated on the painted objects (by default the "
        "trained model is run on the painted slices, and the edge offset and seed depth at "
        "which its objects best match the whole painted objects are stored for `tessera "
        "segment`)",
    )
    t.add_argument(
        "--strokes",
        action="store_true",
        help="objects were painted as strokes inside them, not whole: the pixels around "
        "painted objects stay not annotated (by default a 2-px band around each painted "
        "object counts as background)",
    )
    t.add_argument(
        "--seed", type=_non_negative_int, default=0, help="random seed (CPU runs repeat exactly)"
    )
    t.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    t.add_argument("-q", "--quiet", action="store_true")
    t.set_defaults(func=cmd_train)

    c = sub.add_parser(
        "convert-weights",
        help="convert a trusted PyTorch .pt/.pth U-Net state_dict to a .safetensors model",
        description=(
            "Convert a PyTorch state_dict of a U-Net (Tessera's layout or the PyTorch-UNet "
            "layout) into a Tessera model file. The input is read with "
            "torch.load(weights_only=True): only tensors and plain containers are rebuilt and "
            "any other Python object is refused, so a whole pickled model is rejected, not run. "
            "This still trusts PyTorch's restricted unpickler: convert only files from a source "
            "you trust. The architecture is read from the tensor shapes; give what shapes "
            "cannot tell (padding, normalisation, class names)."
        ),
    )
    c.add_argument("input", help="trusted .pt/.pth file holding a state_dict")
    c.add_argument("-o", "--output", required=True, help="model file to write (.safetensors)")
    c.add_argument("--padding", choices=["same", "valid"], default="same")
    c.add_argument(
        "--normalization",
        nargs=2,
        type=float,
        metavar=("LOW", "HIGH"),
        help="percentiles the network's inputs are scaled between (default 1 99.8)",
    )
    c.add_argument("--class-names", nargs="+", metavar="NAME", help="one name per output class")
    c.add_argument("-q", "--quiet", action="store_true")
    c.set_defaults(func=cmd_convert)

    m = sub.add_parser(
        "sample",
        help="write a synthetic fluorescence-nuclei image (and its labels)",
        description="Write a deterministic synthetic nuclei image as a TIFF, for trying Tessera.",
    )
    m.add_argument("-o", "--output", required=True, help="image TIFF to write")
    m.add_argument("--labels", help="also write the ground-truth instance labels here")
    m.add_argument("--size", type=_positive_int, default=512, help="side length in pixels")
    m.add_argument("--depth", type=_positive_int, default=1, help="Z slices (1 = a 2D image)")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("-q", "--quiet", action="store_true")
    m.set_defaults(func=cmd_sample)
    return p


def _version() -> str:
    from . import __version__

    return f"tessera {__version__}"


def _raise_interrupt(signum, frame):  # SIGTERM behaves like Ctrl-C: clean up, exit 130
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:  # not the main thread
        previous = None
    try:
        return args.func(args)
    except TesseraError as err:
        print(f"tessera {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        out = getattr(args, "output", None)
        partial = Path(f"{out}.partial") if out else None
        if partial is not None and partial.is_dir():  # zarr output: finished slices are kept
            what = f"finished slices kept in {partial}; run the same command to resume"
        else:
            what = "no partial output left behind"
        print(f"tessera {args.command}: interrupted; {what}", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
