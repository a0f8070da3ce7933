"""Which start a run takes by default: the built-in model where it already segments the
painted objects, a new network where it does not (``TrainConfig(start_if_fits=True)``, the
CLI's ``--from auto`` and the Train widget's first choice).

Each side has a test that fails when the choice is made the other way every time.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from _helpers import run
from napari_tessera import UNet
from napari_tessera.config import UNetConfig
from napari_tessera.io import load_model
from napari_tessera.models import default_model_path
from napari_tessera.synthetic import nuclei_2d
from napari_tessera.training import TrainConfig, iter_train
from napari_tessera.training import start as start_mod
from napari_tessera.training.data import TrainImage
from napari_tessera.training.start import FITS_IOU, judge_start

SIDE = 160


def quick(**kw) -> TrainConfig:
    base = dict(steps=2, base_channels=4, depth=2, patch_size=32, batch_size=2, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def paint_nuclei(truth: np.ndarray, n: int = 8) -> np.ndarray:
    """A dozen-like painting: whole nuclei (2) and background strokes (1) away from them."""
    lab = np.zeros(truth.shape, np.uint8)
    ids = [int(i) for i in np.unique(truth) if i]
    for i in ids[:: max(1, len(ids) // n)][:n]:
        lab[truth == i] = 2
    strokes = np.zeros(truth.shape, bool)
    strokes[::20, :] = True
    lab[ndi.binary_erosion(truth == 0, iterations=3) & strokes] = 1
    return lab


def paint_elsewhere(truth: np.ndarray) -> np.ndarray:
    """Objects painted where the image is empty, background painted over nuclei: no nuclei
    model reproduces this painting."""
    lab = np.zeros(truth.shape, np.uint8)
    empty = ndi.binary_erosion(truth == 0, iterations=6)
    ys, xs = np.nonzero(empty[::12, ::12])
    for y, x in list(zip(ys * 12, xs * 12))[:: max(1, len(ys) // 6)][:6]:
        lab[max(y - 4, 0) : y + 4, max(x - 4, 0) : x + 4] = 2
    lab[(truth > 0) & (lab == 0)] = 1
    return lab


@pytest.fixture(scope="module")
def scene():
    return nuclei_2d((SIDE, SIDE), seed=3)


@pytest.fixture(scope="module")
def builtin():
    path = default_model_path()
    if path is None:
        pytest.skip("no built-in model installed")
    return load_model(path)


def run_with(image, labels, model, cfg, axes="YX"):
    import copy

    gen = iter_train(image, labels, axes=axes, config=cfg, model=copy.deepcopy(model))
    first = next(gen)
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        return first, stop.value


def test_the_built_in_model_is_fine_tuned_where_it_segments_the_painting(scene, builtin):
    first, result = run_with(
        scene.image, paint_nuclei(scene.labels), builtin, quick(start_if_fits=True)
    )
    fit = result.start_fit
    assert fit is not None and fit.fits and fit.objects_iou >= FITS_IOU
    assert first.info.startswith("fine-tuning the tessera-nuclei-v1 model")
    prov = result.model.metadata["provenance"]
    assert prov["trained_from"] == "fine-tuned" and prov["start_fit"]["fits"] is True
    assert result.model.config.base_channels == builtin.config.base_channels


def test_a_new_network_where_the_built_in_model_does_not_fit(scene, builtin):
    labels = paint_elsewhere(scene.labels)
    first, result = run_with(scene.image, labels, builtin, quick(start_if_fits=True))
    fit = result.start_fit
    assert fit is not None and not fit.fits and fit.objects_iou < FITS_IOU
    assert first.info.startswith("training a new network: the tessera-nuclei-v1 model")
    assert "IoU" in first.info and "background" in first.info
    prov = result.model.metadata["provenance"]
    assert prov["trained_from"] == "scratch" and prov["start_fit"]["fits"] is False
    assert result.model.config.base_channels == 4  # the new network of the config
    # without the choice the same painting fine-tunes the model it was given
    _, always = run_with(scene.image, labels, builtin, quick())
    assert not always.start_fit.fits  # judged a poor start (no candidate), fine-tuned all the same
    assert always.model.metadata["provenance"]["trained_from"] == "fine-tuned"


def test_a_start_that_cannot_read_the_image_or_has_too_few_objects_to_judge(scene, builtin):
    rgb = np.stack([scene.image] * 3, axis=-1)
    labels = paint_nuclei(scene.labels)
    _, result = run_with(rgb, labels, builtin, quick(start_if_fits=True), axes="YXC")
    assert not result.start_fit.fits and "cannot train on this painting" in result.start_fit.why
    assert result.model.config.in_channels == 3
    two = np.where(ndi.label(labels == 2)[0] > 2, 0, labels)  # two painted objects left
    fit = judge_start(
        [TrainImage(scene.image, two)],
        builtin,
        mode="sparse",
        channels=None,
        device="cpu",
        name="it",
    )
    assert not fit.fits and fit.objects_iou is None and "too few" in fit.why


def test_painted_background_called_object_is_no_fit_however_well_objects_come_out(
    monkeypatch, scene
):
    """The two numbers of the choice, on a class map given directly."""
    labels = paint_nuclei(scene.labels)
    candidate = UNet(UNetConfig(in_channels=1, n_classes=2, base_channels=4, depth=2))
    objects = (labels == 2).astype(np.int64)
    item = [TrainImage(scene.image, labels)]

    def judged(pred):
        monkeypatch.setattr(start_mod, "painted_classes", lambda *a: [pred])
        return judge_start(item, candidate, mode="sparse", channels=None, device="cpu", name="m")

    exact = judged(objects)
    assert exact.fits and exact.objects_iou == pytest.approx(1.0)
    spill = objects.copy()
    bg = np.flatnonzero(labels == 1)
    spill.ravel()[bg[: int(0.2 * len(bg))]] = 1  # a fifth of the painted background
    wrong = judged(spill)
    assert not wrong.fits and wrong.background_wrong == pytest.approx(0.2, abs=0.01)
    assert "20% of the painted background" in wrong.why


def test_cli_starts_from_the_built_in_model_only_where_it_fits(scene, builtin, tmp_path, capsys):
    image, fits, elsewhere = (tmp_path / n for n in ("img.tif", "fits.tif", "else.tif"))
    tifffile.imwrite(image, scene.image)
    tifffile.imwrite(fits, paint_nuclei(scene.labels))
    tifffile.imwrite(elsewhere, paint_elsewhere(scene.labels))
    tiny = ["--steps", "2", "--base-channels", "4", "--depth", "2", "--patch-size", "32"]
    tiny += ["--batch-size", "2", "--device", "cpu"]
    for painted, said, made in (
        (fits, "fine-tuning the tessera-nuclei-v1 model", "fine-tuned"),
        (elsewhere, "training a new network: the tessera-nuclei-v1 model", "scratch"),
    ):
        out = tmp_path / f"{painted.stem}.safetensors"
        code, _, err = run(["train", image, painted, "-o", out, *tiny], capsys)
        assert code == 0, err
        assert f"tessera: {said}" in err
        assert load_model(out).metadata["provenance"]["trained_from"] == made
    out = tmp_path / "scratch.safetensors"
    code, _, err = run(["train", image, fits, "-o", out, "--from", "scratch", *tiny], capsys)
    assert code == 0 and "fine-tuning" not in err and "new network" not in err
    assert load_model(out).metadata["provenance"]["start_fit"] is None
