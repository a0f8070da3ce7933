"""Measurements per object: one row per labelled object, as a pandas DataFrame.

:func:`measure` takes instance labels (2D ``YX`` or 3D ``ZYX``, or a stack of either over
time, ``TYX`` / ``TZYX``) and, optionally, the image they were made from, and returns a table
with one row per object (per time point). Shape and intensity measurements come from
:func:`skimage.measure.regionprops_table`; physical units from its ``spacing=`` argument.

Columns, in this order (``{u}`` is the ``unit`` word, ``um`` by default; a column whose name
carries no unit is unitless):

- ``t``: the time point (only for labels with a T axis: each time point is measured on its own,
  so an id seen at two time points gives two rows);
- ``label``: the object's id in the labels;
- ``centroid_z_px``, ``centroid_y_px``, ``centroid_x_px``: the centre of mass in pixels
  (voxels) from the first pixel (z only in 3D);
- ``centroid_z_{u}``, ``centroid_y_{u}``, ``centroid_x_{u}``: the same in physical units;
- ``bbox_z0_px``, ``bbox_y0_px``, ``bbox_x0_px``, ``bbox_z1_px``, ``bbox_y1_px``,
  ``bbox_x1_px``: the bounding box in pixels, ``y1`` / ``x1`` / ``z1`` one past the last row
  (a numpy slice ``y0:y1`` holds the object);
- ``area_px`` and ``area_{u}2`` (2D) or ``volume_vox`` and ``volume_{u}3`` (3D): the object's
  size in pixels (voxels) and in physical units;
- ``equivalent_diameter_px``, ``equivalent_diameter_{u}``: the diameter of the circle (2D) or
  sphere (3D) with the object's area (volume);
- ``solidity`` (area / area of the convex hull) and ``eccentricity`` (of the ellipse with the
  same second moments: 0 a circle, towards 1 a line), in 2D only, computed on the physical
  shape when a voxel size is known (on the pixel grid otherwise; the same for square pixels);
- per channel of the image (``{c}`` = ``ch0``, ``ch1``, ... or the given channel names):
  ``mean_intensity_{c}``, ``max_intensity_{c}`` and ``integrated_intensity_{c}`` (the sum
  over the object's pixels).

With no voxel size the physical columns are left out (a column named in micrometres never holds
pixels). Without an image there are no intensity columns. Labels with no object give a table
with these columns and no rows.
"""

from __future__ import annotations

import math
import numbers
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .axes import normalize_axes
from .errors import InputError

if TYPE_CHECKING:
    import pandas as pd

LABEL_AXES = {2: "YX", 3: "ZYX", 4: "TZYX"}
_UNIT = re.compile(r"[A-Za-z]\w*")


def default_axes(ndim: int) -> str:
    """The axes of labels given without them: ``YX``, ``ZYX`` or ``TZYX`` (``TYX`` is
    never guessed: say it)."""
    if ndim not in LABEL_AXES:
        raise InputError(
            f"labels must be 2D (YX) or 3D (ZYX), or a stack of them over time (TYX, TZYX); "
            f"got {ndim} dimensions"
        )
    return LABEL_AXES[ndim]


def check_label_axes(axes: str | None, ndim: int) -> str:
    """Labels axes (default by dimensions), checked: T, Z, Y and X, with Y and X."""
    if axes is None:
        return default_axes(ndim)
    axes = normalize_axes(axes)
    if set(axes) - set("TZYX") or len(set(axes)) != len(axes) or not {"Y", "X"} <= set(axes):
        raise InputError(
            f"labels axes must be YX, ZYX, TYX or TZYX (each at most once), got {axes!r}"
        )
    if len(axes) != ndim:
        raise InputError(f"labels axes {axes!r} name {len(axes)} axes but the labels have {ndim}")
    return axes


def spatial_axes(axes: str) -> str:
    """The axes a voxel size is given for: ``ZYX`` or ``YX``."""
    return "ZYX" if "Z" in axes else "YX"


