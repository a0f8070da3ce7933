"""Small helpers shared by several test files (imported as ``_helpers``)."""

from __future__ import annotations

import numpy as np

from napari_tessera import cli


def run(argv, capsys):
    """``main(argv)`` -> (exit code, stdout, stderr); argparse errors exit via SystemExit."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def nonempty_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


class ReadRecorder:
    """An array that records the shape of every read: proves a pipeline reads a slice (or a
    block) at a time."""

    def __init__(self, data, chunks=None):
        self.data, self.reads = data, []
        self.shape, self.dtype, self.ndim = data.shape, data.dtype, data.ndim
        if chunks is not None:
            self.chunks = chunks

    def __getitem__(self, key):
        out = self.data[key]
        self.reads.append(np.shape(out))
        return out

    def __array__(self, dtype=None, copy=None):  # a whole read is recorded as one
        self.reads.append(self.shape)
        return np.asarray(self.data, dtype=dtype)
