"""``tessera train``: a model from one or several painted images."""

from __future__ import annotations

import argparse
import signal
import time
from pathlib import Path

import numpy as np

from ._common import (
    CHANNELS_HELP,
    Progress,
    arg_channels,
    arg_non_negative_int,
    arg_positive_float,
    arg_positive_int,
    check_output,
    resolve_axes,
    warn,
)

AUTO = "auto"  # --from's default: the built-in model where it fits the painting, else new


def cmd_train(args: argparse.Namespace) -> int:
    """``tessera train``; under torchrun, one of several processes (rank 0 writes)."""
    from ..training import distributed as ddp

    ctx = ddp.from_env()
    if ctx is not None and not ctx.is_main:
        args.quiet = True
    try:
        return _train(args, ctx)
    finally:
        if ctx is not None:
            ddp.teardown()


def _train(args: argparse.Namespace, ctx) -> int:
    from ..training import TrainConfig, iter_train

    pairs = _train_pairs(args)
    inputs = [p for pair in pairs for p in pair]
    out = Path(args.output)
    check_output(out, *inputs)
    ckpt = (
        Path(args.checkpoint) if args.checkpoint else out.with_name(out.stem + ".ckpt.safetensors")
    )
    check_output(ckpt, *inputs)
    cfg = TrainConfig(
        mode=args.label_mode,
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
        channels=args.channels,
        start_if_fits=args.from_model == AUTO,
        **({"surround": 0.0} if args.strokes else {}),
    )
    model = _start(args)
    reader = None if cfg.start_if_fits else model  # auto reads the images as a new network does
    items, notes = _read_training_set(pairs, args.axes, reader, args.channels, args.quiet)
    note = "; ".join(notes) or None
    if ctx is not None and not ctx.is_main:
        note = None  # said once, by rank 0
    with _StopOnSignal(ctx) as stop:
        gen = iter_train(
            items, config=cfg, model=model, resume=args.resume, stop=stop.event, dist_ctx=ctx
        )
        result = _drive_training(gen, Progress(args.quiet, "train", "step"), note, stop)
        if ctx is None or ctx.is_main:  # rank 0 writes the model
            # the images it learnt from: `tessera export` takes its test input from them
            result.model.metadata["training_images"] = [str(p.resolve()) for p, _ in pairs]
            _save_result(args, result, out, ckpt)
        if ctx is not None:
            from ..training import distributed as ddp

            ddp.teardown(together=True)  # no rank leaves while rank 0 still writes
    return 0


def _start(args: argparse.Namespace):
    """The model ``--from`` names (None: a new network, or a resumed run's checkpoint)."""
    from ..errors import InputError
    from ..io import load_model, require_tessera_model
    from ..models import default_model_path

    choice = args.from_model
    if choice == "scratch" or (args.resume and choice == AUTO):
        return None  # a resumed run takes its model from the checkpoint
    src = default_model_path() if choice in (AUTO, "default") else choice
    if src is None:
        if choice == AUTO:
            return None  # no built-in model installed: a new network
        raise InputError("no default model is installed to fine-tune")
    model = load_model(src)
    require_tessera_model(model, src, "train")
    return model


class _StopOnSignal:
    """Ctrl-C (or SIGTERM) while training: the first finishes the step and keeps the best
    model, a later one aborts. Under torchrun the handler stays until every rank is done."""

    def __init__(self, ctx) -> None:
        import threading

        self.ctx, self.event, self.first, self.told = ctx, threading.Event(), 0.0, False

    def __enter__(self) -> _StopOnSignal:
        self.old = (
            signal.signal(signal.SIGINT, self._request),
            signal.signal(signal.SIGTERM, self._request),
        )
        return self

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGINT, self.old[0])
        signal.signal(signal.SIGTERM, self.old[1])

    def _request(self, signum, frame) -> None:
        if self.event.is_set():
            # under torchrun a stop can arrive twice at once (from the scheduler, e.g. SLURM,
            # and forwarded by torchrun): only a later one aborts
            if self.ctx is None or time.monotonic() - self.first > 5:
                raise KeyboardInterrupt
            return
        self.event.set()  # only the flag: printing here could re-enter an interrupted write
        self.first = time.monotonic()

    def announce(self) -> None:
        """The first stop request, said once, outside the signal handler."""
        if self.event.is_set() and not self.told:
            self.told = True
            if self.ctx is None or self.ctx.is_main:
                warn("stopping after this step (press Ctrl-C again to abort without saving)")


