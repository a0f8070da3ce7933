"""The napari side of Tessera: the only code that imports napari or Qt.

``SegmentWidget`` and ``TrainWidget`` are the dock widgets of the npe2 manifest; ``session``
holds the last model trained in this napari session (the Segment widget offers it).
"""

from ._segment import SegmentWidget
from ._session import Session, session
from ._train import TrainWidget

__all__ = ["Session", "SegmentWidget", "TrainWidget", "session"]
