"""Whether a model is a start worth fine-tuning, judged on the user's painting.

Fine-tuning keeps what the starting model does where nothing is painted. That is what a
good start needs (a dozen painted objects correct it without rewriting it), and what a poor
one must not get: on whole cells the built-in nuclei model keeps its idea of an object, and
fine-tuning it scored below a new network on 12 of 15 real images
(docs/benchmarks.md, "Which start"). Before a run with ``TrainConfig(start_if_fits=True)``,
the model segments the painted slices, and the run fine-tunes it only when it already
reproduces the painting: the painted objects come out at a mean IoU of at least
:data:`FITS_IOU` (under the best split rule for them, as fine-tuning would calibrate it), and
it calls at most :data:`~.agreement.WARN_BACKGROUND` of the painted background object (as
the check of a trained model asks). Otherwise the run trains a new network, as from scratch.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..axes import check_channel_count
from ..errors import InputError
from ..postprocess import resolve_split
from .agreement import WARN_BACKGROUND, paint_agreement, painted_classes
from .data import load_sources, painted_slices
from .edges import calibrate_edges, painted_objects
from .labels import painted_background

#: the painted objects' mean IoU from which a model is a start worth fine-tuning
FITS_IOU = 0.8


@dataclass(frozen=True)
class StartFit:
    """How a candidate start segments the painting, and whether the run fine-tunes it.

    fits: the run fine-tunes the candidate (else it trains a new network).
    objects_iou: the painted objects' mean IoU with the candidate's objects (None: not
        measured: too few painted objects, or the candidate cannot read the painting).
    background_wrong: share of the painted background it calls object (None: not measured).
    why: the reason, in words, when it does not fit.
    """

    fits: bool
    objects_iou: float | None = None
    background_wrong: float | None = None
    why: str = ""

    def describe(self, name: str = "the starting model") -> str:
        """One line for the user: which start the run took and why."""
        if self.fits:
            return (
                f"fine-tuning {name}: it already segments the painted objects "
                f"(mean IoU {self.objects_iou:.2f})"
            )
        return f"training a new network: {self.why}"

    def as_metadata(self) -> dict:
        return {
            "fits": self.fits,
            "objects_iou": None if self.objects_iou is None else round(self.objects_iou, 4),
            "background_wrong": (
                None if self.background_wrong is None else round(self.background_wrong, 4)
            ),
            "why": self.why,
        }


def judge_start(items, candidate, *, mode: str, channels, device, name: str) -> StartFit:
    """Whether ``candidate`` fits the painting of ``items`` (:class:`~.data.TrainImage`).

    A candidate that cannot read the images (another channel count) or learn the painting
    (another class count) does not fit; neither does one judged on fewer than three whole
    painted objects (nothing to judge it by).
    """
    try:
        sources = load_sources(items, mode=mode, channels=channels, model=candidate, surround=0.0)
        check_channel_count(candidate.config.in_channels, sources[0].lay)
    except InputError as err:
        return StartFit(False, why=f"{name} cannot train on this painting ({err})")
    painted = painted_slices(sources)
    predicted = painted_classes(candidate, painted, device)
    objects = [painted_objects(src.labels[s], mode) for src, s in painted]
    background = [painted_background(src.labels[s], mode) for src, s in painted]
    base = resolve_split(candidate, instances=True)
    edges = calibrate_edges(predicted, objects, base=base, trust_base=True)
    iou = edges.score
    wrong = paint_agreement(predicted, background, iou).background_wrong
    if iou is None:
        why = f"{edges.objects} whole painted object(s) are too few to judge {name} by"
        return StartFit(False, None, wrong, why)
    parts = []
    if iou < FITS_IOU:
        parts.append(f"segments the painted objects at mean IoU {iou:.2f}")
    if wrong > WARN_BACKGROUND:
        parts.append(f"calls {wrong:.0%} of the painted background object")
    if parts:
        why = f"{name} {' and '.join(parts)} (a good start: IoU {FITS_IOU} or more, "
        why += f"{WARN_BACKGROUND:.0%} of the background at most)"
        return StartFit(False, iou, wrong, why)
    return StartFit(True, iou, wrong)
