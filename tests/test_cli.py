"""The ``tessera`` command line, in-process (``main(argv)``) and as the installed script."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

import napari_tessera.models
from _helpers import nonempty_lines, run
from napari_tessera import UNet, cli
from napari_tessera.images import read_image, write_tiff
from napari_tessera.inference import segment
from napari_tessera.io import load_model

SIZE = 96


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".part" in p.name)


@pytest.fixture(scope="session")
def sample_2d(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sample2d")
    image, labels = folder / "x.tif", folder / "truth.tif"
    code = cli.main(
        ["sample", "-o", str(image), "--labels", str(labels), "--size", str(SIZE), "-q"]
    )
    assert code == 0
    return image, labels


@pytest.fixture(scope="session")
def sample_zyx(tmp_path_factory):
    folder = tmp_path_factory.mktemp("samplezyx")
    image = folder / "stack.tif"
    assert cli.main(["sample", "-o", str(image), "--size", "64", "--slices", "3", "-q"]) == 0
    return image


@pytest.fixture
def out_dir(tmp_path):
    d = tmp_path / "out"
    d.mkdir()
    return d


# -- sample ------------------------------------------------------------------------------------
def test_sample_writes_image_and_labels(sample_2d, sample_zyx):
    image, labels = sample_2d
    arr, axes = read_image(image)
    lab, lab_axes = read_image(labels)
    assert arr.shape == lab.shape == (SIZE, SIZE) and axes == lab_axes == "YX"
    assert arr.dtype == np.uint16 and arr.std() > 0
    assert lab.max() > 3  # several nuclei
    stack, stack_axes = read_image(sample_zyx)
    assert stack.shape == (3, 64, 64) and stack_axes == "ZYX"


def test_sample_is_deterministic(tmp_path, capsys):
    a, b, c = tmp_path / "a.tif", tmp_path / "b.tif", tmp_path / "c.tif"
    assert run(["sample", "-o", a, "--size", 48, "--seed", 5], capsys)[0] == 0
    assert run(["sample", "-o", b, "--size", 48, "--seed", 5, "-q"], capsys)[0] == 0
    assert run(["sample", "-o", c, "--size", 48, "--seed", 6, "-q"], capsys)[0] == 0
    np.testing.assert_array_equal(read_image(a)[0], read_image(b)[0])
    assert not np.array_equal(read_image(a)[0], read_image(c)[0])


# -- segment -----------------------------------------------------------------------------------
def test_segment_classes(sample_2d, saved_threshold_model, out_dir, capsys):
    image, truth = sample_2d
    out = out_dir / "labels.tif"
    code, _, err = run(["segment", image, "-o", out, "--model", saved_threshold_model], capsys)
    assert code == 0, err
    labels, axes = read_image(out)
    assert labels.shape == (SIZE, SIZE) and axes == "YX"
    assert np.issubdtype(labels.dtype, np.integer)
    assert set(np.unique(labels)) == {0, 1}
    gt = read_image(truth)[0] > 0
    iou = (gt & (labels > 0)).sum() / (gt | (labels > 0)).sum()
    assert iou > 0.7
    # same as the Python API with the same model
    model = load_model(saved_threshold_model)
    np.testing.assert_array_equal(labels, segment(model, read_image(image)[0], device="cpu"))
    assert leftovers(out_dir) == []
    assert "wrote" in err  # summary line when not --quiet
    # the halo it measured: one pooling step, as a pixel-wise model needs no more
    assert f"halo {model.size_multiple} px (auto, exact {model.exact_halo()} px)" in err


def test_segment_halo_exact_and_pixels_say_no_auto_line(
    sample_2d, saved_threshold_model, tmp_path, capsys
):
    image, _ = sample_2d
    for halo in ("exact", "8"):
        out = tmp_path / f"{halo}.tif"
        argv = ["segment", image, "-o", out, "--model", saved_threshold_model, "--halo", halo]
        code, _, err = run(argv, capsys)
        assert code == 0, err
        assert "wrote" in err and "auto" not in err


def test_segment_instances(sample_2d, saved_threshold_model, out_dir, capsys):
    image, truth = sample_2d
    out = out_dir / "inst.tif"
    code, _, err = run(
        ["segment", image, "-o", out, "--model", saved_threshold_model, "--instances", "-q"],
        capsys,
    )
    assert code == 0, err
    assert err == ""  # --quiet
    labels, _ = read_image(out)
    assert labels.shape == (SIZE, SIZE) and np.issubdtype(labels.dtype, np.unsignedinteger)
    ids = np.unique(labels)
    assert ids[0] == 0 and list(ids[1:]) == list(range(1, len(ids)))
    n_true = len(np.unique(read_image(truth)[0])) - 1
    assert 0.5 * n_true <= len(ids) - 1 <= 1.5 * n_true


def test_segment_edge_offset_moves_object_edges(sample_2d, saved_threshold_model, out_dir, capsys):
    from napari_tessera import segment
    from napari_tessera.io import load_model

    image, _ = sample_2d
    got = {}
    for off in ("0", "2", "-1.5"):
        out = out_dir / f"inst{off}.tif"
        argv = ["segment", image, "-o", out, "--model", saved_threshold_model, "--instances"]
        code, _, err = run([*argv, "--edge-offset", off, "-q"], capsys)
        assert code == 0, err
        got[off] = read_image(out)[0]
    assert (got["2"] > 0).sum() < (got["0"] > 0).sum() < (got["-1.5"] > 0).sum()
    ref = segment(
        load_model(saved_threshold_model), read_image(image)[0], instances=True, edge_offset=2
    )
    np.testing.assert_array_equal(got["2"], ref)


def test_segment_drops_objects_under_the_models_smallest_size(
    sample_2d, saved_threshold_model, out_dir, capsys
):
    from napari_tessera import segment
    from napari_tessera.io import load_model, save_model

    image, _ = sample_2d
    model = load_model(saved_threshold_model)
    plain = segment(model, read_image(image)[0], instances=True, min_size=8)
    sizes = np.bincount(plain.ravel())[1:]
    model.metadata["min_size"] = int(np.median(sizes[sizes > 0]))  # half the objects go
    path = save_model(model, out_dir / "sized.safetensors")
    got = {}
    for extra in ([], ["--min-size", "8"]):
        out = out_dir / f"sized{len(extra)}.tif"
        argv = ["segment", image, "-o", out, "--model", path, "--instances", "-q", *extra]
        code, _, err = run(argv, capsys)
        assert code == 0, err
        got[len(extra)] = read_image(out)[0]
    np.testing.assert_array_equal(got[2] > 0, plain > 0)  # --min-size wins
    kept = np.bincount(got[0].ravel())[1:]
    assert kept[kept > 0].min() >= model.metadata["min_size"]
    assert 0 < got[0].max() < plain.max()


def test_segment_probabilities(sample_2d, saved_threshold_model, out_dir, capsys):
    image, _ = sample_2d
    out, prob = out_dir / "labels.tif", out_dir / "prob.tif"
    code, _, err = run(
        [
            "segment",
            image,
            "-o",
            out,
            "--model",
            saved_threshold_model,
            "--probabilities",
            prob,
            "--tile-size",
            64,
            "--batch-size",
            3,
            "-q",
        ],
        capsys,
    )
    assert code == 0, err
    p, axes = read_image(prob)
    assert p.shape == (2, SIZE, SIZE) and p.dtype == np.float32 and axes == "CYX"
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(read_image(out)[0], p.argmax(0))
    assert leftovers(out_dir) == []


def test_segment_zyx_stack(sample_zyx, saved_threshold_model, out_dir, capsys):
    out = out_dir / "stack_labels.tif"
    code, _, err = run(
        ["segment", sample_zyx, "-o", out, "--model", saved_threshold_model, "--instances", "2d"],
        capsys,
    )
    assert code == 0, err
    labels, axes = read_image(out)
    assert labels.shape == (3, 64, 64) and axes == "ZYX"
    per_slice = [set(np.unique(labels[z])) - {0} for z in range(3)]
    assert all(per_slice)
    assert not (per_slice[0] & per_slice[1]) and not (per_slice[1] & per_slice[2])


# -- segment --measure ---------------------------------------------------------------------------
def test_segment_measure_writes_the_objects_table(
    sample_2d, saved_threshold_model, out_dir, capsys
):
    import pandas as pd

    from napari_tessera import measure

    image, _ = sample_2d
    out, table = out_dir / "inst.tif", out_dir / "objects.csv"
    argv = ["segment", image, "-o", out, "--model", saved_threshold_model, "--instances"]
    code, _, err = run([*argv, "--measure", table, "--voxel-size", "0.5,0.25"], capsys)
    assert code == 0, err
    assert f"wrote the objects table {table}" in err
    labels, _ = read_image(out)
    got = pd.read_csv(table)
    assert len(got) == len(np.unique(labels)) - 1 > 3
    assert list(got["label"]) == sorted(set(np.unique(labels)) - {0})
    expected = measure(labels, read_image(image)[0], voxel_size=(0.5, 0.25))
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)
    np.testing.assert_allclose(got["area_um2"], got["area_px"] * 0.125)
    np.testing.assert_allclose(got["centroid_y_um"], got["centroid_y_px"] * 0.5)
    assert sorted(p.name for p in out_dir.iterdir()) == ["inst.tif", "objects.csv"]


def test_segment_measure_reads_the_voxel_size_of_the_tiff(
    sample_2d, sample_zyx, saved_threshold_model, tmp_path, capsys
):
    import pandas as pd

    image = read_image(sample_2d[0])[0]
    calibrated = tmp_path / "calibrated.tif"
    tifffile.imwrite(calibrated, image, imagej=True, resolution=(4.0, 4.0), metadata={"unit": "um"})
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(
        stack,
        read_image(sample_zyx)[0],
        imagej=True,
        resolution=(2.0, 2.0),
        metadata={"unit": "micron", "spacing": 3.0, "axes": "ZYX"},
    )
    base = ["--model", saved_threshold_model, "--instances", "-q"]
    code, _, err = run(
        ["segment", calibrated, "-o", tmp_path / "a.tif", "--measure", tmp_path / "a.csv", *base],
        capsys,
    )
    assert code == 0, err
    a = pd.read_csv(tmp_path / "a.csv")
    np.testing.assert_allclose(a["area_um2"], a["area_px"] / 16)  # 0.25 um pixels
    np.testing.assert_allclose(a["centroid_x_um"], a["centroid_x_px"] * 0.25)
    code, _, err = run(
        ["segment", stack, "-o", tmp_path / "s.tif", "--measure", tmp_path / "s.csv", *base],
        capsys,
    )
    assert code == 0, err
    s = pd.read_csv(tmp_path / "s.csv")
    assert len(s) > 0 and "area_px" not in s.columns
    np.testing.assert_allclose(s["volume_um3"], s["volume_vox"] * 3.0 * 0.25)
    np.testing.assert_allclose(s["centroid_z_um"], s["centroid_z_px"] * 3.0)
    # the file's size gives way to --voxel-size
    code, _, err = run(
        [
            "segment",
            stack,
            "-o",
            tmp_path / "t.tif",
            "--measure",
            tmp_path / "t.csv",
            "--voxel-size",
            "1,1,1",
            *base,
        ],
        capsys,
    )
    assert code == 0, err
    t = pd.read_csv(tmp_path / "t.csv")
    np.testing.assert_allclose(t["volume_um3"], t["volume_vox"])
    # no voxel size anywhere: pixels only
    code, _, err = run(
        ["segment", sample_zyx, "-o", tmp_path / "u.tif", "--measure", tmp_path / "u.csv", *base],
        capsys,
    )
    assert code == 0, err
    u = pd.read_csv(tmp_path / "u.csv")
    assert "volume_vox" in u.columns and not [c for c in u.columns if "_um" in c]


def test_segment_measure_into_a_zarr_output(sample_2d, saved_threshold_model, out_dir, capsys):
    import pandas as pd

    image, _ = sample_2d
    code, _, err = run(
        [
            "segment",
            image,
            "-o",
            out_dir / "l.zarr",
            "--model",
            saved_threshold_model,
            "--instances",
            "--measure",
            out_dir,  # a folder: {stem}_objects.csv in it
            "-q",
        ],
        capsys,
    )
    assert code == 0, err
    labels = read_image(out_dir / "l.zarr")[0]
    table = pd.read_csv(out_dir / "x_objects.csv")
    assert list(table["label"]) == sorted(set(np.unique(labels)) - {0})
    assert table["area_px"].sum() == np.count_nonzero(labels)


@pytest.mark.parametrize(
    ("extra", "expect"),
    [
        (["--measure", "objects.csv"], "add --instances"),
        (["--instances", "--measure", "objects.csv", "--voxel-size", "1,1,1"], "give Y,X"),
        (["--instances", "--measure", "objects.csv", "--voxel-size", "1,0"], "positive"),
        (["--instances", "--measure", "nowhere/objects.csv"], "does not exist"),
    ],
)
def test_segment_measure_refusals_are_one_line(
    extra, expect, sample_2d, saved_threshold_model, out_dir, capsys, monkeypatch
):
    monkeypatch.chdir(out_dir)
    argv = ["segment", sample_2d[0], "-o", "labels.tif", "--model", saved_threshold_model]
    code, _, err = run([*argv, *extra], capsys)
    assert code == 2
    lines = nonempty_lines(err)
    assert len(lines) == 1 and expect in lines[0], err
    assert list(out_dir.iterdir()) == []  # no labels, no table, no temporary file


def _small_sample(folder: Path) -> Path:
    path = folder / "small.tif"
    assert cli.main(["sample", "-o", str(path), "--size", "48", "-q"]) == 0
    return path


def test_segment_npy_guesses_axes(tmp_path, saved_threshold_model, out_dir, capsys):
    img = read_image(_small_sample(tmp_path))[0]
    np.save(tmp_path / "img.npy", np.stack([img, img]))
    out = out_dir / "l.tif"
    code, _, err = run(
        ["segment", tmp_path / "img.npy", "-o", out, "--model", saved_threshold_model, "-q"],
        capsys,
    )
    assert code == 0, err
    assert "guessed as ZYX" in err  # no axes in a .npy file: the guess is stated
    labels, axes = read_image(out)
    assert labels.shape == (2, 48, 48) and axes == "ZYX"
    np.testing.assert_array_equal(labels[0], labels[1])


def test_default_model_is_used_when_installed(
    sample_2d, saved_threshold_model, out_dir, capsys, monkeypatch
):
    monkeypatch.setattr(napari_tessera.models, "default_model_path", lambda: saved_threshold_model)
    out = out_dir / "labels.tif"
    code, _, err = run(["segment", sample_2d[0], "-o", out, "-q"], capsys)
    assert code == 0, err
    assert read_image(out)[0].any()


def test_console_script_in_subprocess(sample_2d, saved_threshold_model, out_dir):
    script = Path(sys.executable).with_name("tessera")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "napari_tessera.cli"]
    out = out_dir / "labels.tif"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [
            *cmd,
            "segment",
            str(sample_2d[0]),
            "-o",
            str(out),
            "--model",
            str(saved_threshold_model),
            "--instances",
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    labels, axes = read_image(out)
    assert labels.shape == (SIZE, SIZE) and axes == "YX" and labels.max() > 1
    # an expected problem: exit code 2 and one line, from the real process too
    proc = subprocess.run(
        [
            *cmd,
            "segment",
            str(out_dir / "missing.tif"),
            "-o",
            str(out_dir / "x.tif"),
            "--model",
            str(saved_threshold_model),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 2
    assert nonempty_lines(proc.stderr) == [nonempty_lines(proc.stderr)[0]]
    assert "missing.tif" in proc.stderr and "Traceback" not in proc.stderr
    assert not (out_dir / "x.tif").exists()


# -- expected problems: exit code 2, one line, no output ---------------------------------------
@pytest.fixture
def bad_inputs(tmp_path, sample_2d, saved_threshold_model):
    """case name -> arguments after ``segment`` (input file first), files created on the fly."""
    d = tmp_path / "inputs"
    d.mkdir()
    text = d / "x.tif"
    text.write_text("this is not an image\n")
    rgb = d / "rgb.tif"
    tifffile.imwrite(rgb, np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    nan = d / "nan.tif"
    arr = np.random.default_rng(1).random((64, 64)).astype(np.float32)
    arr[10, 10] = np.nan
    write_tiff(nan, arr, axes="YX")
    pickled = d / "model.pt"
    torch.save({"weights": torch.zeros(3)}, pickled)
    raw_pickle = d / "model.safetensors"
    raw_pickle.write_bytes(pickle.dumps({"inc.0.weight": [0.0]}))
    image, model = sample_2d[0], saved_threshold_model
    return {
        "missing input": [d / "nope.tif", "--model", model],
        "text file named .tif": [text, "--model", model],
        "wrong axes (3 for 2D)": [image, "--model", model, "--axes", "ZYX"],
        "wrong axes (no X)": [image, "--model", model, "--axes", "ZY"],
        "unknown axis letter": [image, "--model", model, "--axes", "YQ"],
        "tile size 0": [image, "--model", model, "--tile-size", "0"],
        "tile size -5": [image, "--model", model, "--tile-size", "-5"],
        "tile size text": [image, "--model", model, "--tile-size", "big"],
        "tile size 0x64": [image, "--model", model, "--tile-size", "0x64"],
        "negative halo": [image, "--model", model, "--halo", "-3"],
        "edge offset text": [image, "--model", model, "--edge-offset", "wide"],
        "edge offset too far": [image, "--model", model, "--edge-offset", "40"],
        "edge offset nan": [image, "--model", model, "--edge-offset", "nan"],
        "rgb for 1-channel model": [rgb, "--model", model, "--axes", "YXC"],
        "rgb, axes from file": [rgb, "--model", model],
        "tile too small for halo": [
            image,
            "--model",
            model,
            "--tile-size",
            "16",
            "--halo",
            "exact",
        ],
        "tile too small for auto halo": [image, "--model", model, "--tile-size", "8"],
        "unknown halo word": [image, "--model", model, "--halo", "fast"],
        "unknown device": [image, "--model", model, "--device", "tpu"],
        "fp16 on cpu": [image, "--model", model, "--device", "cpu", "--precision", "fp16"],
        "float image with NaN": [nan, "--model", model],
        "torch.save model": [image, "--model", pickled],
        "raw pickle model": [image, "--model", raw_pickle],
        "model file missing": [image, "--model", d / "none.safetensors"],
        "model is an image": [image, "--model", image],
    }


# case -> a word the one-line message must contain (so it names the actual problem)
CASES = {
    "missing input": "not found",
    "text file named .tif": "x.tif",
    "wrong axes (3 for 2D)": "axes",
    "wrong axes (no X)": "axes",
    "unknown axis letter": "axis",
    "tile size 0": "tile-size",
    "tile size -5": "tile-size",
    "tile size text": "tile-size",
    "tile size 0x64": "tile-size",
    "negative halo": "halo",
    "edge offset text": "edge-offset",
    "edge offset too far": "between -16 and 16",
    "edge offset nan": "edge-offset",
    "rgb for 1-channel model": "signal in several channels",
    "rgb, axes from file": "signal in several channels",
    "tile too small for halo": "tile size",
    "tile too small for auto halo": "tile size",
    "unknown halo word": "'auto', 'exact' or pixels",
    "unknown device": "device",
    "fp16 on cpu": "fp16",
    "float image with NaN": "NaN",
    "torch.save model": "pickle",
    "raw pickle model": "pickle",
    "model file missing": "not found",
    "model is an image": "x.tif",
}


def test_cases_cover_every_bad_input(bad_inputs):
    assert sorted(CASES) == sorted(bad_inputs)


def _check_refused(argv, out_dir, capsys, *, quiet, expect):
    out = out_dir / "labels.tif"
    prob = out_dir / "prob.tif"
    args = ["segment", argv[0], "-o", out, "--probabilities", prob, *argv[1:]]
    if quiet:
        args.append("-q")
    code, stdout, err = run(args, capsys)
    assert code == 2, err
    lines = nonempty_lines(err)
    assert "Traceback" not in err
    assert not out.exists() and not prob.exists()
    assert list(out_dir.iterdir()) == []  # no temp files either
    assert stdout == ""
    assert len(lines) == 1, err
    assert lines[0].startswith("tessera")
    assert "error" in lines[0]
    assert expect.lower() in lines[0].lower(), lines[0]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_exit_2_one_line_no_output(case, bad_inputs, out_dir, capsys):
    _check_refused(bad_inputs[case], out_dir, capsys, quiet=False, expect=CASES[case])


@pytest.mark.parametrize("case", CASES)
def test_bad_input_exit_2_one_line_no_output_quiet(case, bad_inputs, out_dir, capsys):
    _check_refused(bad_inputs[case], out_dir, capsys, quiet=True, expect=CASES[case])


def test_pickle_model_message_mentions_pickle(bad_inputs, out_dir, capsys):
    code, _, err = run(
        [
            "segment",
            *bad_inputs["torch.save model"][:1],
            "-o",
            out_dir / "l.tif",
            *bad_inputs["torch.save model"][1:],
        ],
        capsys,
    )
    assert code == 2 and "pickle" in err


def test_missing_output_folder(sample_2d, saved_threshold_model, tmp_path, capsys):
    out = tmp_path / "no" / "such" / "folder" / "labels.tif"
    code, _, err = run(
        ["segment", sample_2d[0], "-o", out, "--model", saved_threshold_model], capsys
    )
    assert code == 2
    assert len(nonempty_lines(err)) == 1 and "does not exist" in err
    assert not (tmp_path / "no").exists()


def test_output_is_a_folder_or_the_input(sample_2d, saved_threshold_model, tmp_path, capsys):
    for out in (tmp_path, sample_2d[0]):
        before = sample_2d[0].read_bytes()
        code, _, err = run(
            ["segment", sample_2d[0], "-o", out, "--model", saved_threshold_model], capsys
        )
        assert code == 2 and len(nonempty_lines(err)) == 1, err
        assert sample_2d[0].read_bytes() == before


def test_missing_model_without_default(sample_2d, out_dir, capsys, monkeypatch):
    monkeypatch.setattr(napari_tessera.models, "default_model_path", lambda: None)
    code, _, err = run(["segment", sample_2d[0], "-o", out_dir / "labels.tif"], capsys)
    assert code == 2
    lines = nonempty_lines(err)
    assert len(lines) == 1 and "--model" in lines[0] and "Traceback" not in err
    assert list(out_dir.iterdir()) == []


def test_usage_errors(capsys):
    assert run([], capsys)[0] == 2
    code, _, err = run(["frobnicate"], capsys)
    assert code == 2 and len(nonempty_lines(err)) == 1
    code, _, err = run(["segment", "x.tif"], capsys)  # no -o
    assert code == 2 and len(nonempty_lines(err)) == 1
    code, out, _ = run(["--version"], capsys)
    assert code == 0 and "tessera 0.1.0" in out


# -- interruption ------------------------------------------------------------------------------
def _interrupting_forward(self, x):
    raise KeyboardInterrupt


@pytest.mark.parametrize("existing", [False, True])
def test_keyboard_interrupt_during_segmentation(
    sample_2d, saved_threshold_model, out_dir, capsys, monkeypatch, existing
):
    out = out_dir / "labels.tif"
    if existing:
        out.write_bytes(b"previous result")
    monkeypatch.setattr(UNet, "forward", _interrupting_forward)
    code, _, err = run(
        [
            "segment",
            sample_2d[0],
            "-o",
            out,
            "--model",
            saved_threshold_model,
            "--probabilities",
            out_dir / "p.tif",
        ],
        capsys,
    )
    assert code == 130
    assert "interrupted" in err and "Traceback" not in err
    assert sorted(p.name for p in out_dir.iterdir()) == (["labels.tif"] if existing else [])
    if existing:
        assert out.read_bytes() == b"previous result"


def test_keyboard_interrupt_while_writing_leaves_no_temp_file(
    sample_2d, saved_threshold_model, out_dir, capsys, monkeypatch
):
    real_imwrite = tifffile.imwrite
    written = []

    def half_write(path, data, **kwargs):
        real_imwrite(path, data[: len(data) // 2], **kwargs)  # something is on disk
        written.append(Path(path))
        raise KeyboardInterrupt

    monkeypatch.setattr(tifffile, "imwrite", half_write)
    out = out_dir / "labels.tif"
    code, _, err = run(
        ["segment", sample_2d[0], "-o", out, "--model", saved_threshold_model, "-q"], capsys
    )
    assert code == 130
    assert written and written[0].parent == out_dir and written[0] != out
    assert list(out_dir.iterdir()) == []


def test_sigterm_is_handled_like_ctrl_c(
    sample_2d, saved_threshold_model, out_dir, capsys, monkeypatch
):
    def sigterm_forward(self, x):
        os.kill(os.getpid(), signal.SIGTERM)  # the handler raises KeyboardInterrupt
        raise AssertionError("SIGTERM was not turned into an interruption")

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(UNet, "forward", sigterm_forward)
    code, _, err = run(
        [
            "segment",
            sample_2d[0],
            "-o",
            out_dir / "labels.tif",
            "--model",
            saved_threshold_model,
            "-q",
        ],
        capsys,
    )
    assert code == 130 and "interrupted" in err
    assert list(out_dir.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) == before  # handler restored


def test_main_returns_int_for_success(sample_2d, saved_threshold_model, out_dir):
    code = cli.main(
        [
            "segment",
            str(sample_2d[0]),
            "-o",
            str(out_dir / "l.tif"),
            "--model",
            str(saved_threshold_model),
            "-q",
        ]
    )
    assert code == 0 and isinstance(code, int)
