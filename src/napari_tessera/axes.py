"""Axis strings ("YX", "ZYX", "CYX", "ZCYX", "TZCYX", "YXC", ...) and the slice view of an image."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import InputError

KNOWN_AXES = "TZCYX"


@dataclass(frozen=True)
class SliceLayout:
    """How an image with given axes maps onto 2D slices with channels.

    ``slice_view(image, s)`` gives slice ``s`` shaped ``(C, Y, X)``. ``lead_axes`` and
    ``lead_shape`` are the non-channel axes before Y and X, in input
    order; predictions come back shaped ``(n_classes, *lead_shape, Y, X)``.
    ``pick``: the image channels read, in this order (None: all); ``channels`` counts them.
    """

    axes: str
    shape: tuple[int, ...]
    lead_axes: str
    lead_shape: tuple[int, ...]
    channels: int
    pick: tuple[int, ...] | None = None

    @property
    def image_channels(self) -> int:
        """Channels of the image itself (before ``pick``)."""
        return self.shape[self.axes.index("C")] if "C" in self.axes else 1

    @property
    def n_slices(self) -> int:
        return int(np.prod(self.lead_shape, dtype=np.int64)) if self.lead_shape else 1

    @property
    def yx(self) -> tuple[int, int]:
        return self.shape[self.axes.index("Y")], self.shape[self.axes.index("X")]

    @property
    def out_axes(self) -> str:
        return self.lead_axes + "YX"

    @property
    def out_shape(self) -> tuple[int, ...]:
        return (*self.lead_shape, *self.yx)

    def _lead(self, s: int) -> tuple:
        return np.unravel_index(s, self.lead_shape) if self.lead_shape else ()

    def slice_index(self, s: int) -> tuple:
        """Index into the image (in its own axis order) selecting slice number ``s``."""
        pos = dict(zip(self.lead_axes, (int(i) for i in self._lead(s))))
        return tuple(pos.get(a, slice(None)) for a in self.axes)

    def slice_view(self, image, s: int):
        """Slice ``s`` as ``(C, Y, X)``: a view for numpy; reads only that slice otherwise."""
        return self.region_view(image, s, slice(None), slice(None))

    def region_view(self, image, s: int, ys: slice, xs: slice):
        """Rows ``ys`` and columns ``xs`` of slice ``s`` as ``(C, y, x)``; reads only those."""
        pos = dict(zip(self.lead_axes, (int(i) for i in self._lead(s))))
        pos.update(Y=ys, X=xs)
        sub = image[tuple(pos.get(a, slice(None)) for a in self.axes)]
        rest = [a for a in self.axes if a in "CYX"]
        if "C" not in rest:
            sub = sub[None]
        else:
            order = [rest.index("C"), rest.index("Y"), rest.index("X")]
            if order != [0, 1, 2]:
                tr = getattr(sub, "transpose", None)
                sub = tr(order) if tr is not None else np.transpose(sub, order)
        return sub if self.pick is None else sub[list(self.pick)]


def normalize_axes(axes: str) -> str:
    """Upper-case an axes string and map TIFF's sample axis "S" to "C"."""
    if not isinstance(axes, str):
        raise InputError(f"axes must be a string such as 'YX' or 'ZYX', got {axes!r}")
    return axes.upper().replace("S", "C")


def parse_channels(text) -> tuple[int, ...] | None:
    """``"1"`` -> (1,), ``"1,0"`` -> (1, 0); ``None``, ``""`` or ``"all"`` -> None (all)."""
    if text is None:
        return None
    if isinstance(text, (tuple, list)):
        items = list(text)
    else:
        t = str(text).strip().lower()
        if t in ("", "all"):
            return None
        items = [v.strip() for v in t.split(",")]
    try:
        pick = tuple(int(v) for v in items)
    except (TypeError, ValueError):
        raise InputError(
            f"channels must be channel numbers from 0, such as 1 or 1,0; got {text!r}"
        ) from None
    if not pick or any(c < 0 for c in pick):
        raise InputError(f"channels must be channel numbers from 0, such as 1 or 1,0; got {text!r}")
    return pick


