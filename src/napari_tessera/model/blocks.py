"""U-Net building blocks (Ronneberger et al., 2015), for "same" and the paper's "valid" padding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def center_crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Crop the last two axes of ``x`` to ``(height, width)`` around the centre."""
    dy = (x.shape[-2] - height) // 2
    dx = (x.shape[-1] - width) // 2
    return x[..., dy : dy + height, dx : dx + width]


def pad_or_crop_to(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Zero-pad or centre-crop the last two axes of ``x`` to ``(height, width)``.

    Needed in "same" mode when an input side is not a multiple of 2**depth: the upsampled
    map is then one pixel short of its skip connection.
    """
    dy, dx = height - x.shape[-2], width - x.shape[-1]
    if dy < 0 or dx < 0:
        x = center_crop(x, min(height, x.shape[-2]), min(width, x.shape[-1]))
        dy, dx = height - x.shape[-2], width - x.shape[-1]
    if dy or dx:
        x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
    return x


class DoubleConv(nn.Sequential):
    """2 x (3x3 convolution, BatchNorm, ReLU); no bias before BatchNorm.

    ``padding=1`` keeps the size ("same"); ``padding=0`` shrinks each side by 2 ("valid").
    """

    def __init__(self, in_channels: int, out_channels: int, *, padding: int, dropout: float = 0.0):
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, 3, padding=padding, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=padding, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        ]
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        super().__init__(*layers)


class Down(nn.Sequential):
    """2x2 max-pool, then DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int, *, padding: int, dropout: float = 0.0):
        super().__init__(
            nn.MaxPool2d(2),
            DoubleConv(in_channels, out_channels, padding=padding, dropout=dropout),
        )


class Up(nn.Module):
    """Upsample x2 (transposed conv, or bilinear + 1x1 conv), halve the channels, join the skip.

    In "same" mode the upsampled map is padded (or cropped) to the skip's size; in "valid" mode
    the skip is centre-cropped to the upsampled map, as in the paper.
    """

    def __init__(self, in_channels: int, out_channels: int, *, mode: str, padding: int):
        super().__init__()
        self.mode = mode
        self.valid = padding == 0
        if mode == "transpose":
            self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
        else:
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(in_channels, in_channels // 2, kernel_size=1),
            )
        self.conv = DoubleConv(in_channels // 2 + out_channels, out_channels, padding=padding)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        if self.valid:
            skip = center_crop(skip, x.shape[-2], x.shape[-1])
        else:
            x = pad_or_crop_to(x, skip.shape[-2], skip.shape[-1])
        return self.conv(torch.cat([skip, x], dim=1))


class OutConv(nn.Conv2d):
    """1x1 convolution to the class scores (logits)."""

    def __init__(self, in_channels: int, n_classes: int):
        super().__init__(in_channels, n_classes, kernel_size=1)