def _drive_training(gen, bar: Progress, note: str | None, stop: _StopOnSignal):
    """Run the training to its end with a progress bar; returns its TrainResult."""
    from ..inference import run_to_end

    said = {"note": note, "val": None}

    def show(u) -> None:
        if bar.done is None:  # a resumed run goes on after the checkpoint's steps
            bar.begin_at(u.step - 1)
        stop.announce()
        if said["note"]:
            warn(said["note"])
            said["note"] = None
        if u.info:
            warn(u.info)
        if u.notice:
            warn(u.notice)
        if u.val_iou is not None:
            said["val"] = u.val_iou
        post = {"loss": f"{u.loss:.3f}"}
        if said["val"] is not None:
            post["val IoU"] = f"{said['val']:.3f}"
        bar.update(u.step, u.total_steps, **post)

    try:
        result = run_to_end(gen, show)
    finally:
        bar.close()
    stop.announce()
    if said["note"]:
        warn(said["note"])
    return result


def _save_result(args, result, out: Path, ckpt: Path) -> None:
    """Write the model and say what the run did."""
    from ..io import save_model

    save_model(result.model, out)
    if args.quiet:
        return
    iou = result.describe_kept()
    warn(
        f"wrote {out} after {result.steps} steps in {result.elapsed:.0f} s "
        f"(stopped: {result.stopped}){iou}; resume with --resume {ckpt}"
    )
    if result.edges is not None:
        warn(result.edges.describe())
    if result.agreement is not None:
        warn(result.agreement.describe())
    if result.stopped == "time":
        warn(
            f"the time limit cut the run at step {result.steps} of "
            f"{result.planned_steps}: on another machine the same command gives "
            "another model (lower --steps to fit, or raise --time-limit)"
        )


def _train_pairs(args: argparse.Namespace) -> list[tuple[Path, Path]]:
    """(image, labels) files: IMAGE LABELS pairs, or --images paired with the --labels
    pattern; every file is checked to exist before anything is read."""
    from ..errors import InputError
    from ..sets import expand_inputs, pair_labels

    if args.labels in ("sparse", "dense"):
        raise InputError(
            "--labels takes a labels file pattern; for the label convention use "
            f"--label-mode {args.labels}"
        )
    if args.images:
        if args.pairs:
            raise InputError("give IMAGE LABELS pairs or --images with --labels, not both")
        if not args.labels:
            raise InputError("--images needs --labels PATTERN, e.g. --labels 'painted/{stem}.tif'")
        return pair_labels(expand_inputs(args.images), args.labels)
    if args.labels:
        raise InputError("--labels PATTERN goes with --images; or give IMAGE LABELS pairs")
    if not args.pairs or len(args.pairs) % 2:
        raise InputError("give an image and its labels file (IMAGE LABELS [IMAGE LABELS ...])")
    pairs = [(Path(a), Path(b)) for a, b in zip(args.pairs[::2], args.pairs[1::2])]
    for path in (p for pair in pairs for p in pair):
        if not path.exists():
            raise InputError(f"input not found: {path}")
    return pairs


def _read_training_set(pairs, axes_arg, model, channels, quiet: bool):
    """The images and labels as :class:`TrainImage` items, and notes to print once the run
    has started (guessed axes; the channels the RGB rule reads; the paint of each image when
    there are several). ``model``: the one fine-tuned (None: a new one); ``channels``: those
    chosen (None: the model's stored ones, else the RGB rule's, else all)."""
    from ..images import read_image
    from ..normalize import check_finite
    from ..rgb import rgb_channels, take_index
    from ..training import TrainImage

    in_channels = model.config.in_channels if model is not None else None
    stored = (getattr(model, "metadata", None) or {}).get("channels")
    items, notes = [], []
    for inp, lab_path in pairs:
        image, image_axes = read_image(inp)
        labels, _ = read_image(lab_path)
        axes, note = resolve_axes(image, axes_arg, image_axes, in_channels or 1, quiet)
        if note:
            notes.append(f"{inp.name}: {note}" if len(pairs) > 1 else note)
        check_finite(image, inp.name)
        if channels is None and stored is None:  # the widgets' rule; not stored with the model
            read = rgb_channels(image, axes, in_channels, inp.name)
            if read.take is not None:
                image = image[..., take_index(read.take)]
            if read.note:
                notes.append(read.note)
        items.append(TrainImage(image, labels, axes, inp.name))
    if len(items) > 1 and not quiet:
        painted = ", ".join(f"{it.name} {int(np.count_nonzero(it.labels)):,}" for it in items)
        notes.append(f"training on {len(items)} images (painted pixels: {painted})")
    return items, notes


