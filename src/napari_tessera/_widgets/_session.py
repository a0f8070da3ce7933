"""What the widgets share within one napari session: the last model trained."""

from __future__ import annotations

from typing import Any

from psygnal import Signal


class Session:
    """A small registry: the Train widget puts its model here, the Segment widget offers it.

    ``changed`` fires (in the main thread) whenever a new model is registered.
    """

    changed = Signal()

    def __init__(self) -> None:
        self.last_trained_model: Any = None

    def set_trained_model(self, model) -> None:
        self.last_trained_model = model
        self.changed.emit()

    def clear(self) -> None:
        self.last_trained_model = None
        self.changed.emit()


session = Session()
