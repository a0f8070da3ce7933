"""What the subcommands share: argument types, messages, progress, checks."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage error on one line (exit code 2)."""

    def error(self, message: str):  # noqa: D401
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def arg_positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def arg_positive_float(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (0 < value < math.inf):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def arg_non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def arg_tile_size(text: str) -> int | tuple[int, int]:
    parts = text.lower().split("x") if "x" in text.lower() else [text]
    if len(parts) > 2:
        raise argparse.ArgumentTypeError(f"expected N or NxM, got {text!r}")
    sizes = [arg_positive_int(p) for p in parts]
    return sizes[0] if len(sizes) == 1 else (sizes[0], sizes[1])


def arg_channels(text: str) -> tuple[int, ...] | None:
    from ..axes import parse_channels
    from ..errors import InputError

    try:
        return parse_channels(text)
    except InputError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


CHANNELS_HELP = (
    "image channels the network reads, in order, from 0: e.g. 1 (green of an RGB image) or 1,0 "
    "(cytoplasm, then nuclei); default: all"
)


def arg_edge_offset(text: str) -> float:
    from ..errors import InputError
    from ..postprocess import check_edge_offset

    try:
        return check_edge_offset(float(text), "the edge offset")
    except ValueError as err:
        msg = str(err) if isinstance(err, InputError) else f"expected pixels, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None


def arg_halo(text: str) -> str | int:
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


def say_halo(model, halo) -> None:
    if halo == "auto":
        from ..halo import describe_auto

        line = describe_auto(model)
        if line:
            warn(line)


def warn(msg: str) -> None:
    print(f"tessera: {msg}", file=sys.stderr)


class Progress:
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


def check_output(path: Path, *inputs: Path) -> None:
    from ..errors import InputError

    if not path.parent.is_dir():
        raise InputError(f"output folder does not exist: {path.parent}")
    if path.is_dir():
        raise InputError(f"output is a folder, not a file: {path}")
    for inp in inputs:
        if inp.exists() and path.exists() and path.resolve() == inp.resolve():
            raise InputError(f"output {path} would overwrite an input")


def resolve_axes(
    arr: np.ndarray, axes: str | None, from_file: str | None, in_channels: int, quiet: bool
) -> tuple[str, str | None]:
    """The axes to use and a note saying where they came from (None: nothing to say).

    The note is printed once the work has started, so an error stays a single line (error
    messages about the layout name the axes themselves).
    """
    from ..files import choose_axes

    chosen = choose_axes(arr.shape, axes, from_file, in_channels)
    if chosen.source == "file":
        note = f"axes {from_file} (from the TIFF metadata); pass --axes to override"
        return chosen.axes, None if quiet else note
    if chosen.source == "guessed":  # a guess is always stated, --quiet or not: it may be wrong
        return chosen.axes, (
            f"axes guessed as {chosen.axes} from shape {arr.shape}; pass --axes to override"
        )
    return chosen.axes, None


def segment_options(args: argparse.Namespace):
    """The segmentation settings of ``tessera segment``'s arguments."""
    from ..options import SegmentOptions

    return SegmentOptions(
        tile_size=args.tile_size,
        halo=args.halo,
        blend=args.blend,
        batch_size=args.batch_size,
        device=args.device,
        precision=args.precision,
        instances=args.instances,
        min_size=args.min_size,
        edge_offset=args.edge_offset,
        channels=args.channels,
    )


def load_model_arg(path: str | None, device: str):
    from ..errors import InputError
    from ..io import load_model
    from ..models import default_model_path

    if path is None:
        path = default_model_path()
        if path is None:
            raise InputError("no default model is installed; pass --model MODEL.safetensors")
    return load_model(path, device="cpu")


def drive(gen, bar: Progress, notes: list[str]):
    """Run a segmentation generator to its end, showing progress and notices; returns its value.

    ``notes`` are printed once the work has started (so an error before that stays one line).
    """
    from ..inference import Notice, Progress

    try:
        while True:
            try:
                event = next(gen)
            except StopIteration as stop:
                result = stop.value
                break
            for text in notes:
                warn(text)
            notes = []
            if isinstance(event, Progress):
                bar.update(event.done, event.total)
            elif isinstance(event, Notice):
                warn(event.message)
    finally:
        bar.close()
    for text in notes:  # nothing was yielded (e.g. nothing left to do): say them now
        warn(text)
    return result
