"""Painting while a model trains: each stroke on a run's annotation layers reaches the run.

napari emits a Labels layer's ``paint`` event in the main thread after every stroke (and
``data`` when the array is replaced). :class:`PaintWatch` answers each with a copy of the
labels, posted to the run's :class:`~napari_tessera.training.PaintFeed`; the run takes the
latest at its next sampling round. Only the main thread reads the layers.

The copy is made once the event loop is back, not in the event: napari emits ``paint``
for a single edit before it writes the array, and a burst of events makes one copy.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from qtpy.QtCore import QTimer

from ..training.data import PaintFeed


class PaintWatch:
    """The connections from layer events to one run's feed, undone by :meth:`close`."""

    def __init__(self, feed: PaintFeed) -> None:
        self.feed = feed
        self._links: list[tuple[object, Callable]] = []
        self._due: set[int] = set()  # images with events not yet posted
        self.posted = 0  # posts so far

    def watch(self, index: int, events, read: Callable[[], np.ndarray | None]) -> None:
        """Post ``read()`` as image ``index``'s labels whenever one of ``events`` fires
        (``read`` returns None to post nothing)."""

        def post() -> None:
            self._due.discard(index)
            if not self._links:  # closed meanwhile
                return
            labels = read()
            if labels is not None:
                self.feed.post(index, labels)
                self.posted += 1

        def later(*_) -> None:
            if index not in self._due:
                self._due.add(index)
                QTimer.singleShot(0, post)

        for event in events:
            event.connect(later)
            self._links.append((event, later))

    def close(self) -> None:
        for event, callback in self._links:
            event.disconnect(callback)
        self._links = []
