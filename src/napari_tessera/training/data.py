"""What a training run learns from: one or several painted images, as annotated 2D slices.

A run takes one image with its labels, or a set of them (:class:`TrainImage`): different
sizes, 2D images and stacks, sparse or dense, as long as they have the same channels. Every
annotated slice of every image becomes one entry of the run's slice list; patches are drawn
across all of them, in proportion to how much each has painted.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..axes import SliceLayout, layout
from ..errors import InputError
from ..inference import image_layout
from .labels import Targets, check_labels, set_targets


@dataclass(frozen=True)
class TrainImage:
    """One image of a training set and its labels (shaped like the image without channels).

    ``name`` says which image an error is about (a file name, a layer name).
    """

    image: Any
    labels: Any
    axes: str = "YX"
    name: str = ""


@dataclass(frozen=True)
class Source:
    """A checked image of the run: its slice layout, labels ``(S, Y, X)`` and targets."""

    image: Any
    lay: SliceLayout
    labels: np.ndarray
    targets: Targets
    name: str


class PaintFeed:
    """New labels for the images of a running training, posted while it trains.

    The napari Train widget posts a copy of an annotation layer after each stroke (from the
    main thread); the run takes what was posted at its next sampling round (every validation
    interval) and learns from the new painting from then on. Thread-safe; later posts for
    the same image replace earlier ones.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._new: dict[int, np.ndarray] = {}

    def post(self, index: int, labels) -> None:
        """The labels of image ``index`` (its place in the training set) are now ``labels``."""
        with self._lock:
            self._new[index] = np.array(labels)  # a copy: painting goes on

    def take(self) -> dict[int, np.ndarray]:
        """Everything posted since the last take, by image index."""
        with self._lock:
            new, self._new = self._new, {}
        return new


def as_images(image, labels, axes) -> list[TrainImage]:
    """The training set of an ``iter_train`` call: ``image`` and ``labels`` as one pair, or
    ``image`` a sequence of :class:`TrainImage` or ``(image, labels)`` pairs (``labels``
    None; ``axes`` applies to the pairs)."""
    if not isinstance(image, (list, tuple)):
        if labels is None:
            raise InputError("labels are missing: give the image's labels")
        return [TrainImage(image, labels, axes)]
    if labels is not None:
        raise InputError("give labels inside each pair when training on a set of images")
    if not image:
        raise InputError("the training set is empty")
    out = []
    for k, item in enumerate(image):
        if isinstance(item, TrainImage):
            out.append(item)
        elif isinstance(item, (list, tuple)) and len(item) == 2:
            out.append(TrainImage(item[0], item[1], axes, f"image {k + 1}"))
        else:
            raise InputError(f"item {k + 1} of the training set is not an (image, labels) pair")
    return out


def load_sources(
    items: Sequence[TrainImage],
    *,
    mode: str,
    channels,
    model,
    surround: float,
) -> list[Source]:
    """Check every image and its labels, and make their targets with one class count.

    ``model``: the network fine-tuning starts from, or the one a run trains when it takes
    new painting (its stored channels and class count apply), or None. Errors name the
    image they are about when there are several.
    """
    lays, labels = [], []
    for k, it in enumerate(items):
        try:
            if model is not None:
                lay = image_layout(model, it.image, it.axes, channels)
            else:
                lay = layout(np.shape(it.image), it.axes, channels)
            lab = check_labels(it.labels, lay.out_shape, mode)
        except InputError as err:
            if len(items) == 1:
                raise
            raise InputError(f"{it.name or f'image {k + 1}'}: {err}") from None
        lays.append(lay)
        labels.append(lab.reshape((lay.n_slices, *lay.yx)))
    for k, lay in enumerate(lays[1:], 2):
        if lay.channels != lays[0].channels:
            name = items[k - 1].name or f"image {k}"
            raise InputError(
                f"{name} has {lay.channels} channel(s) but {items[0].name or 'image 1'} has "
                f"{lays[0].channels}: every image of a set needs the same (see channels)"
            )
    n_classes = model.config.n_classes if model is not None else None
    targets = set_targets(labels, mode, n_classes=n_classes, surround=surround)
    return [
        Source(it.image, lay, lab, t, it.name or f"image {k + 1}")
        for k, (it, lay, lab, t) in enumerate(zip(items, lays, labels, targets, strict=True))
    ]


def painted_slices(sources: Sequence[Source]):
    """``(source, slice index)`` of every annotated slice, in the run's order."""
    return [(src, s) for src in sources for s in src.targets.slices]


def smallest_side(sources: Sequence[Source]) -> tuple[int, int]:
    """The ``(Y, X)`` of the smallest annotated image (patch sizes must fit it)."""
    painted = [src for src in sources if src.targets.slices] or list(sources)
    return min((src.lay.yx for src in painted), key=min)
