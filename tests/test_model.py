"""The U-Net: shapes, geometry helpers, architecture details, checkpointing, receptive field,
and config validation."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import napari_tessera.model.unet as unet_module
from napari_tessera import ConfigError, InputError, Normalization, UNet, UNetConfig
from napari_tessera.model import DoubleConv


def _forward(model: UNet, h: int, w: int, c: int = 1) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.randn(1, c, h, w))


# -- output shapes -----------------------------------------------------------------------------
@pytest.mark.parametrize("upsampling", ["transpose", "bilinear"])
@pytest.mark.parametrize(
    "depth, size",
    [(2, (37, 53)), (2, (64, 64)), (3, (37, 53)), (3, (9, 17)), (3, (64, 64)), (3, (41, 8))],
)
def test_same_padding_keeps_size_for_odd_inputs(upsampling, depth, size):
    model = UNet(UNetConfig(depth=depth, base_channels=2, n_classes=3, upsampling=upsampling))
    model.eval()
    out = _forward(model, *size)
    assert out.shape == (1, 3, *size)
    assert torch.isfinite(out).all()
    assert model.output_size(size[0]) == size[0]


def test_valid_padding_paper_geometry_572_to_388():
    model = UNet(UNetConfig(depth=4, base_channels=2, padding="valid")).eval()
    assert model.output_size(572) == 388
    assert model.valid_input_size(388) == 572
    assert model.margin == 92
    out = _forward(model, 572, 572)
    assert out.shape == (1, 2, 388, 388)


@pytest.mark.parametrize("size", [571, 573, 570, 100, 1, 0, -4])
def test_valid_padding_rejects_sizes_it_cannot_take(size):
    model = UNet(UNetConfig(depth=4, base_channels=2, padding="valid"))
    with pytest.raises(InputError):
        model.output_size(size)


@pytest.mark.parametrize("depth", [0, 1, 2, 3, 4, 5])
def test_valid_size_helpers_are_consistent(depth):
    model = UNet(UNetConfig(depth=depth, base_channels=1, padding="valid"))
    smallest = model.valid_input_size(1)
    accepted = []
    for s in range(1, smallest + 8 * 2**depth):
        try:
            out = model.output_size(s)
        except InputError:
            continue
        assert out >= 1  # never an empty output (see test_valid_output_size_never_returns_...)
        assert s - out == 2 * model.margin  # a valid U-Net loses the same margin at any size
        accepted.append(s)
    assert accepted and accepted[0] == smallest
    # consecutive accepted sizes are 2**depth apart (one more pixel at the bottom level)
    assert all(b - a == 2**depth for a, b in zip(accepted, accepted[1:], strict=False))
    for want in [1, 2, 3, 5, 17, 40]:
        s = model.valid_input_size(want)
        assert model.output_size(s) >= want
        # smallest such size: the previous accepted size is too small
        smaller = [a for a in accepted if a < s]
        if smaller:
            assert model.output_size(smaller[-1]) < want


@pytest.mark.parametrize("depth", [1, 4])
def test_valid_output_size_never_returns_empty_output(depth):
    model = UNet(UNetConfig(depth=depth, base_channels=1, padding="valid"))
    for s in range(1, model.valid_input_size(1)):
        try:
            out = model.output_size(s)
        except InputError:
            continue
        assert out >= 1, f"output_size({s}) == {out}"


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_valid_output_size_matches_forward(depth):
    model = UNet(UNetConfig(depth=depth, base_channels=2, padding="valid")).eval()
    for want in (1, 7):
        s = model.valid_input_size(want)
        out = _forward(model, s, s + 2**depth)
        assert out.shape[-2:] == (model.output_size(s), model.output_size(s + 2**depth))


@pytest.mark.parametrize("depth", [0, 2, 3, 4])
def test_same_size_helpers(depth):
    model = UNet(UNetConfig(depth=depth, base_channels=1))
    m = 2**depth
    assert model.size_multiple == m
    assert model.margin == 0
    for want in [1, m - 1, m, m + 1, 3 * m + 1, 100]:
        s = model.valid_input_size(want)
        assert s % m == 0 and s >= max(want, m) and s - m < max(want, m)
        assert model.output_size(s) == s


# -- architecture ------------------------------------------------------------------------------
def test_default_channel_widths_double():
    cfg = UNetConfig()
    assert cfg.channels() == [64, 128, 256, 512, 1024]
    assert UNetConfig(base_channels=8, depth=2).channels() == [8, 16, 32]


def test_default_unet_weight_shapes():
    model = UNet()
    assert model.inc[0].weight.shape == (64, 1, 3, 3)
    assert model.inc[3].weight.shape == (64, 64, 3, 3)
    widths = [64, 128, 256, 512, 1024]
    for i, down in enumerate(model.downs):
        assert isinstance(down[0], nn.MaxPool2d)
        assert down[1][0].weight.shape == (widths[i + 1], widths[i], 3, 3)
        assert down[1][3].weight.shape == (widths[i + 1], widths[i + 1], 3, 3)
    for j, up in enumerate(model.ups):
        cin, cout = widths[4 - j], widths[3 - j]
        assert isinstance(up.up, nn.ConvTranspose2d)
        assert up.up.weight.shape == (cin, cin // 2, 2, 2)  # ConvTranspose2d: (in, out, k, k)
        assert up.conv[0].weight.shape == (cout, cin // 2 + cout, 3, 3)
        assert up.conv[3].weight.shape == (cout, cout, 3, 3)
    assert model.outc.weight.shape == (2, 64, 1, 1)
    n_params = sum(p.numel() for p in model.parameters())
    assert 31_000_000 < n_params < 31_100_000  # the paper's ~31 M parameters


def test_bilinear_upsampling_uses_1x1_conv():
    model = UNet(UNetConfig(depth=2, base_channels=4, upsampling="bilinear"))
    for up in model.ups:
        upsample, conv = up.up
        assert isinstance(upsample, nn.Upsample) and upsample.mode == "bilinear"
        assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1)
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in model.modules())


@pytest.mark.parametrize("padding, pad", [("same", (1, 1)), ("valid", (0, 0))])
def test_double_conv_has_no_bias_and_is_followed_by_bn_relu(padding, pad):
    model = UNet(UNetConfig(depth=3, base_channels=4, padding=padding))
    doubles = [m for m in model.modules() if isinstance(m, DoubleConv)]
    assert len(doubles) == 1 + 2 * 3
    for dc in doubles:
        layers = list(dc)
        convs = [i for i, m in enumerate(layers) if isinstance(m, nn.Conv2d)]
        assert len(convs) == 2
        for i in convs:
            conv = layers[i]
            assert conv.bias is None
            assert conv.kernel_size == (3, 3) and conv.padding == pad
            assert isinstance(layers[i + 1], nn.BatchNorm2d)
            assert layers[i + 1].num_features == conv.out_channels
            assert isinstance(layers[i + 2], nn.ReLU)


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_dropout_only_at_deepest_two_levels(depth):
    model = UNet(UNetConfig(depth=depth, base_channels=2, dropout=0.5))
    where = [name for name, m in model.named_modules() if isinstance(m, nn.Dropout2d)]
    assert sorted(where) == [f"downs.{depth - 2}.1.6", f"downs.{depth - 1}.1.6"]
    for m in model.modules():
        if isinstance(m, nn.Dropout2d):
            assert m.p == 0.5
    no_dropout = UNet(UNetConfig(depth=depth, base_channels=2, dropout=0.0))
    assert not any(isinstance(m, (nn.Dropout, nn.Dropout2d)) for m in no_dropout.modules())


def test_dropout_is_active_in_training_and_off_in_eval():
    model = UNet(UNetConfig(depth=2, base_channels=4, dropout=0.5))
    x = torch.randn(1, 1, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    model.train()
    with torch.no_grad():
        torch.manual_seed(1)
        a = model(x)
        torch.manual_seed(2)
        b = model(x)
    assert not torch.allclose(a, b)


# -- gradient checkpointing --------------------------------------------------------------------
@pytest.mark.parametrize("dropout", [0.0, 0.5])
@pytest.mark.parametrize("upsampling", ["transpose", "bilinear"])
def test_checkpointing_gives_same_outputs_and_gradients(monkeypatch, dropout, upsampling):
    calls = []
    real_checkpoint = unet_module.checkpoint

    def counting_checkpoint(*args, **kwargs):
        calls.append(1)
        return real_checkpoint(*args, **kwargs)

    monkeypatch.setattr(unet_module, "checkpoint", counting_checkpoint)
    cfg = dict(depth=3, base_channels=4, dropout=dropout, upsampling=upsampling)
    torch.manual_seed(0)
    plain = UNet(UNetConfig(**cfg))
    ckpt = UNet(UNetConfig(**cfg, checkpointing=True))
    ckpt.load_state_dict(copy.deepcopy(plain.state_dict()))
    plain.train()
    ckpt.train()
    x = torch.randn(2, 1, 40, 56)
    target = torch.randint(0, 2, (2, 40, 56))
    outs = []
    for model in (plain, ckpt):
        torch.manual_seed(123)
        y = model(x)
        nn.functional.cross_entropy(y, target).backward()
        outs.append(y.detach())
    assert len(calls) == 1 + 2 * 3  # inc, every Down and every Up went through checkpoint
    assert torch.allclose(outs[0], outs[1], atol=1e-6)
    names = [n for n, _ in plain.named_parameters()]
    assert names == [n for n, _ in ckpt.named_parameters()]
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        assert p.grad is not None and q.grad is not None, name
        assert torch.allclose(p.grad, q.grad, atol=1e-5, rtol=0), name
    assert any(p.grad.abs().max() > 0 for p in plain.parameters())


def test_checkpointing_not_used_in_eval_or_without_grad(monkeypatch):
    calls = []
    monkeypatch.setattr(unet_module, "checkpoint", lambda *a, **k: calls.append(1))
    model = UNet(UNetConfig(depth=2, base_channels=2, checkpointing=True))
    x = torch.randn(1, 1, 16, 16)
    model.eval()
    model(x)
    model.train()
    with torch.no_grad():
        model(x)
    assert calls == []


def test_checkpointing_updates_batchnorm_statistics_once():
    torch.manual_seed(0)
    plain = UNet(UNetConfig(depth=2, base_channels=4))
    ckpt = UNet(UNetConfig(depth=2, base_channels=4, checkpointing=True))
    ckpt.load_state_dict(plain.state_dict())
    plain.train()
    ckpt.train()
    x = torch.randn(2, 1, 32, 32)
    for model in (plain, ckpt):
        model(x).square().mean().backward()
    a, b = plain.state_dict(), ckpt.state_dict()
    for k in a:
        assert torch.allclose(a[k].double(), b[k].double(), atol=1e-6), k


# -- receptive field ---------------------------------------------------------------------------
@pytest.mark.parametrize("upsampling", ["transpose", "bilinear"])
def test_receptive_field_radius_matches_gradient_support(deep_unet, upsampling):
    """Backprop from one output pixel at each of the 2**depth phases of the pooling grid; the
    largest distance from that pixel to an input pixel with a non-zero gradient is the radius."""
    depth = 3
    model = deep_unet(UNetConfig(depth=depth, base_channels=4, upsampling=upsampling))
    radius = model.receptive_field_radius()
    m, n, centre = 2**depth, 192, 96
    trials = 2  # max-pooling routes gradient to one pixel per window: take a union of inputs
    g = torch.Generator().manual_seed(0)
    x = torch.randn(m * trials, 1, n, n, generator=g, requires_grad=True)
    y = model(x)
    idx = torch.arange(m * trials)
    pos = centre + idx % m  # sample i looks at phase i % m (on both axes)
    y[idx, 1, pos, pos].sum().backward()
    support = x.grad[:, 0] != 0
    extents = []
    for phase in range(m):
        u = support[idx % m == phase].any(0)
        c = centre + phase
        ys, xs = torch.nonzero(u, as_tuple=True)
        assert ys.min() > 0 and ys.max() < n - 1  # support did not reach the image border
        extents.append(
            max(c - ys.min().item(), ys.max().item() - c, c - xs.min().item(), xs.max().item() - c)
        )
    assert max(extents) == radius
    # the phases really differ, so measuring a single phase would not have been enough
    assert min(extents) < radius
    halo = model.exact_halo()
    assert halo % m == 0 and radius <= halo < radius + m


def test_receptive_field_grows_with_depth():
    radii = [UNet(UNetConfig(depth=d, base_channels=1)).receptive_field_radius() for d in range(5)]
    assert radii[0] == 2  # two 3x3 convolutions
    assert all(b > a for a, b in zip(radii, radii[1:], strict=False))


# -- config validation -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [
        {"depth": 40},
        {"depth": -1},
        {"base_channels": 10**6},
        {"base_channels": 0},
        {"upsampling": "foo"},
        {"padding": "bar"},
        {"in_channels": "1"},
        {"in_channels": True},
        {"n_classes": True},
        {"depth": True},
        {"base_channels": 4.0},
        {"n_classes": 0},
        {"dropout": 1.5},
        {"dropout": "0.5"},
        {"checkpointing": "yes"},
        {"checkpointing": 1},
        {"normalization": {"low": 1, "high": 99}},
    ],
)
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ConfigError):
        UNetConfig(**kwargs)


@pytest.mark.parametrize("low, high", [(50, 10), (5, 5), (-1, 99), (1, 101), ("1", 99), (True, 99)])
def test_normalization_rejects_bad_values(low, high):
    with pytest.raises(ConfigError):
        Normalization(low, high)


def test_config_errors_are_value_errors():
    with pytest.raises(ValueError):
        UNetConfig(depth=40)


def test_config_dict_round_trip():
    cfg = UNetConfig(
        in_channels=2,
        n_classes=3,
        base_channels=8,
        depth=3,
        upsampling="bilinear",
        padding="valid",
        dropout=0.25,
        checkpointing=True,
        normalization=Normalization(2.0, 98.0),
    )
    d = cfg.to_dict()
    assert d["normalization"] == {"low": 2.0, "high": 98.0}
    assert UNetConfig.from_dict(d) == cfg
    assert UNetConfig.from_dict({}) == UNetConfig()


@pytest.mark.parametrize(
    "data",
    [
        {"depth": 2, "evil": 1},
        {"__class__": "x"},
        {"normalization": {"low": 1, "high": 99, "extra": 0}},
        {"normalization": [1, 99]},
        {"depth": 40},
        {"base_channels": 10**6},
        [],
        "depth=2",
        None,
    ],
)
def test_config_from_dict_rejects_unknown_keys_and_bad_data(data):
    with pytest.raises(ConfigError):
        UNetConfig.from_dict(data)


def test_config_from_dict_names_the_unknown_key():
    with pytest.raises(ConfigError, match="evil"):
        UNetConfig.from_dict({"depth": 2, "evil": 1})
