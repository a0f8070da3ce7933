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


def _tile_size(text: str) -> int | tuple[int, int]:
    parts = text.lower().split("x") if "x" in text.lower() else [text]
    if len(parts) > 2:
        raise argparse.ArgumentTypeError(f"expected N or NxM, got {text!r}")
    sizes = [_positive_int(p) for p in parts]
    return sizes[0] if len(sizes) == 1 else (sizes[0], sizes[1])


def _halo(text: str) -> str | int:
    if text.lower() == "exact":
        return "exact"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'exact' or pixels, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def _warn(msg: str) -> None:
    print(f"tessera: {msg}", file=sys.stderr)


class _Progress:
    """A progress bar on stderr (tqdm), silent with --quiet."""

    def __init__(self, quiet: bool, desc: str, unit: str):
        self.bar = None
        if not quiet:
            from tqdm import tqdm

            self.bar = tqdm(total=0, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)

    def update(self, done: int, total: int, **postfix) -> None:
        if self.bar is None:
            return
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


def _resolve_axes(arr: np.ndarray, axes: str | None, from_file: str | None, in_channels: int) -> str:
    from .axes import guess_axes, layout

    if axes:
        layout(arr.shape, axes)  # validates
        return axes.upper()
    if from_file:
        return from_file
    guessed = guess_axes(arr.shape, in_channels)
    _warn(f"axes guessed as {guessed} from shape {arr.shape}; pass --axes to override")
    return guessed


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
    from .inference import Progress, iter_segment
    from .io import read_image, write_tiff

    inp, out = Path(args.input), Path(args.output)
    _check_output(out, inp)
    prob_path = Path(args.probabilities) if args.probabilities else None
    if prob_path is not None:
        _check_output(prob_path, inp)
    model = _load_model_arg(args.model, args.device)
    arr, file_axes = read_image(inp)
    axes = _resolve_axes(arr, args.axes, file_axes, model.config.in_channels)
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        from .errors import InputError

        raise InputError(f"{inp.name} contains NaN or infinite pixels")
    from .axes import layout

    lay = layout(arr.shape, axes)
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
        probabilities_out=probs,
        tile_size=args.tile_size,
        halo=args.halo,
        blend=args.blend,
        batch_size=args.batch_size,
        device=args.device,
        precision=args.precision,
    )
    try:
        while True:
            try:
                event = next(gen)
            except StopIteration as stop:
                labels = stop.value
                break
            if isinstance(event, Progress):
                bar.update(event.done, event.total)
    finally:
        bar.close()
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
        _warn(f"wrote {out} ({'x'.join(map(str, s.image.shape))} {axes}, {int(s.labels.max())} nuclei)")
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
            "the labels as a TIFF: per-pixel classes (0 = background) or, with --instances, one "
            "id per object."
        ),
    )
    s.add_argument("input", help="image file (.tif/.tiff or .npy)")
    s.add_argument("-o", "--output", required=True, help="labels TIFF to write")
    s.add_argument("--model", help="model file (.safetensors); default: the built-in nuclei model")
    s.add_argument(
        "--axes",
        help="axes of the image, e.g. YX, ZYX, CYX, ZCYX, YXC (default: from the TIFF, else guessed)",
    )
    s.add_argument(
        "--tile-size",
        type=_tile_size,
        default=None,
        help="network input per tile, N or NxM pixels (default: 512 kept pixels plus the halo)",
    )
    s.add_argument(
        "--halo",
        type=_halo,
        default="exact",
        help="'exact' (receptive field; identical to one whole-image pass) or pixels (default: exact)",
    )
    s.add_argument("--blend", choices=["crop", "gaussian"], default="crop", help="tile merging")
    s.add_argument("--batch-size", type=_positive_int, default=1, help="tiles per forward pass")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    s.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    s.add_argument("--instances", action="store_true", help="one id per object instead of classes")
    s.add_argument("--min-size", type=_positive_int, default=8, help="smallest object kept (px)")
    s.add_argument("--probabilities", metavar="PATH", help="also write class probabilities (TIFF)")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    s.set_defaults(func=cmd_segment)

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
        print(f"tessera {args.command}: interrupted; no partial output left behind", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
