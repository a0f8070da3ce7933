"""Out-of-memory fallback: injected allocation failures make inference and training retry
smaller (batch, then tiles, then the CPU), tell the user each step, and give the same result.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from napari_tessera import UNetConfig, predict_tiled
from napari_tessera.axes import layout
from napari_tessera.device import is_out_of_memory
from napari_tessera.errors import InputError
from napari_tessera.inference import (
    Notice,
    SliceResult,
    _Attempt,
    iter_segment,
    iter_slice_predictions,
    next_fallback,
    prepare,
    resolve_halo,
)
from napari_tessera.options import SegmentOptions
from napari_tessera.training import TrainConfig, iter_train


def OPTS(**settings) -> SegmentOptions:
    """Tiling settings on the CPU."""
    return SegmentOptions(device="cpu", **settings)


OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def _fail_above(model, *, batch: int | None = None, side: int | None = None, calls=None):
    """Make ``model`` raise an out-of-memory error for inputs above a batch or tile size."""
    plain = model.forward

    def forward(x):
        if calls is not None:
            calls.append(tuple(x.shape))
        if (batch is not None and x.shape[0] > batch) or (side is not None and x.shape[-1] > side):
            raise OOM("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return plain(x)

    model.forward = forward
    return model


@pytest.fixture
def model(deep_unet):
    return deep_unet(UNetConfig(depth=2, base_channels=4), seed=3)


@pytest.fixture
def image():
    return np.random.default_rng(0).random((150, 170), dtype=np.float32)


def test_is_out_of_memory_recognises_allocation_failures():
    assert is_out_of_memory(OOM("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: 8 GB"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_smaller_batches_give_the_same_probabilities(model, image):
    want = predict_tiled(model, image, tile_size=64, batch_size=4, device="cpu")
    calls = []
    _fail_above(model, batch=1, calls=calls)
    with pytest.warns(RuntimeWarning) as record:
        got = predict_tiled(model, image, tile_size=64, batch_size=4, device="cpu")
    messages = [str(w.message) for w in record]
    assert messages == [
        "CPU out of memory: retrying with batch size 2",
        "CPU out of memory: retrying with batch size 1",
    ]
    assert max(c[0] for c in calls) == 4 and calls[-1][0] == 1
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_smaller_tiles_give_the_same_probabilities_with_an_exact_halo(model, image):
    want = predict_tiled(model, image, device="cpu", halo="exact")  # one big tile
    big = prepare(model, layout(image.shape, "YX"), OPTS(), resolve_halo(model, "exact"))
    big = big.tile_shape
    _fail_above(model, side=big[1] - 1)
    with pytest.warns(RuntimeWarning, match="retrying with .* tiles") as record:
        got = predict_tiled(model, image, device="cpu", halo="exact")
    assert len(record) >= 1
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_a_stack_redoes_only_unfinished_slices(model):
    stack = np.random.default_rng(1).random((3, 64, 80), dtype=np.float32)
    want = predict_tiled(model, stack, axes="ZYX", tile_size=64, batch_size=4, device="cpu")
    calls = []
    state = {"n": 0}
    plain = model.forward

    def forward(x):  # run out of memory once, in the middle of the stack
        state["n"] += 1
        calls.append(x.shape[0])
        if state["n"] == 4:
            raise OOM("CUDA out of memory (injected)")
        return plain(x)

    model.forward = forward
    events = list(
        iter_slice_predictions(model, stack, axes="ZYX", options=OPTS(tile_size=64, batch_size=4))
    )
    finished = [e.index for e in events if isinstance(e, SliceResult)]
    assert sorted(finished) == [0, 1, 2] and len(finished) == 3  # each slice handed out once
    assert [e.message for e in events if isinstance(e, Notice)] == [
        "CPU out of memory: retrying with batch size 2"
    ]
    got = np.stack(
        [
            e.probabilities
            for e in sorted(
                (e for e in events if isinstance(e, SliceResult)), key=lambda e: e.index
            )
        ],
        axis=1,
    )
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_out_of_memory_everywhere_is_a_clear_error(model, image):
    _fail_above(model, batch=0)
    with pytest.raises(InputError, match="out of memory even with batch size 1"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            predict_tiled(model, image, batch_size=2, device="cpu")


def test_other_errors_are_not_retried(model, image):
    def forward(x):
        raise RuntimeError("something else broke")

    model.forward = forward
    with pytest.raises(RuntimeError, match="something else broke"):
        predict_tiled(model, image, batch_size=2, device="cpu")


def test_fallback_can_be_turned_off(model, image):
    from napari_tessera.inference import drain, iter_predict_tiled

    _fail_above(model, batch=1)
    with pytest.raises(OOM):
        drain(
            iter_predict_tiled(
                model, image, batch_size=2, tile_size=64, device="cpu", out_of_memory_fallback=False
            )
        )


def test_fallback_order_ends_on_the_cpu_in_fp32(model, image):
    lay = layout(image.shape, "YX")
    st = prepare(model, lay, OPTS(), resolve_halo(model, "exact"))
    a = _Attempt(4, st.plan, torch.device("cuda"), torch.float16)
    steps = []
    while (nxt := next_fallback(a, lay=lay, model=model, halo=st.halo)) is not None:
        a, what = nxt
        steps.append(what)
    assert steps[:2] == ["retrying with batch size 2", "retrying with batch size 1"]
    assert any("tiles" in s for s in steps[2:-1])
    assert steps[-1] == "retrying on the CPU (fp32)"
    assert a.device.type == "cpu" and a.dtype == torch.float32 and a.batch_size == 1


def test_segment_passes_notices_on(threshold_unet):
    from napari_tessera.synthetic import nuclei_2d

    net = threshold_unet()
    img = nuclei_2d((96, 96), seed=2).image
    _, want = _drain_events(iter_segment(net, img, batch_size=2, tile_size=64, device="cpu"))
    _fail_above(net, batch=1)
    events, got = _drain_events(iter_segment(net, img, batch_size=2, tile_size=64, device="cpu"))
    assert any(isinstance(e, Notice) for e in events)
    np.testing.assert_array_equal(got, want)


def _drain_events(gen):
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            return events, stop.value


def test_cli_segment_reports_each_fallback_step(tmp_path, monkeypatch, capsys):
    from napari_tessera import cli
    from napari_tessera.images import read_image, write_tiff
    from napari_tessera.io import save_model
    from napari_tessera.model.unet import UNet
    from napari_tessera.synthetic import nuclei_2d

    torch.manual_seed(0)
    net = UNet(UNetConfig(depth=2, base_channels=4))
    save_model(net, tmp_path / "m.safetensors")
    write_tiff(tmp_path / "img.tif", nuclei_2d((80, 90), seed=1).image, axes="YX")
    args = [
        "segment",
        str(tmp_path / "img.tif"),
        "--model",
        str(tmp_path / "m.safetensors"),
        "--batch-size",
        "4",
        "--tile-size",
        "64",
        "--device",
        "cpu",
        "--quiet",
    ]
    assert cli.main([*args, "-o", str(tmp_path / "want.tif")]) == 0
    plain = UNet.forward

    def forward(self, x):
        if x.shape[0] > 1:
            raise OOM("CUDA out of memory (injected)")
        return plain(self, x)

    monkeypatch.setattr(UNet, "forward", forward)
    capsys.readouterr()
    assert cli.main([*args, "-o", str(tmp_path / "got.tif")]) == 0
    err = capsys.readouterr().err
    assert "tessera: CPU out of memory: retrying with batch size 2" in err
    assert "tessera: CPU out of memory: retrying with batch size 1" in err
    assert "Traceback" not in err
    np.testing.assert_array_equal(
        read_image(tmp_path / "got.tif")[0], read_image(tmp_path / "want.tif")[0]
    )


def test_training_splits_batches_after_out_of_memory(monkeypatch):
    from napari_tessera.model.unet import UNet
    from napari_tessera.synthetic import nuclei_2d

    s = nuclei_2d((96, 96), seed=4)
    labels = np.where(s.labels > 0, 2, 1).astype(np.uint8)
    plain = UNet.forward
    shapes = []

    def forward(self, x):
        if self.training:
            shapes.append(x.shape[0])
            if x.shape[0] > 2:
                raise OOM("CUDA out of memory (injected)")
        return plain(self, x)

    monkeypatch.setattr(UNet, "forward", forward)
    cfg = TrainConfig(
        steps=12,
        batch_size=8,
        patch_size=32,
        base_channels=4,
        depth=2,
        device="cpu",
        val_every=6,
        seed=1,
    )
    updates = []
    gen = iter_train(s.image, labels, config=cfg)
    while True:
        try:
            updates.append(next(gen))
        except StopIteration as done:
            result = done.value
            break
    notices = [u.notice for u in updates if u.notice]
    assert notices == [
        "CPU out of memory: retrying with 4 patches per pass (gradients accumulated, "
        "same batch of 8); CPU out of memory: retrying with 2 patches per pass "
        "(gradients accumulated, same batch of 8)"
    ]
    assert result.steps == 12 and len(updates) == 12
    assert shapes[:3] == [8, 4, 2] and set(shapes[3:]) == {2}
    assert all(np.isfinite(u.loss) for u in updates)


def test_training_out_of_memory_on_one_patch_is_a_clear_error(monkeypatch):
    from napari_tessera.model.unet import UNet
    from napari_tessera.synthetic import nuclei_2d

    s = nuclei_2d((64, 64), seed=4)
    labels = np.where(s.labels > 0, 2, 1).astype(np.uint8)

    def forward(self, x):
        raise OOM("CUDA out of memory (injected)")

    monkeypatch.setattr(UNet, "forward", forward)
    cfg = TrainConfig(
        steps=3, batch_size=2, patch_size=32, base_channels=4, depth=2, device="cpu", val_fraction=0
    )
    with pytest.raises(InputError, match="out of memory even one patch at a time"):
        list(iter_train(s.image, labels, config=cfg))


def test_out_of_memory_while_measuring_the_halo_falls_back_to_the_exact_halo(model, image):
    from napari_tessera.halo import AUTO_HALOS, probe_tile

    AUTO_HALOS.forget()  # measured here, not taken from an earlier test's measurement
    window = probe_tile(model) + 2 * model.exact_halo()  # the probes' reference runs

    plain = model.forward

    def forward(x):
        if x.shape[-1] == window:
            raise OOM("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return plain(x)

    model.forward = forward
    events = list(iter_slice_predictions(model, image, options=OPTS()))
    notices = [e.message for e in events if isinstance(e, Notice)]
    assert notices == ["out of memory while measuring the halo: using the exact halo"]
    (result,) = [e for e in events if isinstance(e, SliceResult)]
    model.forward = plain
    want = predict_tiled(model, image, device="cpu", halo="exact")
    np.testing.assert_allclose(result.probabilities, want, atol=1e-5)