def check_voxel_size(voxel_size, axes: str) -> tuple[float, ...] | None:
    """``voxel_size`` for labels with ``axes``: one positive size per spatial axis (Z, Y, X or
    Y, X), or one number for all of them; None stays None."""
    if voxel_size is None:
        return None
    space = spatial_axes(axes)
    if isinstance(voxel_size, numbers.Real) and not isinstance(voxel_size, bool):
        voxel_size = (voxel_size,) * len(space)
    try:
        sizes = tuple(float(v) for v in voxel_size)
    except (TypeError, ValueError):
        raise InputError(
            f"voxel size must be numbers ({','.join(space)}), got {voxel_size!r}"
        ) from None
    if len(sizes) != len(space):
        dims = "3D" if len(space) == 3 else "2D"
        raise InputError(
            f"the voxel size gives {len(sizes)} value(s) but the labels are {dims} "
            f"({axes}): give {','.join(space)}"
        )
    if not all(0 < v < math.inf for v in sizes):
        raise InputError(f"voxel size must be positive numbers, got {voxel_size!r}")
    return sizes


def fit_voxel_size(from_file, axes: str) -> tuple[tuple[float, ...] | None, str | None]:
    """A voxel size read from a file, fitted to labels with ``axes``: ``(sizes, note)``.

    A file's Z spacing is dropped for 2D labels; a file that gives only Y and X for 3D labels
    gives no voxel size (the note says so) rather than a guessed Z spacing.
    """
    if from_file is None:
        return None, None
    sizes = tuple(float(v) for v in from_file)
    space = spatial_axes(axes)
    if len(space) == 2:
        return sizes[-2:], None
    if len(sizes) == 3:
        return sizes, None
    return None, (
        "the file gives its pixel size (Y, X) but no Z spacing: the table is in voxels only; "
        "give --voxel-size Z,Y,X for physical units"
    )


def _unit_word(unit: str) -> str:
    if not isinstance(unit, str) or not _UNIT.fullmatch(unit):
        raise InputError(f"unit must be a word such as 'um' or 'nm', got {unit!r}")
    return unit


def _check_labels(labels) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.dtype == bool:
        return labels.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"labels must be integers (object ids), got {labels.dtype}")
    if labels.size == 0:
        raise InputError(f"labels are empty (shape {labels.shape})")
    if np.issubdtype(labels.dtype, np.signedinteger) and labels.min() < 0:
        raise InputError("labels must not be negative (0 is background, 1... objects)")
    return labels


def _image_axes(image_shape, labels_shape, axes: str) -> str:
    """The axes of an image given without them: the labels' (one channel), or theirs plus a
    channel axis last or first, whichever fits the labels' shape."""
    image_shape, labels_shape = tuple(image_shape), tuple(labels_shape)
    if image_shape == labels_shape:
        return axes
    if len(image_shape) == len(labels_shape) + 1:
        last = image_shape[:-1] == labels_shape
        first = image_shape[1:] == labels_shape
        if last and not first:
            return axes + "C"
        if first and not last:
            return "C" + axes
        if last and first:
            raise InputError(
                f"image shape {image_shape} fits labels {labels_shape} with channels first or "
                f"last: give image_axes (e.g. 'C{axes}' or '{axes}C')"
            )
    raise InputError(
        f"image shape {image_shape} does not match labels shape {labels_shape} ({axes}); "
        "give image_axes if the image has a channel axis"
    )


