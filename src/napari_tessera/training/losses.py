"""Losses and metrics that only look at annotated pixels.

Pixels whose target is ``IGNORE`` (not annotated) contribute nothing to the supervised loss:
changing the image or the prediction there does not change it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .labels import IGNORE


def segmentation_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    *,
    dice: float = 1.0,
    balance: bool = False,
) -> torch.Tensor:
    """Pixel-weighted cross-entropy (BCE-with-logits for 1 output) plus a soft Dice term.

    logits: ``(N, C, Y, X)``; target: ``(N, Y, X)`` int64 with ``IGNORE`` for not annotated;
    weight: optional ``(N, Y, X)`` per-pixel weights (the U-Net paper's border weights).
    balance: every class present in the batch weighs the same in the cross-entropy, however
        many of its pixels are annotated (the paper's class-frequency weights, per batch).
    The Dice term is ``1 - soft Dice`` of the object classes over annotated pixels; the
    loss is 0 (still a function of ``logits``) when nothing is annotated.
    """
    return LossTerms.of(logits, target, weight).loss(dice=dice, balance=balance)


@dataclass
class LossTerms:
    """The sums :func:`segmentation_loss` is made of, for one batch or many.

    Summed over several batches (``+``), they give the loss of all of them taken as one
    batch. Validation adds its batches up this way: a soft Dice averaged batch by batch would
    score a block with no painted object by how sure the model is of the background there
    (``1 / (1 + summed object probability)``), not by whether it is right.
    """

    ce: torch.Tensor  # per class: weighted cross-entropy summed over its annotated pixels
    ce_weight: torch.Tensor  # per class: the weights summed
    inter: torch.Tensor  # per object class: soft Dice intersection
    denom: torch.Tensor  # per object class: predicted plus painted

    @classmethod
    def of(cls, logits, target, weight=None) -> LossTerms:
        mask = target != IGNORE
        w = mask.float() if weight is None else weight * mask
        safe = target.clamp_min(0)
        n_classes = max(logits.shape[1], 2)
        if logits.shape[1] == 1:
            pix = F.binary_cross_entropy_with_logits(logits[:, 0], safe.float(), reduction="none")
            prob_fg = torch.sigmoid(logits[:, 0])[:, None]
            onehot_fg = safe.float()[:, None]
        else:
            pix = F.cross_entropy(logits, safe, reduction="none")
            prob_fg = torch.softmax(logits, dim=1)[:, 1:]
            onehot_fg = F.one_hot(safe, logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].float()
        wc = torch.stack([w * (safe == c) for c in range(n_classes)])
        m = mask[:, None].float()
        return cls(
            ce=(pix[None] * wc).sum(dim=(1, 2, 3)),
            ce_weight=wc.sum(dim=(1, 2, 3)),
            inter=(prob_fg * onehot_fg * m).sum(dim=(0, 2, 3)),
            denom=((prob_fg + onehot_fg) * m).sum(dim=(0, 2, 3)),
        )

    def __add__(self, other: LossTerms) -> LossTerms:
        return LossTerms(
            self.ce + other.ce,
            self.ce_weight + other.ce_weight,
            self.inter + other.inter,
            self.denom + other.denom,
        )

    def loss(self, *, dice: float = 1.0, balance: bool = False) -> torch.Tensor:
        """The loss of the summed pixels (see :func:`segmentation_loss`); 0 without any."""
        if not bool((self.ce_weight > 0).any()):
            return self.ce.sum() * 0.0
        if balance:
            present = self.ce_weight > 0
            ce = (self.ce[present] / self.ce_weight[present]).mean()
        else:
            ce = self.ce.sum() / self.ce_weight.sum().clamp_min(1e-6)
        if dice <= 0:
            return ce
        soft_dice = (2 * self.inter + 1.0) / (self.denom + 1.0)
        return ce + dice * (1 - soft_dice.mean())


def kept_predictions(
    logits: torch.Tensor, target: torch.Tensor, soft: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy from ``soft`` class probabilities to the predictions, over pixels nobody
    painted (0 without such pixels).

    When fine-tuning, ``soft`` holds the starting model's own predictions: the painted pixels
    correct the model, and this term keeps what it did everywhere else (distillation, Hinton
    et al. 2015). It is the KL divergence from the start's predictions up to a constant, so it
    is smallest when the model still agrees with its start where nothing was painted.
    """
    free = (target == IGNORE).float()
    if logits.shape[1] == 1:
        ce = F.binary_cross_entropy_with_logits(logits[:, 0], soft[:, 0], reduction="none")
    else:
        ce = -(soft * torch.log_softmax(logits, dim=1)).sum(dim=1)
    return (ce * free).sum() / free.sum().clamp_min(1.0)


@torch.no_grad()
def annotated_iou(logits: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """Intersection and union of the predicted and painted objects over annotated pixels.

    Returns the sums (to accumulate across batches); IoU = intersection / union. Objects are
    all non-background classes, each matched to its own class.
    """
    mask = target != IGNORE
    if logits.shape[1] == 1:
        pred = (logits[:, 0] > 0).long()
    else:
        pred = logits.argmax(1)
    t = target.clamp_min(0)
    inter = ((pred == t) & (t > 0) & mask).sum().item()
    union = (((pred > 0) | (t > 0)) & mask).sum().item()
    return float(inter), float(union)
