"""RGB(A) images: the channels a model reads when none are chosen.

One policy for the command line (``tessera segment`` and ``tessera train``) and the Segment and
Train widgets (:func:`rgb_channels`); the Python API reads what ``channels`` says. An image is
RGB(A) when its last axis holds 3 or 4 channels (TIFF samples, a guessed ``YXC``, a napari RGB
layer). With no channels chosen (and none stored with the model):

- a 1-channel model reads the one of red, green and blue that carries signal when the other two
  are constant (a single-stain RGB export), with a note saying which; an image with signal in
  several of them (or in none) is an error that asks for the channel to read. Colours are never
  mixed (a luminance would blend stains);
- a model for as many channels as the image has reads them all; a 3-channel model, or a new
  one, reads red, green and blue of an RGBA image: alpha is read only when chosen;
- a model for 2 channels asks for the two to read.

What the rule picks is applied to the pixels, not stored with a trained model (channels the
user chooses are): each image gets the rule anew.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .axes import layout, normalize_axes
from .errors import InputError
from .normalize import check_dtype

NAMES = ("red", "green", "blue", "alpha")
BLOCK = 1 << 22  # pixel values read at a time while looking for signal


@dataclass(frozen=True)
class RGBRead:
    """What a model reads of an image: ``take``, the channels (of the last axis) read, in
    order (None: the image as it is); ``note``, what to tell the user (None: nothing)."""

    take: tuple[int, ...] | None = None
    note: str | None = None


def is_rgb(shape: Sequence[int], axes: str) -> bool:
    """The image's last axis holds 3 or 4 channels: RGB or RGBA samples."""
    axes = normalize_axes(axes)
    return len(axes) == len(shape) and axes.endswith("C") and int(shape[-1]) in (3, 4)


def names(channels: Sequence[int]) -> str:
    """``(1,)`` -> "green"; ``(0, 1, 2)`` -> "red, green and blue"."""
    words = [NAMES[c] for c in channels]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def with_signal(image, n: int = 3) -> tuple[bool, ...]:
    """Which of the first ``n`` channels of a channels-last image vary (not every pixel the
    same). Read a block of rows at a time (a lazy image is never read whole at once); stops
    once two channels vary."""
    shape = tuple(int(s) for s in np.shape(image))
    rows = max(1, BLOCK // max(1, shape[-2] * n))
    lo = hi = None
    for lead in np.ndindex(*shape[:-3]):
        for y in range(0, shape[-3], rows):
            block = np.asarray(image[(*lead, slice(y, y + rows), slice(None), slice(0, n))])
            b_lo, b_hi = block.min(axis=(0, 1)), block.max(axis=(0, 1))
            lo = b_lo if lo is None else np.minimum(lo, b_lo)
            hi = b_hi if hi is None else np.maximum(hi, b_hi)
            if np.count_nonzero(~(hi == lo)) >= 2:  # NaN counts as signal
                return tuple(bool(v) for v in ~(hi == lo))
    return tuple(bool(v) for v in ~(hi == lo))


def rgb_channels(image, axes: str, in_channels: int | None, name: str = "") -> RGBRead:
    """The channels of ``image`` (with ``axes``) that a model reading ``in_channels`` channels
    (None: a new model) reads when no channels are chosen and the model stores none; see the
    module's docstring. Other images are read as they are. Raises :class:`InputError` (one
    line that names the choice) when the choice is the user's to make."""
    shape = tuple(int(s) for s in np.shape(image))
    layout(shape, axes)  # the axes fit the image
    if not is_rgb(shape, axes):
        return RGBRead()
    n = shape[-1]
    kind = "RGBA" if n == 4 else "RGB"
    who = name or "the image"
    of = f"{name}: " if name else ""
    want = 3 if in_channels is None else int(in_channels)
    if want >= n:
        return RGBRead()  # all of them, or a channel-count error that says what to set
    if want == 3:
        return RGBRead(
            (0, 1, 2), f"{of}reading {names((0, 1, 2))}, not alpha; set channels to choose"
        )
    if want != 1:
        example = ",".join(map(str, range(want)))
        raise InputError(
            f"{who} is {kind} but the model reads {want} channels: choose {want} with channels, "
            f"e.g. {example}"
        )
    check_dtype(image.dtype)
    signal = [c for c, on in enumerate(with_signal(image)) if on]
    if len(signal) == 1:
        (c,) = signal
        return RGBRead(
            (c,),
            f"{of}reading channel {c} ({NAMES[c]}), the only one with signal; "
            "set channels to choose",
        )
    if signal:
        c = signal[0]
        raise InputError(
            f"{who} is {kind} with signal in several channels ({names(signal)}) but the model "
            f"reads 1: choose one with channels, e.g. {c} for {NAMES[c]}"
        )
    raise InputError(
        f"{who} is {kind} with no signal (red, green and blue are each constant) but the model "
        "reads 1: choose one with channels, e.g. 1 for green"
    )


def take_index(take: Sequence[int]):
    """An index of the last axis that reads ``take``: a slice (a view) when it is a run."""
    take = tuple(take)
    if take == tuple(range(take[0], take[0] + len(take))):
        return slice(take[0], take[0] + len(take))
    return list(take)


# -- segmenting runs (the CLI, and the Segment widget's folder runs) ------------------------------
def segment_options(model, image, axes: str, options, name: str = ""):
    """``options`` (:class:`~napari_tessera.options.SegmentOptions`) that read what
    :func:`rgb_channels` picks of ``image`` for ``model`` when no channels are chosen and the
    model stores none, and the notes to give (a guess: said even when quiet)."""
    from dataclasses import replace

    stored = (getattr(model, "metadata", None) or {}).get("channels")
    if options.channels is not None or stored is not None:
        return options, []
    read = rgb_channels(image, axes, model.config.in_channels, name)
    notes = [read.note] if read.note else []
    return (options if read.take is None else replace(options, channels=read.take)), notes


def file_options(model, path, axes: str | None, options):
    """:func:`segment_options` for the image file ``path`` (``axes``: given, else the file's,
    else guessed). The file is opened without reading it, and read (a block at a time) only
    when it is RGB(A) and the model reads fewer channels. A file that cannot be opened is left
    to the run that reads it to report."""
    from pathlib import Path

    from .files import choose_axes
    from .images import open_image

    path = Path(path)
    if options.channels is not None:
        return options, []
    try:
        image, file_axes = open_image(path)
        chosen = choose_axes(image.shape, axes, file_axes, model.config.in_channels).axes
    except InputError:
        return options, []
    return segment_options(model, image, chosen, options, path.name)


def files_by_rule(model, todo, options, axes):
    """The files of a folder run one after the other, each read as :func:`file_options`
    says: a ``run_files`` for :func:`napari_tessera.files.iter_segment_files`."""
    from .errors import TesseraError
    from .files import FileDone, segment_one_file
    from .inference import Notice

    for image, out in todo:
        try:
            own, notes = file_options(model, image, axes, options)
        except (TesseraError, OSError, MemoryError) as err:
            yield FileDone(image, out, "failed", str(err) or type(err).__name__)
            continue
        for note in notes:
            yield Notice(note)
        yield from segment_one_file(model, image, out, own, axes)