def _image_channels_last(image, image_axes: str | None, labels_shape, axes: str) -> np.ndarray:
    """The image as ``(*labels axes, C)``, checked against the labels."""
    image = np.asarray(image)
    if not (np.issubdtype(image.dtype, np.number) or image.dtype == bool) or np.iscomplexobj(image):
        raise InputError(f"image must hold real numbers, got {image.dtype}")
    if image.dtype == bool:
        image = image.astype(np.uint8)
    if image_axes is None:
        image_axes = _image_axes(image.shape, labels_shape, axes)
    image_axes = normalize_axes(image_axes)
    if len(image_axes) != image.ndim or len(set(image_axes)) != len(image_axes):
        raise InputError(
            f"image axes {image_axes!r} do not fit an image of {image.ndim} dimensions "
            f"(shape {image.shape})"
        )
    if set(image_axes) - {"C"} != set(axes):
        raise InputError(
            f"image axes {image_axes!r} must be the labels axes {axes!r}, with or without C"
        )
    order = [image_axes.index(a) for a in axes]
    if "C" in image_axes:
        image = np.transpose(image, [*order, image_axes.index("C")])
    else:
        image = np.transpose(image, order)[..., None]
    if image.shape[:-1] != tuple(labels_shape):
        raise InputError(
            f"image shape {image.shape[:-1]} ({axes}, without channels) does not match labels "
            f"shape {tuple(labels_shape)}"
        )
    return image


def _channel_words(names, n: int) -> list[str]:
    if names is None:
        return [f"ch{c}" for c in range(n)]
    words = [str(v).strip() for v in names]
    if len(words) != n:
        raise InputError(f"{len(words)} channel name(s) given but the image has {n} channel(s)")
    if any(not w for w in words) or len(set(words)) != len(words):
        raise InputError(f"channel names must be distinct and not empty, got {list(names)!r}")
    return words


def columns(
    axes: str, channels: Sequence[str] = (), physical: bool = False, unit: str = "um"
) -> list[str]:
    """The table's columns for labels with ``axes`` (see the module's docstring)."""
    space = spatial_axes(axes).lower()
    three = len(space) == 3
    cols = ["t"] if "T" in axes else []
    cols.append("label")
    cols += [f"centroid_{a}_px" for a in space]
    if physical:
        cols += [f"centroid_{a}_{unit}" for a in space]
    cols += [f"bbox_{a}0_px" for a in space] + [f"bbox_{a}1_px" for a in space]
    cols.append("volume_vox" if three else "area_px")
    if physical:
        cols.append(f"volume_{unit}3" if three else f"area_{unit}2")
    cols.append("equivalent_diameter_px")
    if physical:
        cols.append(f"equivalent_diameter_{unit}")
    if not three:
        cols += ["solidity", "eccentricity"]
    for c in channels:
        cols += [f"mean_intensity_{c}", f"max_intensity_{c}", f"integrated_intensity_{c}"]
    return cols


