"""Losses and metrics that only look at annotated pixels.

Pixels whose target is ``IGNORE`` (not annotated) contribute nothing to the supervised loss:
changing the image or the prediction there does not change it.
"""

from __future__ import annotations

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
    The Dice term is ``1 - soft Dice`` of the object classes over annotated pixels.
    """
    mask = target != IGNORE
    n_annot = mask.sum()
    if n_annot == 0:
        return logits.sum() * 0.0
    w = mask.float() if weight is None else weight * mask
    safe = target.clamp_min(0)
    if logits.shape[1] == 1:
        pix = F.binary_cross_entropy_with_logits(logits[:, 0], safe.float(), reduction="none")
        prob_fg = torch.sigmoid(logits[:, 0])[:, None]
        onehot_fg = safe.float()[:, None]
    else:
        pix = F.cross_entropy(logits, safe, reduction="none")
        prob_fg = torch.softmax(logits, dim=1)[:, 1:]
        onehot_fg = F.one_hot(safe, logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].float()
    if balance:
        per_class = []
        for c in range(max(logits.shape[1], 2)):
            wc = w * (safe == c)
            total = wc.sum()
            if total > 0:
                per_class.append((pix * wc).sum() / total)
        ce = torch.stack(per_class).mean()
    else:
        ce = (pix * w).sum() / w.sum().clamp_min(1e-6)
    if dice <= 0:
        return ce
    m = mask[:, None].float()
    inter = (prob_fg * onehot_fg * m).sum(dim=(0, 2, 3))
    denom = ((prob_fg + onehot_fg) * m).sum(dim=(0, 2, 3))
    soft_dice = (2 * inter + 1.0) / (denom + 1.0)
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