def add_parser(sub) -> None:
    """The ``tessera train`` subcommand."""
    from ..training.labels import CONVENTION
    from ..training.start import FITS_IOU

    t = sub.add_parser(
        "train",
        help="train a U-Net from painted (sparse) or complete (dense) labels",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Train a U-Net on an image and its labels (or on several: IMAGE LABELS pairs, or "
            "--images with a --labels pattern) and write a model file for "
            "`tessera segment --model`.\n\nLabel conventions (--label-mode):\n"
            f"  sparse (default): {CONVENTION['sparse']}\n"
            f"  dense:            {CONVENTION['dense']}\n"
            "Slices of a stack with nothing painted are skipped. Ctrl-C stops after the "
            "current step and keeps the best model; --resume continues from the checkpoint."
        ),
    )
    t.add_argument(
        "pairs",
        nargs="*",
        metavar="IMAGE LABELS",
        help="an image file (.tif/.tiff or .npy) and its labels file (the image's shape "
        "without channels); several pairs train on all of them",
    )
    t.add_argument(
        "--images",
        nargs="+",
        metavar="IMAGES",
        help="image files, folders or patterns ('raw/*.tif'), each paired with its labels "
        "file by --labels",
    )
    t.add_argument(
        "--labels",
        metavar="PATTERN",
        help="with --images: where each image's labels are, {stem} standing for the image's "
        "name without suffix, e.g. 'painted/{stem}_labels.tif'",
    )
    t.add_argument("-o", "--output", required=True, help="model file to write (.safetensors)")
    t.add_argument(
        "--label-mode", choices=["sparse", "dense"], default="sparse", help="label convention"
    )
    t.add_argument("--axes", help="axes of the image (default: from the TIFF, else guessed)")
    t.add_argument("--channels", type=arg_channels, help=CHANNELS_HELP + " (stored with the model)")
    t.add_argument(
        "--time-limit",
        type=arg_positive_float,
        metavar="S",
        help="stop after S seconds even if the planned steps are not done",
    )
    t.add_argument(
        "--steps",
        type=arg_positive_int,
        help="planned optimiser steps (default 500; the learning-rate schedule follows them, "
        "so the same command gives the same model on any machine)",
    )
    t.add_argument(
        "--from",
        dest="from_model",
        metavar="MODEL",
        default=AUTO,
        help="where training starts: 'auto' (default): the built-in nuclei model if it "
        f"already segments the painted objects (mean IoU {FITS_IOU} or more), else a new network; "
        "'default': fine-tune the built-in model; 'scratch': a new network; or a model file "
        "to fine-tune",
    )
    t.add_argument("--resume", metavar="CHECKPOINT", help="continue an interrupted run")
    t.add_argument(
        "--checkpoint", help="checkpoint path (default: OUTPUT stem + .ckpt.safetensors)"
    )
    t.add_argument(
        "--base-channels", type=arg_positive_int, default=16, help="width (from scratch)"
    )
    t.add_argument("--depth", type=arg_positive_int, default=4, help="poolings (from scratch)")
    t.add_argument(
        "--val-fraction",
        type=float,
        help="share of the painting held out for validation (default: 0.2 when fine-tuning, "
        "none from scratch)",
    )
    t.add_argument(
        "--batch-size",
        type=arg_positive_int,
        help="patches per step; under torchrun the global batch, shared by the processes "
        "(default: auto)",
    )
    t.add_argument("--patch-size", type=arg_positive_int, help="patch side (default: auto)")
    t.add_argument("--lr", type=arg_positive_float, help="peak learning rate (default: auto)")
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
        "--seed", type=arg_non_negative_int, default=0, help="random seed (CPU runs repeat exactly)"
    )
    t.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    t.add_argument("-q", "--quiet", action="store_true")
    t.set_defaults(func=cmd_train)
