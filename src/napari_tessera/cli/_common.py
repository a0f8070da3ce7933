"""What the subcommands share: argument types, messages, progress, checks."""

from __future__ import annotations

import argparse
import sys
import time
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


def arg_voxel_size(text: str) -> tuple[float, ...]:
    """--voxel-size: Z,Y,X or Y,X, positive numbers (micrometres)."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (2, 3):
        raise argparse.ArgumentTypeError(f"expected Z,Y,X or Y,X (micrometres), got {text!r}")
    try:
        return tuple(arg_positive_float(p) for p in parts)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected positive sizes Z,Y,X or Y,X (micrometres), got {text!r}"
        ) from None


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
    "(cytoplasm, then nuclei); default: all (of an RGB(A) image, a 1-channel model reads the "
    "one colour with signal, said on a 'tessera:' line; alpha is read only when chosen)"
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
    """--halo as the options take it ('auto', 'exact' or pixels; checked by the options)."""
    from ..errors import InputError
    from ..options import SegmentOptions

    word = text.strip().lower()
    value: str | int = int(word) if word.lstrip("-").isdigit() else word
    try:
        return SegmentOptions(halo=value).halo
    except InputError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def say_halo(model, halo) -> None:
    from ..halo import describe_halo

    line = describe_halo(model, halo)
    if line:
        warn(line)


def warn(msg: str) -> None:
    print(f"tessera: {msg}", file=sys.stderr)


class Progress:
    """A progress bar on stderr, silent with --quiet.

    ``update(done, total, **postfix)`` reports the count so far (``done`` may be fractional,
    e.g. 2.37 of 200 files); ``close()`` ends the bar. The clock starts when the bar is made
    (just before the work starts), so a rate is always units done / time since then: the
    first update after a tiny interval cannot show an absurd rate. A rate is shown once the
    bar has run :attr:`MIN_RATE_S` (the final line: as soon as the time is measurable).
    The final count is written once, by ``close()``, with the true average rate.
    ``begin_at(done)``: the work resumes after ``done`` units an earlier run did; rates count
    this run's units only.

    On a terminal the bar is redrawn in place (at most every :attr:`TTY_INTERVAL` s); into a
    file or a pipe it writes whole lines, at most one every :attr:`LOG_INTERVAL` s. Nothing is
    written before the first update, so an error before it stays one line.
    """

    MIN_RATE_S = 1.0  # a running bar shows no rate before this: the start dominates it
    MIN_FINAL_S = 1e-3  # the final line's rate needs a measurable time
    TTY_INTERVAL = 0.1
    LOG_INTERVAL = 10.0

    def __init__(self, quiet: bool, desc: str, unit: str):
        self.quiet, self.desc, self.unit = quiet, desc, unit
        self.start = time.perf_counter()
        self.done: float | None = None  # None: no update yet
        self.total: float = 0
        self.at = self.start  # when ``done`` was reported
        self.postfix: dict = {}
        self._shown: str | None = None  # the line last written
        self._shown_at: float | None = None
        self._width = 0  # of the line on the terminal, to blank what a shorter one leaves
        self._closed = False
        self.base: float = 0  # units done before this run (a resumed run)

    def begin_at(self, done: float) -> None:
        self.base = done

    def update(self, done: float, total: float, **postfix) -> None:
        if self.quiet or self._closed:
            return
        now = time.perf_counter()
        self.done, self.total, self.at = done, total, now
        if postfix:
            self.postfix = postfix
        if done >= total:
            return  # the final line is close()'s, once, with the average over the whole run
        tty = _isatty(sys.stderr)
        interval = self.TTY_INTERVAL if tty else self.LOG_INTERVAL
        if self._shown_at is not None and now - self._shown_at < interval:
            return
        line = self._line(final=False)
        if line != self._shown:
            self._write(line, tty, end="")
        self._shown_at = now

    def close(self) -> None:
        if self.quiet or self._closed:
            return
        self._closed = True
        if self.done is None:
            return  # nothing was ever shown
        tty = _isatty(sys.stderr)
        line = self._line(final=True)
        if line == self._shown:  # stopped where the last line was: do not repeat it
            if tty:
                sys.stderr.write("\n")
                sys.stderr.flush()
            return
        self._write(line, tty, end="\n")

    def _line(self, final: bool) -> str:
        from tqdm import tqdm

        done = self.done
        if isinstance(done, float) and done.is_integer():
            done = int(done)  # 200 files, not 200.0
        total = int(self.total) if float(self.total).is_integer() else self.total
        elapsed = self.at - self.start
        shown = (self.MIN_FINAL_S if final and done >= total else self.MIN_RATE_S) <= elapsed
        rate = (done - self.base) / elapsed if shown and done > self.base else None
        post = ", ".join(f"{k}={str(v).strip()}" for k, v in self.postfix.items())
        kw = {}
        if rate is None:  # tqdm would compute done / elapsed itself: say "?" instead
            kw["bar_format"] = (
                "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<?, ?{unit}/s{postfix}]"
                if total
                else "{desc}: {n_fmt}{unit} [{elapsed}, ?{unit}/s{postfix}]"
            )
        return tqdm.format_meter(
            done,
            total or None,
            elapsed,
            ncols=_columns(sys.stderr),
            prefix=self.desc,
            unit=self.unit,
            rate=rate,
            postfix=post or None,
            **kw,
        )

    def _write(self, line: str, tty: bool, end: str) -> None:
        if tty:
            pad = " " * max(0, self._width - len(line))
            sys.stderr.write("\r" + line + pad + end)
            self._width = 0 if end else len(line)
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()
        self._shown = line


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _columns(stream) -> int | None:
    """The terminal's width (None: not a terminal)."""
    import os

    if not _isatty(stream):
        return None
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):
        return None


def check_output(path: Path, *inputs: Path) -> None:
    from ..errors import InputError
    from ..images import check_output_folder

    check_output_folder(path)
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
        instances=bool(args.instances),
        link_z=args.instances != "2d",
        voxel_size=args.voxel_size if args.voxel_size and len(args.voxel_size) == 3 else None,
        min_size=args.min_size,
        edge_offset=args.edge_offset,
        channels=args.channels,
    )


def load_model_arg(path: str | None, *, trust_model: bool = False):
    from ..errors import InputError
    from ..io import load_model
    from ..models import default_model_path

    if path is None:
        path = default_model_path()
        if path is None:
            raise InputError("no default model is installed; pass --model MODEL.safetensors")
    return load_model(path, device="cpu", trust_model=trust_model)


def drive(gen, bar: Progress, notes: list[str]):
    """Run a segmentation generator to its end, showing progress and notices; returns its value.

    ``notes`` are printed once the work has started (so an error before that stays one line).
    """
    from ..inference import Notice, Progress, run_to_end

    pending = list(notes)

    def show(event) -> None:
        while pending:
            warn(pending.pop(0))
        if isinstance(event, Progress):
            bar.update(event.done, event.total)
        elif isinstance(event, Notice):
            warn(event.message)

    try:
        result = run_to_end(gen, show)
    finally:
        bar.close()
    for text in pending:  # nothing was yielded (e.g. nothing left to do): say them now
        warn(text)
    return result
