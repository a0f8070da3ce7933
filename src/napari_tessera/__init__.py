"""napari-tessera: U-Net segmentation of microscopy images with mirrored overlap-tile inference.

The core (model, tiling, inference, training, I/O, CLI) imports neither Qt nor napari.
"""

from .config import Normalization, UNetConfig
from .errors import ConfigError, InputError, ModelFileError, TesseraError
from .inference import predict_tiled, segment
from .io import load_model, save_model
from .measure import measure, write_table_csv
from .model import UNet

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "InputError",
    "ModelFileError",
    "Normalization",
    "TesseraError",
    "UNet",
    "UNetConfig",
    "__version__",
    "load_model",
    "measure",
    "predict_tiled",
    "save_model",
    "segment",
    "write_table_csv",
]
