"""Training on a set of painted images: Python, the sampler's share per image, and the CLI.

Runs are tiny (base channels 4, depth 2, 32-pixel patches, batches of 2, a few steps).
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from _helpers import TINY_NETWORK, run
from napari_tessera.errors import InputError
from napari_tessera.io import read_model_info
from napari_tessera.synthetic import nuclei_2d
from napari_tessera.training import TrainConfig, TrainImage, train
from napari_tessera.training import loop as loop_mod
from napari_tessera.training.labels import IGNORE
from napari_tessera.training.sampling import PatchSampler

TINY_CFG = dict(base_channels=4, depth=2, patch_size=32, batch_size=2, device="cpu")
TINY = [*TINY_NETWORK, "--batch-size", "2"]
TINY += ["--device", "cpu", "--steps", "4", "-q"]


def objects_only(truth: np.ndarray, n: int = 4) -> np.ndarray:
    """Paint ``n`` whole objects (2) and no background."""
    lab = np.zeros(truth.shape, np.uint8)
    for i in [int(i) for i in np.unique(truth) if i][:n]:
        lab[truth == i] = 2
    return lab


def background_only(truth: np.ndarray) -> np.ndarray:
    lab = np.zeros(truth.shape, np.uint8)
    strokes = np.zeros(truth.shape, bool)
    strokes[::12, :] = True
    lab[ndi.binary_erosion(truth == 0, iterations=3) & strokes] = 1
    return lab


@pytest.fixture(scope="module")
def two():
    a = nuclei_2d((96, 128), seed=3)
    b = nuclei_2d((128, 112), seed=4)
    return a, b


def test_a_set_trains_where_no_single_image_could(two, monkeypatch):
    """Objects painted on one image and background on another (of another size): neither
    trains alone, the set does, and every painted slice of both reaches the sampler."""
    a, b = two
    lab_a, lab_b = objects_only(a.labels), background_only(b.labels)
    cfg = TrainConfig(steps=3, **TINY_CFG)
    with pytest.raises(InputError, match="only objects"):
        train(a.image, lab_a, config=cfg)
    with pytest.raises(InputError, match="only background"):
        train(b.image, lab_b, config=cfg)

    seen = {}
    real = loop_mod.PatchSampler

    def spy(images, classes, *args, **kw):
        seen["shapes"] = [c.shape for c in classes]
        return real(images, classes, *args, **kw)

    monkeypatch.setattr(loop_mod, "PatchSampler", spy)
    res = train([TrainImage(a.image, lab_a), TrainImage(b.image, lab_b)], config=cfg)
    assert res.steps == 3
    assert seen["shapes"] == [(96, 128), (128, 112)]
    assert res.model.metadata["provenance"]["config"]["images"] == 2


def test_a_set_mixes_a_stack_and_a_plain_image(two):
    a, b = two
    stack = np.stack([b.image, b.image[::-1]])
    stack_lab = np.stack([np.zeros_like(b.labels, np.uint8), background_only(b.labels)])
    cfg = TrainConfig(steps=2, **TINY_CFG)
    res = train(
        [(a.image, objects_only(a.labels)), TrainImage(stack, stack_lab, "ZYX")],
        config=cfg,
    )
    assert res.model.metadata["provenance"]["config"]["images"] == 2


def test_a_set_mixes_sizes_and_dtypes(two):
    """uint8, uint16 and float32 images, each normalised by its own levels, train together."""
    a, b = two
    c = nuclei_2d((80, 80), seed=5)
    as_u8 = (255 * (a.image - a.image.min()) / np.ptp(a.image)).astype(np.uint8)
    as_u16 = (60000 * (b.image - b.image.min()) / np.ptp(b.image)).astype(np.uint16)
    items = [
        TrainImage(as_u8, objects_only(a.labels).astype(np.uint16)),
        TrainImage(as_u16, background_only(b.labels).astype(np.int32)),
        TrainImage(c.image.astype(np.float32), objects_only(c.labels, 2)),
    ]
    res = train(items, config=TrainConfig(steps=2, **TINY_CFG))
    assert res.model.metadata["provenance"]["config"]["images"] == 3


def test_errors_name_the_image_they_are_about(two):
    a, b = two
    cfg = TrainConfig(steps=2, **TINY_CFG)
    good = TrainImage(a.image, objects_only(a.labels), name="first.tif")
    wrong_shape = TrainImage(b.image, background_only(b.labels)[:100], name="second.tif")
    with pytest.raises(InputError, match=r"^second.tif: labels have shape"):
        train([good, wrong_shape], config=cfg)
    rgb = np.stack([b.image] * 3)
    three = TrainImage(rgb, background_only(b.labels), "CYX", name="rgb.tif")
    with pytest.raises(InputError, match="rgb.tif has 3 channel.* first.tif has 1"):
        train([good, three], config=cfg)
    with pytest.raises(InputError, match="not an .image, labels. pair"):
        train([good, a.image], config=cfg)
    with pytest.raises(InputError, match="inside each pair"):
        train([good], b.labels, config=cfg)


def test_the_sampler_draws_from_each_image_by_its_paint():
    """Patches come from each image in proportion to its painted pixels."""
    rng = np.random.default_rng(0)
    classes = []
    for painted_rows in (8, 72):  # 1 : 9 of the paint
        c = np.full((96, 96), IGNORE, np.int64)
        c[:painted_rows, :48] = 0
        c[:painted_rows, 48:] = 1
        classes.append(c)
    images = [rng.random((1, 96, 96), dtype=np.float32) for _ in classes]
    sampler = PatchSampler(
        images, classes, None, patch=32, val_fraction=0.0, rng=rng, elastic=False
    )
    drawn = []
    for _ in range(25):
        sampler.sample(40)  # 20 object and 20 background patches
        drawn += [s for s, _, _ in sampler.last_windows]
    assert len(drawn) == 1000
    share = np.mean(np.array(drawn) == 1)
    assert 0.85 < share < 0.95


@pytest.fixture()
def painted_folder(tmp_path, two):
    raw, painted = tmp_path / "raw", tmp_path / "painted"
    raw.mkdir()
    painted.mkdir()
    a, b = two
    tifffile.imwrite(raw / "a.tif", a.image)
    tifffile.imwrite(raw / "b.tif", b.image)
    tifffile.imwrite(painted / "a_labels.tif", objects_only(a.labels))
    tifffile.imwrite(painted / "b_labels.tif", background_only(b.labels))
    return raw, painted


def test_cli_trains_on_pairs_and_on_a_pattern(painted_folder, tmp_path, capsys):
    raw, painted = painted_folder
    m1 = tmp_path / "pairs.safetensors"
    args = [raw / "a.tif", painted / "a_labels.tif", raw / "b.tif", painted / "b_labels.tif"]
    code, _, err = run(["train", *args, "-o", m1, *TINY], capsys)
    assert code == 0, err
    assert read_model_info(m1)[1]["provenance"]["config"]["images"] == 2

    m2 = tmp_path / "pattern.safetensors"
    pattern = str(painted / "{stem}_labels.tif")
    code, _, err = run(
        ["train", "--images", str(raw / "*.tif"), "--labels", pattern, "-o", m2, *TINY[:-1]],
        capsys,
    )
    assert code == 0, err
    assert "training on 2 images" in err and "a.tif" in err and "b.tif" in err


def test_cli_refuses_unpaired_files_before_training(painted_folder, tmp_path, capsys):
    raw, painted = painted_folder
    model = tmp_path / "m.safetensors"
    pattern = str(painted / "{stem}_labels.tif")
    tifffile.imwrite(raw / "c.tif", np.zeros((64, 64), np.uint8))
    code, _, err = run(
        ["train", "--images", str(raw), "--labels", pattern, "-o", model, *TINY], capsys
    )
    assert code == 2
    assert err.strip().endswith(f"labels file not found: {painted / 'c_labels.tif'}")
    assert len(err.strip().splitlines()) == 1
    (raw / "c.tif").unlink()

    tifffile.imwrite(painted / "d_labels.tif", np.zeros((64, 64), np.uint8))
    code, _, err = run(
        ["train", "--images", str(raw / "*.tif"), "--labels", pattern, "-o", model, *TINY],
        capsys,
    )
    assert code == 2 and "d_labels.tif has no image among the inputs" in err
    assert not model.exists()

    for argv, message in [
        ([raw / "a.tif", "-o", model], "give an image and its labels file"),
        (["--images", raw, "--labels", "dense", "-o", model], "--label-mode dense"),
        (["--images", raw, "-o", model], "--images needs --labels"),
        ([raw / "a.tif", raw / "nope.tif", "-o", model], "input not found"),
    ]:
        code, _, err = run(["train", *argv, *TINY], capsys)
        assert code == 2 and message in err, err
        assert "Traceback" not in err
