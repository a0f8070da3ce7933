"""Shared fixtures for the napari-tessera test suite.

Everything here is CPU-only and small: tiny networks (base_channels 2-8, depth 2-4) and
images of at most a few hundred pixels.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from napari_tessera import UNet, UNetConfig

# Tiny convolutions gain nothing from threads; one thread keeps CPU time equal to wall time.
torch.set_num_threads(1)


def _deep_unet(config: UNetConfig, *, seed: int = 0, bias_std: float = 0.0) -> UNet:
    """A UNet whose deep path is loud.

    With PyTorch's default init the contributions of the deeper levels are tiny, so a tiler
    that ignored the halo (or the pooling grid) could still match a whole-image pass within
    1e-5. Kaiming-normal (ReLU gain) weights keep the signal at every level; BatchNorm running
    stats are set to the identity (mean 0, var 1); the model is returned in eval mode.
    """
    torch.manual_seed(seed)
    model = UNet(config)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
                if mod.bias is not None:
                    if bias_std > 0:
                        nn.init.normal_(mod.bias, std=bias_std)
                    else:
                        mod.bias.zero_()
            elif isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.zero_()
                mod.running_var.fill_(1.0)
    return model.eval()


def _threshold_unet(
    *, depth: int = 2, base_channels: int = 4, threshold: float = 0.2, gain: float = 20.0
) -> UNet:
    """A hand-made 2-class "model" that segments by thresholding the normalised intensity.

    Every weight is zero except an identity path (centre tap of the 3x3 convolutions) through
    the first DoubleConv, the skip of the last Up block and its DoubleConv, and the 1x1 output
    convolution: logit(foreground) = gain * (relu(x_norm) - threshold), logit(background) = 0.
    Bright synthetic nuclei therefore come out as foreground, like a trained model would.
    """
    model = UNet(UNetConfig(depth=depth, base_channels=base_channels, n_classes=2))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.weight.fill_(1.0)
                mod.bias.zero_()
                mod.running_mean.zero_()
                mod.running_var.fill_(1.0 - mod.eps)  # exactly the identity in eval mode
        for double in (model.inc, model.ups[-1].conv):
            double[0].weight[0, 0, 1, 1] = 1.0
            double[3].weight[0, 0, 1, 1] = 1.0
        model.outc.weight[1, 0, 0, 0] = gain
        model.outc.bias[1] = -gain * threshold
    return model.eval()


@pytest.fixture
def deep_unet():
    """Factory: ``deep_unet(UNetConfig(...), seed=0)`` -> eval-mode UNet with a loud deep path."""
    return _deep_unet


@pytest.fixture
def threshold_unet():
    """Factory for the hand-made thresholding model (see :func:`_threshold_unet`)."""
    return _threshold_unet


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def disc(shape, cy, cx, r) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


@pytest.fixture
def make_disc():
    """Factory: ``make_disc(shape, cy, cx, r)`` -> boolean disc mask."""
    return disc


@pytest.fixture(scope="session")
def saved_threshold_model(tmp_path_factory):
    """Path of a saved (safetensors) thresholding model, shared by the CLI tests."""
    from napari_tessera.io import save_model

    path = tmp_path_factory.mktemp("models") / "threshold.safetensors"
    model = _threshold_unet()
    model.metadata = {"class_names": ["background", "nucleus"]}
    save_model(model, path)
    return path


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """A test that starts a dask cluster (the ``cluster`` fixture below) is
    ``slow`` even where its marker was forgotten, so ``-m "not slow"`` leaves it out."""
    for item in items:
        if "cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def cluster():
    """A local dask cluster of two single-threaded worker processes (tests using it are
    marked slow)."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        silence_logs=40,
    ) as c:
        yield c
