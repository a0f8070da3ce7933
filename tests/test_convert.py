"""`tessera convert-weights`: trusted PyTorch state_dicts become safetensors models; whole
pickled models and code-carrying pickles are refused, never run."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from napari_tessera import UNet, UNetConfig, load_model, predict_tiled
from napari_tessera.cli import main
from napari_tessera.convert import convert_weights
from napari_tessera.errors import ModelFileError


@pytest.fixture
def net(deep_unet):
    return deep_unet(UNetConfig(depth=2, base_channels=4, n_classes=3), seed=5)


@pytest.fixture
def image():
    return np.random.default_rng(3).random((70, 90), dtype=np.float32)


def _pytorch_unet_keys(state: dict) -> dict:
    """Tessera keys renamed to the PyTorch-UNet layout (inc.double_conv..., down1..., up1...)."""
    import re

    out = {}
    for k, v in state.items():
        k = re.sub(r"^inc\.(\d+)\.", r"inc.double_conv.\1.", k)
        k = re.sub(
            r"^downs\.(\d+)\.1\.(\d+)\.",
            lambda m: f"down{int(m[1]) + 1}.maxpool_conv.1.double_conv.{m[2]}.",
            k,
        )
        k = re.sub(r"^ups\.(\d+)\.up\.", lambda m: f"up{int(m[1]) + 1}.up.", k)
        k = re.sub(
            r"^ups\.(\d+)\.conv\.(\d+)\.",
            lambda m: f"up{int(m[1]) + 1}.conv.double_conv.{m[2]}.",
            k,
        )
        k = re.sub(r"^outc\.", "outc.conv.", k)
        out[k] = v
    return out


def test_state_dict_round_trip_gives_the_same_predictions(net, image, tmp_path):
    torch.save(net.state_dict(), tmp_path / "trusted.pt")
    convert_weights(tmp_path / "trusted.pt", tmp_path / "m.safetensors")
    back = load_model(tmp_path / "m.safetensors")
    assert back.config == net.config
    np.testing.assert_allclose(
        predict_tiled(back, image, device="cpu"), predict_tiled(net, image, device="cpu"), atol=1e-6
    )
    prov = back.metadata["provenance"]
    assert prov["converted_from"] == "trusted.pt" and len(prov["sha256"]) == 64
    assert prov["layout"] == "Tessera"


def test_pytorch_unet_layout_with_wrappers_and_extras(net, image, tmp_path):
    state = _pytorch_unet_keys(net.state_dict())
    assert "down2.maxpool_conv.1.double_conv.3.weight" in state
    state = {f"module.{k}": v for k, v in state.items()}  # saved from DistributedDataParallel
    state["mask_values"] = [0, 1, 2]  # what PyTorch-UNet's train.py stores beside the weights
    torch.save({"model_state_dict": state, "epoch": 7}, tmp_path / "checkpoint.pth")
    convert_weights(
        tmp_path / "checkpoint.pth",
        tmp_path / "m.safetensors",
        normalization=(0.5, 99.5),
        class_names=["background", "cell", "edge"],
    )
    back = load_model(tmp_path / "m.safetensors")
    assert back.config.normalization.low == 0.5 and back.config.depth == 2
    assert back.metadata["class_names"] == ["background", "cell", "edge"]
    assert back.metadata["provenance"]["layout"] == "PyTorch-UNet"
    ref = UNet(back.config)
    ref.load_state_dict(net.state_dict())
    np.testing.assert_allclose(
        predict_tiled(back, image, device="cpu"),
        predict_tiled(ref.eval(), image, device="cpu"),
        atol=1e-6,
    )


def test_bilinear_and_width_are_read_from_shapes(tmp_path):
    torch.manual_seed(0)
    cfg = UNetConfig(depth=3, base_channels=6, in_channels=2, n_classes=1, upsampling="bilinear")
    torch.save(UNet(cfg).state_dict(), tmp_path / "b.pt")
    convert_weights(tmp_path / "b.pt", tmp_path / "b.safetensors")
    assert load_model(tmp_path / "b.safetensors").config == cfg


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_code_carrying_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    payload = _Payload()
    payload.marker = marker
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"inc.0.weight": payload}, f)
    with pytest.raises(ModelFileError, match="other than tensors"):
        convert_weights(tmp_path / "evil.pt", tmp_path / "out.safetensors")
    assert not marker.exists()
    assert not (tmp_path / "out.safetensors").exists()


def test_whole_pickled_model_is_refused_with_advice(net, tmp_path, capsys):
    torch.save(net, tmp_path / "whole.pt")  # a whole nn.Module, not a state_dict
    rc = main(
        ["convert-weights", str(tmp_path / "whole.pt"), "-o", str(tmp_path / "m.safetensors")]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "model.state_dict()" in err
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", "not a readable PyTorch file"),
        (b"garbage bytes, not a pickle" * 3, "not a readable PyTorch file|other than tensors"),
    ],
)
def test_garbage_is_a_clear_error(tmp_path, content, match):
    (tmp_path / "bad.pt").write_bytes(content)
    with pytest.raises(ModelFileError, match=match):
        convert_weights(tmp_path / "bad.pt", tmp_path / "m.safetensors")


def test_safetensors_input_is_pointed_out(net, tmp_path):
    from napari_tessera import save_model

    save_model(net, tmp_path / "m.safetensors")
    with pytest.raises(ModelFileError, match="already a safetensors file"):
        convert_weights(tmp_path / "m.safetensors", tmp_path / "n.safetensors")


def test_absurd_depth_is_refused_without_building_it(tmp_path):
    state = {"inc.0.weight": torch.zeros(4, 1, 3, 3), "outc.weight": torch.zeros(2, 4, 1, 1)}
    for i in range(40):
        state[f"downs.{i}.1.0.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "deep.pt")
    with pytest.raises(ModelFileError, match="depth must be between"):
        convert_weights(tmp_path / "deep.pt", tmp_path / "m.safetensors")


def test_shape_mismatch_names_the_weight(net, tmp_path):
    state = net.state_dict()
    state["downs.1.1.3.weight"] = torch.zeros(16, 16, 5, 5)
    torch.save(state, tmp_path / "odd.pt")
    with pytest.raises(ModelFileError, match=r"downs\.1\.1\.3\.weight.*shape \(16, 16, 5, 5\)"):
        convert_weights(tmp_path / "odd.pt", tmp_path / "m.safetensors")


def test_not_a_unet_state_dict(tmp_path):
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "mlp.pt")
    with pytest.raises(ModelFileError, match="not a U-Net state_dict"):
        convert_weights(tmp_path / "mlp.pt", tmp_path / "m.safetensors")


def test_loading_a_pickle_model_names_the_conversion_command(net, tmp_path):
    torch.save(net.state_dict(), tmp_path / "weights.pth")
    with pytest.raises(ModelFileError, match="tessera convert-weights"):
        load_model(tmp_path / "weights.pth")


def test_cli_converts_and_segment_uses_the_result(net, tmp_path, capsys):
    from napari_tessera.images import read_image, write_tiff

    torch.save(net.state_dict(), tmp_path / "trusted.pt")
    out = tmp_path / "m.safetensors"
    assert main(["convert-weights", str(tmp_path / "trusted.pt"), "-o", str(out)]) == 0
    assert "depth 2, width 4" in capsys.readouterr().err
    img = np.random.default_rng(0).random((40, 50), dtype=np.float32)
    write_tiff(tmp_path / "img.tif", img, axes="YX")
    assert (
        main(
            [
                "segment",
                str(tmp_path / "img.tif"),
                "-o",
                str(tmp_path / "lab.tif"),
                "--model",
                str(out),
                "--device",
                "cpu",
                "-q",
            ]
        )
        == 0
    )
    want = predict_tiled(net, img, device="cpu").argmax(0)
    np.testing.assert_array_equal(read_image(tmp_path / "lab.tif")[0], want)
