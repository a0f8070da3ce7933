"""The U-Net and its building blocks."""

from .blocks import DoubleConv, Down, OutConv, Up
from .unet import UNet

__all__ = ["DoubleConv", "Down", "OutConv", "UNet", "Up"]
