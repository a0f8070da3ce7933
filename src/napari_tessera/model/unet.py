"""The classic U-Net, configurable in width, depth, upsampling, padding and dropout."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config import UNetConfig
from ..errors import InputError
from .blocks import DoubleConv, Down, OutConv, Up


class UNet(nn.Module):
    """U-Net with ``config.depth`` poolings; returns class logits ``(N, n_classes, H', W')``.

    In "same" mode ``H' == H`` for any input side of at least :attr:`size_multiple` (sizes that
    are multiples of it avoid padding inside the network). In "valid" mode the output is the
    centre of the input, ``margin`` pixels smaller on each side (572 -> 388 for depth 4); use
    :meth:`output_size` / :meth:`valid_input_size` to pick sizes.

    ``metadata`` carries what a model file stores beside the weights: class names and provenance.
    """

    def __init__(self, config: UNetConfig | None = None, *, metadata: dict[str, Any] | None = None):
        super().__init__()
        self.config = config = config if config is not None else UNetConfig()
        self.metadata: dict[str, Any] = dict(metadata or {})
        pad = 1 if config.padding == "same" else 0
        ch = config.channels()
        deep = {config.depth, config.depth - 1}  # the paper puts dropout at the deepest levels
        self.inc = DoubleConv(config.in_channels, ch[0], padding=pad)
        self.downs = nn.ModuleList(
            Down(ch[i], ch[i + 1], padding=pad, dropout=config.dropout if i + 1 in deep else 0.0)
            for i in range(config.depth)
        )
        self.ups = nn.ModuleList(
            Up(ch[i + 1], ch[i], mode=config.upsampling, padding=pad)
            for i in reversed(range(config.depth))
        )
        self.outc = OutConv(ch[0], config.n_classes)

    # -- forward -------------------------------------------------------------------------------
    def _run(self, block: nn.Module, *args: torch.Tensor) -> torch.Tensor:
        if self.config.checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(
                block,
                *args,
                use_reentrant=False,
                context_fn=lambda: (contextlib.nullcontext(), _FrozenBatchNormStats(block)),
            )
        return block(*args)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self._run(self.inc, x)]
        for down in self.downs:
            skips.append(self._run(down, skips[-1]))
        x = skips.pop()
        for up in self.ups:
            x = self._run(up, x, skips.pop())
        return self.outc(x)

    # -- geometry ------------------------------------------------------------------------------
    @property
    def size_multiple(self) -> int:
        """2**depth: tile origins must sit on this grid so every tile pools like the whole image."""
        return self.config.size_multiple

    def output_size(self, size: int) -> int:
        """Output side length for an input side length (identity in "same" mode).

        Raises :class:`InputError` for a "valid"-mode size that the network cannot take.
        """
        if self.config.padding == "same":
            return size
        s = size
        for _ in range(self.config.depth):
            s -= 4
            if s <= 0 or s % 2:
                raise InputError(
                    f"{size} px is not a valid input size for this valid-padding U-Net"
                )
            s //= 2
        s -= 4
        for _ in range(self.config.depth):
            if s <= 0:
                break
            s = 2 * s - 4
        if s <= 0:
            raise InputError(f"{size} px is too small for this valid-padding U-Net")
        return s

    def valid_input_size(self, min_output: int = 1) -> int:
        """Smallest input side whose output side is at least ``min_output`` (any padding mode)."""
        m = self.size_multiple
        if self.config.padding == "same":
            return max(m, -(-min_output // m) * m)
        d = self.config.depth
        bottom = 1
        while m * bottom - 4 * (m - 1) < min_output:
            bottom += 1
        return m * bottom + 4 * (2 ** (d + 1) - 1)

    @property
    def margin(self) -> int:
        """Pixels a "valid" network loses on each side (92 for depth 4); 0 in "same" mode."""
        if self.config.padding == "same":
            return 0
        s = self.valid_input_size(1)
        return (s - self.output_size(s)) // 2

    def receptive_field_radius(self) -> int:
        """How far (in input pixels) an output pixel can see, on either side.

        Computed exactly from the layer graph by propagating, for every position of a long 1D
        line, the interval of input positions it depends on (covers every phase of the pooling
        grid). Halos at least this wide make tiled inference exact.
        """
        depth, m = self.config.depth, self.size_multiple
        n = m * 16
        pos = np.arange(n)

        def conv(lo, hi, k=3):
            r = k // 2
            idx = np.clip(pos[: len(lo)][:, None] + np.arange(-r, r + 1), 0, len(lo) - 1)
            return lo[idx].min(1), hi[idx].max(1)

        def pool(lo, hi):
            return np.minimum(lo[0::2], lo[1::2]), np.maximum(hi[0::2], hi[1::2])

        def up(lo, hi):
            i = np.arange(2 * len(lo))
            if self.config.upsampling == "transpose":
                return lo[i // 2], hi[i // 2]
            src = np.maximum((i + 0.5) / 2 - 0.5, 0)
            i0 = np.floor(src).astype(int)
            i1 = np.minimum(i0 + 1, len(lo) - 1)
            return np.minimum(lo[i0], lo[i1]), np.maximum(hi[i0], hi[i1])

        def double(lo, hi):
            return conv(*conv(lo, hi))

        lo, hi = double(pos.copy(), pos.copy())
        skips = [(lo, hi)]
        for _ in range(depth):
            lo, hi = double(*pool(lo, hi))
            skips.append((lo, hi))
        skips.pop()
        for _ in range(depth):
            ulo, uhi = up(lo, hi)
            slo, shi = skips.pop()
            lo, hi = double(np.minimum(ulo, slo), np.maximum(uhi, shi))
        centre = slice(n // 4, 3 * n // 4)  # away from the clipped ends of the line
        c = pos[centre]
        return int(max((c - lo[centre]).max(), (hi[centre] - c).max()))

    def exact_halo(self) -> int:
        """Smallest halo on the 2**depth grid that covers the receptive field."""
        m = self.size_multiple
        return -(-self.receptive_field_radius() // m) * m

    def digest(self) -> str:
        """A short hash of the architecture and of every weight's and buffer's value: equal
        for equal models, different after any change (in place too, e.g. ``p.data.copy_``)."""
        import hashlib
        import json

        h = hashlib.sha256(json.dumps(self.config.to_dict(), sort_keys=True).encode())
        for k, v in self.state_dict().items():
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"in_channels={c.in_channels}, n_classes={c.n_classes}, base={c.base_channels}, "
            f"depth={c.depth}, upsampling={c.upsampling}, padding={c.padding}"
        )


class _FrozenBatchNormStats:
    """While checkpointed blocks are recomputed in the backward pass, BatchNorm must normalise
    exactly as in the forward pass (batch statistics) but must not update its running
    statistics a second time: momentum is set to 0 and the batch counter restored."""

    def __init__(self, block: nn.Module):
        self.bns = [m for m in block.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def __enter__(self):
        self.saved = [
            (m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone())
            for m in self.bns
        ]
        for m in self.bns:
            m.momentum = 0.0
        return self

    def __exit__(self, *exc):
        for m, (momentum, tracked) in zip(self.bns, self.saved):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)
        return False
