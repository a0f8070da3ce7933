"""Whether the trained model has learnt the painting it was trained on.

A run that has learnt the painted objects segments the painted pixels as painted. A run that
has not can still score well on a few held-out blocks: the failure seen on real images is a
model that calls large empty areas "object", painted background strokes among them, while the
painted objects still come out at a fair IoU. Two numbers on the user's own painting tell
such a run apart without any other ground truth (docs/benchmarks.md, "Feedback"): the share
of the painted background the kept model calls object, and the painted objects' mean IoU with
the objects it draws there (the split-rule calibration's score, :mod:`.edges`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..inference import predict_tiled
from ..postprocess import classes_from_probabilities

#: a larger share of the painted background called object: the painting was not learnt
WARN_BACKGROUND = 0.10
#: a lower mean IoU of the painted objects: the model does not reproduce what was painted
WARN_OBJECTS_IOU = 0.6


@dataclass(frozen=True)
class PaintAgreement:
    """The kept model on the pixels the user painted.

    background_wrong: share of the painted background pixels it calls an object class.
    background_pixels: how many painted background pixels were judged.
    objects_iou: mean IoU of the painted objects with the objects it draws there under the
        stored split rule (None: not calibrated).
    """

    background_wrong: float
    background_pixels: int
    objects_iou: float | None = None

    def problems(self) -> list[str]:
        """What says the painting was not learnt (empty: nothing)."""
        out = []
        if self.background_wrong > WARN_BACKGROUND:
            out.append(f"it calls {self.background_wrong:.0%} of the painted background object")
        if self.objects_iou is not None and self.objects_iou < WARN_OBJECTS_IOU:
            out.append(f"the painted objects come out at mean IoU {self.objects_iou:.2f}")
        return out

    @property
    def learnt(self) -> bool:
        return not self.problems()

    def describe(self) -> str:
        """One line for the user; a warning with advice when the painting was not learnt."""
        problems = self.problems()
        if not problems:
            return f"the model calls {self.background_wrong:.0%} of the painted background object"
        return (
            f"the model has not learnt the painting: {' and '.join(problems)}; expect wrong "
            "objects elsewhere too (paint background where it goes wrong and train again)"
        )

    def as_metadata(self) -> dict:
        return {
            "background_wrong": round(self.background_wrong, 4),
            "background_pixels": self.background_pixels,
            "objects_iou": self.objects_iou,
            "learnt": self.learnt,
        }


def paint_agreement(
    predicted: list[np.ndarray], background: list[np.ndarray], objects_iou: float | None = None
) -> PaintAgreement:
    """:class:`PaintAgreement` of predicted class maps with the painting.

    predicted: per-pixel classes (0 = background), one 2D map per painted slice.
    background: the painted background of the same slices (boolean; only what the user
        painted, no band added around objects).
    objects_iou: the painted objects' mean IoU under the stored split rule, or None.
    """
    wrong = n = 0
    for pred, bg in zip(predicted, background, strict=True):
        bg = np.asarray(bg, bool)
        n += int(bg.sum())
        wrong += int(np.count_nonzero(np.asarray(pred)[bg] != 0))
    return PaintAgreement(wrong / n if n else 0.0, n, objects_iou)


def painted_classes(model, painted, device) -> list[np.ndarray]:
    """``model``'s classes on each painted ``(source, slice)``, segmented as a user would."""
    out = []
    for src, s in painted:
        sl = np.asarray(src.lay.slice_view(src.image, s))
        prob = predict_tiled(model, sl, axes="CYX", device=device)
        out.append(classes_from_probabilities(prob))
    return out