def measure(
    labels,
    image=None,
    *,
    axes: str | None = None,
    image_axes: str | None = None,
    voxel_size=None,
    unit: str = "um",
    channel_names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """One row per object of ``labels``: position, size, shape and intensities (see the
    module's docstring for the columns).

    labels: instance labels (0 = background), 2D or 3D, or a stack of them over time.
    image: the image measured inside each object (None: no intensity columns): shaped like
        ``labels`` (one channel), or with a channel axis first or last (``image_axes`` says
        which when both would fit).
    axes: the labels' axes, ``YX``, ``ZYX``, ``TYX`` or ``TZYX``; default by dimensions
        (``YX``, ``ZYX``, ``TZYX``: a 3D stack over time must be said, ``axes="TYX"``).
    image_axes: the image's axes: the labels' axes with or without ``C`` (channels), in any
        order, e.g. ``"CZYX"`` or ``"ZYXC"``.
    voxel_size: the physical size of a pixel (voxel) per spatial axis, ``(Z, Y, X)`` or
        ``(Y, X)``, or one number for all; None: the physical columns are left out.
    unit: the unit of ``voxel_size``, as it appears in the column names (``area_um2``).
    channel_names: names for the image's channels in the intensity columns (default ``ch0``,
        ``ch1``, ...).

    Raises :class:`~napari_tessera.errors.InputError` for labels or an image that do not fit.
    """
    import pandas as pd

    labels = _check_labels(labels)
    axes = check_label_axes(axes, labels.ndim)
    unit = _unit_word(unit)
    spacing = check_voxel_size(voxel_size, axes)
    channels: list[str] = []
    intensity = None
    if image is not None:
        intensity = _image_channels_last(image, image_axes, labels.shape, axes)
        channels = _channel_words(channel_names, intensity.shape[-1])
    elif channel_names is not None:
        raise InputError("channel names were given without an image")
    # one order: T first, then Z, Y, X
    canon = "".join(a for a in "TZYX" if a in axes)
    order = [axes.index(a) for a in canon]
    labels = np.transpose(labels, order)
    if intensity is not None:
        intensity = np.transpose(intensity, [*order, labels.ndim])
    names = columns(canon, channels, spacing is not None, unit)
    if "T" in canon:
        parts = []
        for t in range(labels.shape[0]):
            sub = None if intensity is None else intensity[t]
            part = _measure_one(labels[t], sub, spacing, unit, channels)
            part.insert(0, "t", t)
            parts.append(part)
        table = pd.concat(parts, ignore_index=True)
    else:
        table = _measure_one(labels, intensity, spacing, unit, channels)
    return table[names]


def _measure_one(
    labels: np.ndarray, intensity, spacing, unit: str, channels: Sequence[str]
) -> pd.DataFrame:
    """The table of one 2D or 3D labels array (``intensity``: channels last, or None)."""
    import pandas as pd
    from scipy import ndimage as ndi
    from skimage.measure import regionprops_table

    space = "zyx"[3 - labels.ndim :]
    three = labels.ndim == 3
    props = ["label", "centroid", "bbox", "num_pixels", "equivalent_diameter_area"]
    if not three:
        props += ["solidity", "eccentricity"]
    if intensity is not None:
        props += ["intensity_mean", "intensity_max"]
    px = regionprops_table(labels, intensity_image=intensity, properties=props)
    n = labels.ndim
    out: dict[str, np.ndarray] = {"label": px["label"].astype(np.int64)}
    for i, a in enumerate(space):
        out[f"centroid_{a}_px"] = px[f"centroid-{i}"]
    for i, a in enumerate(space):
        out[f"bbox_{a}0_px"] = px[f"bbox-{i}"]
        out[f"bbox_{a}1_px"] = px[f"bbox-{i + n}"]
    out["volume_vox" if three else "area_px"] = px["num_pixels"].astype(np.int64)
    out["equivalent_diameter_px"] = px["equivalent_diameter_area"]
    if not three:
        out["solidity"], out["eccentricity"] = px["solidity"], px["eccentricity"]
    if spacing is not None:
        phys_props = ["label", "area", "centroid", "equivalent_diameter_area"]
        if not three:
            phys_props += ["solidity", "eccentricity"]
        ph = regionprops_table(labels, properties=phys_props, spacing=spacing)
        for i, a in enumerate(space):
            out[f"centroid_{a}_{unit}"] = ph[f"centroid-{i}"]
        out[f"volume_{unit}3" if three else f"area_{unit}2"] = ph["area"]
        out[f"equivalent_diameter_{unit}"] = ph["equivalent_diameter_area"]
        if not three:  # the shape as it is in space (the same as in pixels for square pixels)
            out["solidity"], out["eccentricity"] = ph["solidity"], ph["eccentricity"]
    if intensity is not None:
        ids = out["label"]
        for c, word in enumerate(channels):
            out[f"mean_intensity_{word}"] = px[f"intensity_mean-{c}"]
            out[f"max_intensity_{word}"] = px[f"intensity_max-{c}"]
            values = np.asarray(intensity[..., c], dtype=np.float64)
            out[f"integrated_intensity_{word}"] = (
                np.asarray(ndi.sum_labels(values, labels, index=ids), dtype=np.float64)
                if len(ids)
                else np.zeros(0, np.float64)
            )
    return pd.DataFrame(out)


def write_table_csv(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``table`` as CSV (no index column) atomically: to a temporary file beside
    ``path``, then renamed onto it; a failure leaves no partial file and ``path`` as it was."""
    from .images import atomic_path

    path = Path(path)
    if path.is_dir():
        raise InputError(f"the table's path is a folder, not a file: {path}")
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
    return path
