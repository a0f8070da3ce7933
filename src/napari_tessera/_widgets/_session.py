"""What the widgets share within one napari session: the last model trained."""

from __future__ import annotations

import time
from typing import Any

from psygnal import Signal


class Session:
    """A small registry: the Train widget puts its model here, the Segment widget offers it.

    ``changed`` fires (in the main thread) whenever a new model is registered.
    """

    changed = Signal()

    def __init__(self) -> None:
        self.last_trained_model: Any = None
        self.description: str = ""
        self.trained_at: float | None = None

    def set_trained_model(self, model, description: str = "") -> None:
        self.last_trained_model = model
        self.description = description
        self.trained_at = time.time()
        self.changed.emit()

    def clear(self) -> None:
        self.last_trained_model = None
        self.description = ""
        self.trained_at = None
        self.changed.emit()


session = Session()
