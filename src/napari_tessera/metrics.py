"""Instance-segmentation metrics (object matching by IoU)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Matching:
    tp: int
    fp: int
    fn: int
    mean_matched_iou: float

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        d = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / d if d else 1.0


def match_instances(truth: np.ndarray, pred: np.ndarray, *, threshold: float = 0.5) -> Matching:
    """Match objects one-to-one at IoU >= ``threshold`` (greedy by IoU; unique above 0.5).

    ``truth`` and ``pred`` are label images (0 = background) of the same shape.
    """
    t = np.asarray(truth).ravel().astype(np.int64)
    p = np.asarray(pred).ravel().astype(np.int64)
    if t.shape != p.shape:
        raise ValueError("truth and prediction must have the same shape")
    t_ids, t_inv = np.unique(t, return_inverse=True)
    p_ids, p_inv = np.unique(p, return_inverse=True)
    overlap = np.zeros((len(t_ids), len(p_ids)), np.int64)
    np.add.at(overlap, (t_inv, p_inv), 1)
    t_area = overlap.sum(1)
    p_area = overlap.sum(0)
    ti = slice(1, None) if t_ids[0] == 0 else slice(None)
    pi = slice(1, None) if p_ids[0] == 0 else slice(None)
    inter = overlap[ti, pi].astype(float)
    union = t_area[ti, None] + p_area[None, pi] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    n_t, n_p = iou.shape
    pairs = np.argwhere(iou >= threshold)
    order = np.argsort(-iou[tuple(pairs.T)]) if len(pairs) else []
    used_t, used_p, ious = set(), set(), []
    for k in order:
        a, b = pairs[k]
        if a in used_t or b in used_p:
            continue
        used_t.add(a)
        used_p.add(b)
        ious.append(iou[a, b])
    tp = len(ious)
    return Matching(tp, n_p - tp, n_t - tp, float(np.mean(ious)) if ious else 0.0)
