"""Corrected results as training data: a human checks part of a segmentation and fixes it.

The user turns a result (one id per object) into an editable layer, deletes wrong objects,
paints missed ones, gives the parts of a merged object different ids, and marks the region
they checked. Inside that region the corrected objects are complete labels; outside it nothing
is known. :func:`corrected_labels` writes that as sparse labels (the painting convention), so
it trains with the same loss, split and calibration as painting, and combines with earlier
paint:

- checked pixels: background 1, objects 2; where two objects touch, the 1-pixel line between
  them is background, so touching objects are learnt apart;
- an object that reaches into the checked region counts whole (it was looked at);
- everything else keeps the earlier paint (0 = not annotated), so a corrected region is never
  mistaken for an unpainted one, and unchecked parts of the result never become labels.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ..errors import InputError


def corrected_labels(objects, checked, earlier=None) -> np.ndarray:
    """Sparse labels (uint8: 0 not annotated, 1 background, 2 object) from corrected objects.

    objects: integer ids, one per object (0 = background), a 2D image or a stack (``(S, Y,
        X)``, corrected slice by slice).
    checked: boolean mask of the same shape: what the user checked.
    earlier: sparse labels painted before (same shape), kept outside the checked region.
    """
    obj = np.asarray(objects)
    mask = np.asarray(checked, dtype=bool)
    if obj.dtype.kind not in "biu":
        raise InputError(f"corrected objects must be integer labels, got {obj.dtype}")
    if mask.shape != obj.shape:
        raise InputError(f"the checked region is {mask.shape} but the objects are {obj.shape}")
    if earlier is not None and np.shape(earlier) != obj.shape:
        raise InputError(
            f"the earlier annotations are {np.shape(earlier)} but the objects are {obj.shape}"
        )
    out = np.zeros(obj.shape, np.uint8) if earlier is None else np.array(earlier, np.uint8)
    if obj.ndim == 2:
        _correct_slice(obj, mask, out)
    else:
        for s in np.ndindex(obj.shape[:-2]):
            _correct_slice(obj[s], mask[s], out[s])
    return out


def _correct_slice(obj: np.ndarray, mask: np.ndarray, out: np.ndarray) -> None:
    if not mask.any():
        return
    touched = np.unique(obj[mask & (obj > 0)])
    region = mask | np.isin(obj, touched)  # objects reaching into the region count whole
    out[region] = np.where(obj[region] > 0, 2, 1)
    out[region & _contacts(obj)] = 1


def _contacts(obj: np.ndarray) -> np.ndarray:
    """The line between touching objects: pixels with a 4-neighbour of a higher id."""
    hi = ndi.maximum_filter(obj, footprint=ndi.generate_binary_structure(2, 1), mode="nearest")
    return (obj > 0) & (hi != obj)
