"""Training from painted (sparse) or complete (dense) labels; Qt-free."""

from .data import PaintFeed, TrainImage
from .labels import CONVENTION, IGNORE, make_targets
from .loop import TrainConfig, TrainResult, TrainUpdate, iter_train, train
from .losses import annotated_iou, segmentation_loss
from .weights import border_weights

__all__ = [
    "CONVENTION",
    "IGNORE",
    "PaintFeed",
    "TrainConfig",
    "TrainImage",
    "TrainResult",
    "TrainUpdate",
    "annotated_iou",
    "border_weights",
    "iter_train",
    "make_targets",
    "segmentation_loss",
    "train",
]
