"""A tiny live loss plot painted with QPainter (no plotting dependency)."""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

TRAIN_COLOR = QColor(90, 160, 255)
VAL_COLOR = QColor(255, 150, 50)


class LossCurve(QWidget):
    """Training loss (every step, smoothed) and validation loss (every validation) vs. step."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.train: list[tuple[int, float]] = []
        self.val: list[tuple[int, float]] = []
        self.total_steps: int | None = None
        self.offset = 0  # steps of earlier runs this one continues (retraining)
        self.setMinimumHeight(130)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.setToolTip("training loss (blue) and validation loss (orange) per step")

    # -- data ---------------------------------------------------------------------------------
    def clear(self, total_steps: int | None = None) -> None:
        self.train.clear()
        self.val.clear()
        self.total_steps = total_steps
        self.offset = 0
        self.update()

    def go_on(self, more_steps: int | None = None) -> None:
        """A run that continues the last one: its steps follow on the same curve."""
        self.offset = max([s for s, _ in self.train] + [0])
        self.total_steps = self.offset + more_steps if more_steps else None
        self.update()

    def add(self, step: int, loss: float, val_loss: float | None = None) -> None:
        if math.isfinite(loss):
            self.train.append((step, float(loss)))
        if val_loss is not None and math.isfinite(val_loss):
            self.val.append((step, float(val_loss)))
        self.update()  # coalesced by Qt: one repaint per event-loop turn at most

    def smoothed(self, alpha: float = 0.15) -> list[tuple[int, float]]:
        out, ema = [], None
        for step, loss in self.train:
            ema = loss if ema is None else (1 - alpha) * ema + alpha * loss
            out.append((step, ema))
        return out

    # -- painting -----------------------------------------------------------------------------
    def paintEvent(self, event):  # noqa: N802 - Qt API
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        fg = self.palette().color(self.foregroundRole())
        dim = QColor(fg)
        dim.setAlpha(110)
        fm = p.fontMetrics()
        left = fm.horizontalAdvance("0.0001") + 8
        plot = QRectF(left, 6, max(self.width() - left - 8, 10), max(self.height() - 30, 10))
        p.setPen(QPen(dim, 1))
        p.drawRect(plot)
        pts = self.smoothed()
        if not pts and not self.val:
            p.setPen(fg)
            p.drawText(plot, Qt.AlignmentFlag.AlignCenter, "loss curve: starts with training")
            p.end()
            return
        values = [v for _, v in self.train] + [v for _, v in self.val]
        lo, hi = min(values), max(values)
        # losses fall over decades: a log axis once they span more than one
        log = lo > 0 and hi / lo > 10
        f = math.log10 if log else (lambda v: v)
        flo, fhi = f(lo), f(hi)
        if fhi - flo < 1e-6:
            fhi = flo + 1e-3
        last = max([s for s, _ in self.train] + [s for s, _ in self.val] + [1])
        x_max = max(self.total_steps or 0, last) if self.total_steps else last
        x_max = max(x_max, 1)

        def to_xy(step: float, v: float) -> QPointF:
            x = plot.left() + plot.width() * (step / x_max)
            y = plot.bottom() - plot.height() * ((f(max(v, lo)) - flo) / (fhi - flo))
            return QPointF(x, y)

        # raw training loss, faint; smoothed, solid
        raw = QColor(TRAIN_COLOR)
        raw.setAlpha(70)
        self._polyline(p, [to_xy(s, v) for s, v in self.train], raw, 1)
        self._polyline(p, [to_xy(s, v) for s, v in pts], TRAIN_COLOR, 2)
        val_pts = [to_xy(s, v) for s, v in self.val]
        self._polyline(p, val_pts, VAL_COLOR, 2)
        p.setBrush(VAL_COLOR)
        for q in val_pts:
            p.drawEllipse(q, 2.5, 2.5)
        # axes labels
        p.setPen(fg)
        p.drawText(QPointF(2, plot.top() + fm.ascent()), _fmt(hi))
        p.drawText(QPointF(2, plot.bottom()), _fmt(lo))
        if log:
            p.drawText(QPointF(2, plot.center().y() + fm.ascent() / 2), "log")
        base = plot.bottom() + fm.ascent() + 4
        p.drawText(QPointF(plot.left(), base), "0")
        end = f"step {x_max}"
        p.drawText(QPointF(plot.right() - fm.horizontalAdvance(end), base), end)
        # legend
        x = plot.left() + fm.horizontalAdvance("0") + 12
        for text, color in (("train", TRAIN_COLOR), ("validation", VAL_COLOR)):
            p.setPen(QPen(color, 2))
            p.drawLine(QPointF(x, base - fm.ascent() / 3), QPointF(x + 14, base - fm.ascent() / 3))
            p.setPen(fg)
            p.drawText(QPointF(x + 18, base), text)
            x += 18 + fm.horizontalAdvance(text) + 14
        p.end()

    @staticmethod
    def _polyline(p: QPainter, pts: list[QPointF], color: QColor, width: float) -> None:
        if len(pts) < 2:
            return
        path = QPainterPath(pts[0])
        for q in pts[1:]:
            path.lineTo(q)
        p.setPen(QPen(color, width))
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.drawPath(path)


def _fmt(v: float) -> str:
    return f"{v:.3f}" if v >= 0.01 else f"{v:.1e}"
