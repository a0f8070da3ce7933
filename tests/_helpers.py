"""Small helpers shared by several test files (imported as ``_helpers``)."""

from __future__ import annotations

import numpy as np

from napari_tessera import cli

#: ``tessera train`` options for a tiny new network (``--from scratch`` first: a test that
#: names another start drops the first two)
TINY_NETWORK = ["--from", "scratch", "--base-channels", "4", "--depth", "2", "--patch-size", "32"]


def run(argv, capsys):
    """``main(argv)`` -> (exit code, stdout, stderr); argparse errors exit via SystemExit."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def rewrite_zip(src, dst, change):
    """A copy of the zip ``src`` at ``dst`` with each member's bytes passed through
    ``change(name, data)`` (None drops the member); returns ``dst``."""
    import zipfile

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = change(item.filename, zin.read(item.filename))
            if data is not None:
                zout.writestr(item, data)
    return dst


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


def stain_rgb(*colours: int, side: int = 64, seed: int = 1) -> np.ndarray:
    """A uint8 RGB image of synthetic nuclei in the channels ``colours`` (0 red, 1 green,
    2 blue), the others all zero: ``stain_rgb(1)`` is a single-stain (green) export. The CLI
    and widget tests read the same images."""
    from napari_tessera.synthetic import nuclei_2d

    gray = nuclei_2d((side, side), seed=seed).image.astype(np.float64)
    gray = (gray - gray.min()) / (gray.max() - gray.min()) * 255
    rgb = np.zeros((side, side, 3), np.uint8)
    for k, c in enumerate(colours):
        rgb[..., c] = np.roll(gray, 7 * k, axis=1).astype(np.uint8)  # each stain its own
    return rgb