def layout(shape: Sequence[int], axes: str, channels=None) -> SliceLayout:
    """Check ``axes`` against ``shape`` and describe the slice layout; ``channels`` picks and
    orders the channels read (see :func:`parse_channels`; None: all)."""
    axes = normalize_axes(axes)
    shape = tuple(int(s) for s in shape)
    bad = sorted(set(axes) - set(KNOWN_AXES))
    if bad:
        raise InputError(f"unknown axis {bad[0]!r} in {axes!r}; use letters from {KNOWN_AXES}")
    if len(set(axes)) != len(axes):
        raise InputError(f"axes {axes!r} name an axis twice")
    if "Y" not in axes or "X" not in axes:
        raise InputError(f"axes {axes!r} must contain Y and X")
    if len(axes) != len(shape):
        raise InputError(
            f"axes {axes!r} name {len(axes)} axes but the image has {len(shape)} (shape {shape})"
        )
    if any(s == 0 for s in shape):
        raise InputError(f"image is empty (shape {shape})")
    lead = "".join(a for a in axes if a not in "CYX")
    n = shape[axes.index("C")] if "C" in axes else 1
    pick = parse_channels(channels)
    if pick is not None and max(pick) >= n:
        have = f"channels 0-{n - 1}" if n > 1 else "one channel (0)"
        raise InputError(f"channel {max(pick)} does not exist: the image has {have}")
    return SliceLayout(
        axes=axes,
        shape=shape,
        lead_axes=lead,
        lead_shape=tuple(shape[axes.index(a)] for a in lead),
        channels=len(pick) if pick is not None else n,
        pick=pick,
    )


def check_channel_count(want: int, lay: SliceLayout, name: str = "") -> None:
    """The one check that an image gives a model its number of channels (``want``): a
    one-line error that says what to set otherwise. ``name``: the image, for the message."""
    if lay.channels == want:
        return
    of = f"{name}: " if name else ""
    if lay.pick is not None:
        picked = ",".join(str(c) for c in lay.pick)
        raise InputError(
            f"{of}the model reads {want} channel(s) but {lay.channels} are chosen "
            f"(channels {picked})"
        )
    if lay.channels > want:
        hint = f"choose {want} of them (channels, e.g. {','.join(map(str, range(want)))})"
    else:
        hint = "set the axes if another axis holds the channels (e.g. CYX)"
    raise InputError(
        f"{of}the model reads {want} channel(s) but the image has {lay.channels} "
        f"(axes {lay.axes}, shape {lay.shape}); {hint}"
    )


def guess_axes(shape: Sequence[int], in_channels: int = 1) -> str:
    """A best guess of the axes of an image from its shape alone (state it to the user).

    The one rule for the CLI, the widgets and Python. A last axis of 3 or 4 after a larger
    one is RGB(A) samples; a first (or, in 4D, second) axis as long as the model's channels
    is channels; in 4D a short second axis (at most 8) after a longer first one is channels
    too (a multichannel stack: a model for another number of channels then asks for the
    channels to read, rather than running every channel as a slice).
    """
    shape = tuple(shape)
    if len(shape) == 2:
        return "YX"
    if len(shape) == 3:
        if shape[-1] in (3, 4) and shape[0] > 4:
            return "YXC"
        if in_channels > 1 and shape[0] == in_channels:
            return "CYX"
        return "ZYX"
    if len(shape) == 4:
        if shape[-1] in (3, 4) and shape[1] > 4:
            return "ZYXC"
        if in_channels > 1 and shape[1] == in_channels:
            return "ZCYX"
        if in_channels > 1 and shape[0] == in_channels:
            return "CZYX"
        if shape[1] <= 8 and shape[0] > shape[1]:
            return "ZCYX"
        return "TZYX"
    if len(shape) == 5:
        return "TZCYX"
    raise InputError(f"cannot guess the axes of a {len(shape)}-dimensional image; pass axes")
