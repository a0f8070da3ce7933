"""The ``tessera`` command line.

Expected problems (bad files, wrong axes, bad numbers) end with one line on stderr and exit
code 2; an interruption (Ctrl-C, SIGTERM) ends with exit code 130. Outputs are written to a
temporary file and renamed, so nothing half-written is ever left under the final name.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from ..errors import TesseraError
from . import _export, _segment, _tools, _train
from ._common import EXIT_INTERRUPTED, EXIT_USAGE, Parser


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="tessera", description="U-Net segmentation of microscopy images.")
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    _segment.add_parser(sub)
    _train.add_parser(sub)
    _tools.add_parser(sub)
    _export.add_parser(sub)
    return p


def _version() -> str:
    from .. import __version__

    return f"tessera {__version__}"


def _raise_interrupt(signum, frame):  # SIGTERM behaves like Ctrl-C: clean up, exit 130
    raise KeyboardInterrupt


def _with_instance_mode(argv) -> list[str]:
    """``--instances`` alone means ``--instances 3d``, wherever it stands (before the input
    too: argparse would otherwise take the input for the mode)."""
    argv = [str(a) for a in argv]
    out = []
    for k, arg in enumerate(argv):
        out.append(arg)
        if arg == "--instances" and (k + 1 == len(argv) or argv[k + 1] not in ("2d", "3d")):
            out.append("3d")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_with_instance_mode(sys.argv[1:] if argv is None else argv))
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
        elif args.command == "segment" and out and Path(out).is_dir() and partial is not None:
            what = f"finished files kept in {out}; run the same command to resume"
        else:
            what = "no partial output left behind"
        print(f"tessera {args.command}: interrupted; {what}", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
