"""Label conventions and their checks.

sparse (default; painting in napari):
    0 = not annotated (ignored by the loss, never "background"), 1 = background,
    2, 3, ... = object classes. The network's class is the label minus 1.
dense (fully annotated masks):
    0 = background, every other value an object; distinct values are distinct instances, so
    the U-Net paper's border weights can teach the network to separate touching objects.

Stacks: annotated slices train; slices with nothing painted are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError

IGNORE = -1
MODES = ("sparse", "dense")

CONVENTION = {
    "sparse": "0 = not annotated (ignored), 1 = background, 2, 3, ... = object classes",
    "dense": "0 = background, every other value an object (distinct values = distinct objects)",
}


@dataclass(frozen=True)
class Targets:
    """Per-slice training targets.

    classes: int64 ``(S, Y, X)``; network class per pixel, ``IGNORE`` where not annotated.
    instances: ``(S, Y, X)`` object ids for dense labels (for border weights), else None.
    n_classes: number of network outputs (background + object classes).
    slices: indices (into the flat slice list) of slices that carry annotations.
    """

    classes: np.ndarray
    instances: np.ndarray | None
    n_classes: int
    slices: list[int]


def check_labels(labels, image_yx_shape: tuple[int, ...], mode: str) -> np.ndarray:
    """Validate a labels array against the image's non-channel shape; return it as int64."""
    if mode not in MODES:
        raise InputError(f"label mode must be 'sparse' or 'dense', got {mode!r}")
    arr = np.asarray(labels)
    if arr.shape != tuple(image_yx_shape):
        raise InputError(
            f"labels have shape {arr.shape} but the image's (non-channel) shape is "
            f"{tuple(image_yx_shape)}"
        )
    if arr.dtype.kind == "f":
        raise InputError(f"labels must be integers, got {arr.dtype} (a float array)")
    if arr.dtype.kind not in "biu":
        raise InputError(f"labels must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and arr.min() < 0:
        raise InputError("labels must not be negative")
    return arr


def painted_background(labels2d: np.ndarray, mode: str) -> np.ndarray:
    """Pixels of one annotated slice painted (sparse) or marked (dense) as background."""
    return np.asarray(labels2d) == (1 if mode == "sparse" else 0)


def make_targets(
    labels: np.ndarray, mode: str, *, n_classes: int | None = None, surround: float = 0.0
) -> Targets:
    """Targets from checked labels shaped ``(S, Y, X)``.

    ``n_classes`` fixes the class count (fine-tuning a given model); otherwise it comes from
    the labels. ``surround`` (sparse labels painted as whole objects): unpainted pixels within
    this many pixels outside a painted object count as background (see :func:`surroundings`).
    """
    return set_targets([labels], mode, n_classes=n_classes, surround=surround)[0]


def set_targets(
    labels: list[np.ndarray], mode: str, *, n_classes: int | None = None, surround: float = 0.0
) -> list[Targets]:
    """Targets for a set of checked label arrays (each ``(S, Y, X)``), with one class count.

    The checks hold for the set: one image may carry only background, or nothing at all (it
    then has no annotated slices), as long as the set has background and objects painted.
    """
    painted = [[s for s in range(lab.shape[0]) if lab[s].any()] for lab in labels]
    if mode == "sparse":
        n = _sparse_classes(labels, painted, n_classes)
        out = []
        for lab, sl in zip(labels, painted, strict=True):
            classes = lab - 1  # 0 (not annotated) -> -1 = IGNORE
            if surround > 0:
                for s in sl:
                    classes[s][surroundings(lab[s], surround)] = 0
            out.append(Targets(classes, None, n, sl))
        return out
    # dense: slices with no object at all count as not annotated and are skipped
    if not any(painted):
        raise InputError("dense labels contain no objects (all 0 = background)")
    n = n_classes if n_classes is not None else 2
    if n != 2:
        raise InputError(f"dense labels train a 2-class model; the given model has {n} classes")
    return [
        Targets((lab > 0).astype(np.int64), lab, 2, sl)
        for lab, sl in zip(labels, painted, strict=True)
    ]


def _sparse_classes(labels: list[np.ndarray], painted: list[list[int]], n_classes) -> int:
    """The class count of painted sparse labels, after checking that they can train."""
    if not any(painted):
        raise InputError(
            "nothing is painted: paint some objects (2, 3, ...) and some background (1)"
        )
    values = np.unique(
        np.concatenate([np.unique(lab[sl]) for lab, sl in zip(labels, painted) if sl])
    )
    values = values[values > 0]
    if len(values) < 2:
        what = "background (1)" if values[0] == 1 else f"objects ({values[0]})"
        raise InputError(
            f"only {what} is painted; sparse labels need background (1) and at least one "
            "object class (2, 3, ...)"
        )
    if 1 not in values:
        raise InputError("no background is painted: paint some background with label 1")
    found = int(values.max())  # label L -> class L - 1
    n = n_classes if n_classes is not None else found
    if found > n:
        raise InputError(f"labels go up to {found} but the model has {n} classes (labels 1..{n})")
    return n


def surroundings(labels2d: np.ndarray, width: float) -> np.ndarray:
    """Unpainted pixels within ``width`` px (Euclidean) outside the painted objects (2, 3, ...).

    When objects are painted whole, edge to edge, these pixels are not part of them: they are
    the gap to the background, or the edge of a touching neighbour. Taking them as background
    teaches the network where an object ends and that touching objects are apart, which the
    background strokes (painted at a distance) do not.
    """
    from scipy import ndimage as ndi

    objects = labels2d >= 2
    if not objects.any():
        return np.zeros(labels2d.shape, bool)
    return (labels2d == 0) & (ndi.distance_transform_edt(~objects) <= width)
