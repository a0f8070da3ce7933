"""``tessera segment`` over several images: a folder, a pattern or a list of files.

One labels file per input in the -o folder; a re-run skips the finished ones; a bad file is
reported and skipped while the others finish (exit code 1 and a summary).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

from _helpers import run
from napari_tessera import UNet
from napari_tessera.inference import segment
from napari_tessera.io import load_model
from napari_tessera.synthetic import nuclei_2d


@pytest.fixture()
def raw(tmp_path) -> Path:
    folder = tmp_path / "raw"
    folder.mkdir()
    for k, size in enumerate((64, 80, 72)):
        tifffile.imwrite(folder / f"field_{k}.tif", nuclei_2d((size, size), seed=k).image)
    np.save(folder / "extra.npy", nuclei_2d((48, 64), seed=9).image)
    (folder / "notes.txt").write_text("not an image")
    return folder


def outputs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_folder_gives_one_labels_file_per_image(raw, tmp_path, saved_threshold_model, capsys):
    out = tmp_path / "out"  # made by the run
    code, _, err = run(
        ["segment", raw, "-o", out, "--model", saved_threshold_model, "--instances"], capsys
    )
    assert code == 0, err
    assert outputs(out) == [
        "extra_labels.tif",
        "field_0_labels.tif",
        "field_1_labels.tif",
        "field_2_labels.tif",
    ]
    assert f"segmented 4 file(s) into {out}" in err
    model = load_model(saved_threshold_model)
    for name in ("field_1", "extra"):
        src = raw / (f"{name}.tif" if name != "extra" else "extra.npy")
        image = tifffile.imread(src) if src.suffix == ".tif" else np.load(src)
        expected = segment(model, image, instances=True, device="cpu")
        np.testing.assert_array_equal(tifffile.imread(out / f"{name}_labels.tif"), expected)


def test_a_rerun_skips_finished_outputs_and_restart_redoes_them(
    raw, tmp_path, saved_threshold_model, capsys, monkeypatch
):
    out = tmp_path / "out"
    argv = ["segment", str(raw / "field_*.tif"), "-o", out, "--model", saved_threshold_model]
    assert run(argv, capsys)[0] == 0
    assert outputs(out) == [f"field_{k}_labels.tif" for k in range(3)]
    stamp = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    (out / "field_1_labels.tif").unlink()  # as if the first run was cut off before it

    calls = []
    real = UNet.forward

    def counting(self, x):
        calls.append(1)
        return real(self, x)

    monkeypatch.setattr(UNet, "forward", counting)
    code, _, err = run(argv, capsys)
    assert code == 0 and "2 already done, skipped" in err
    assert outputs(out) == [f"field_{k}_labels.tif" for k in range(3)]
    for name in ("field_0_labels.tif", "field_2_labels.tif"):
        assert (out / name).stat().st_mtime_ns == stamp[name]
    one_file = len(calls)
    assert one_file > 0

    calls.clear()
    code, _, err = run([*argv, "--restart"], capsys)
    assert code == 0 and "segmented 3 file(s)" in err
    assert len(calls) > 2 * one_file


def test_a_bad_file_is_reported_and_the_others_finish(raw, tmp_path, saved_threshold_model, capsys):
    (raw / "broken.tif").write_bytes(b"II*\x00 this is not a TIFF")
    np.save(raw / "nan.npy", np.full((32, 32), np.nan, np.float32))
    out = tmp_path / "out"
    code, _, err = run(["segment", raw, "-o", out, "--model", saved_threshold_model], capsys)
    assert code == 1
    assert "Traceback" not in err
    assert outputs(out) == [
        "extra_labels.tif",
        "field_0_labels.tif",
        "field_1_labels.tif",
        "field_2_labels.tif",
    ]
    assert "2 file(s) failed:" in err
    lines = err.splitlines()
    assert any("broken.tif: broken.tif is not a readable TIFF image" in line for line in lines)
    assert any("nan.npy: nan.npy contains NaN or infinite pixels" in line for line in lines)
    assert not [p for p in out.iterdir() if ".part" in p.name]


def test_several_files_and_their_checks(raw, tmp_path, saved_threshold_model, capsys):
    out = tmp_path / "out"
    files = [raw / "field_0.tif", raw / "extra.npy"]
    code, _, err = run(["segment", *files, "-o", out, "--model", saved_threshold_model], capsys)
    assert code == 0, err
    assert outputs(out) == ["extra_labels.tif", "field_0_labels.tif"]

    np.save(raw / "field_0.npy", np.zeros((32, 32), np.float32))
    for argv, message in [
        ([raw, "-o", out], "field_0.npy and " + str(raw / "field_0.tif") + " would both write"),
        ([str(raw / "*.png"), "-o", out], "no image files match"),
        ([raw / "field_0.tif", raw / "nope.tif", "-o", out], "input not found"),
        ([raw / "field_0.tif", raw / "extra.npy", "-o", raw / "field_0.tif"], "is a file"),
        ([raw, "-o", tmp_path / "no" / "such"], "output folder does not exist"),
        ([raw / "field_0.tif", raw / "extra.npy", "-o", out, "--probabilities", out / "p.tif"],
         "--probabilities takes one input"),
    ]:  # fmt: skip
        code, _, err = run(["segment", *argv, "--model", saved_threshold_model], capsys)
        assert code == 2, (argv, err)
        assert message in err, err
        assert len(err.strip().splitlines()) == 1


def test_measure_writes_one_table_per_image(raw, tmp_path, saved_threshold_model, capsys):
    import pandas as pd

    from napari_tessera import measure

    out, tables = tmp_path / "out", tmp_path / "tables"  # both made by the run
    argv = ["segment", raw, "-o", out, "--model", saved_threshold_model, "--instances"]
    code, _, err = run([*argv, "--measure", tables, "--voxel-size", "0.5,0.5"], capsys)
    assert code == 0, err
    assert outputs(tables) == [
        "extra_objects.csv",
        "field_0_objects.csv",
        "field_1_objects.csv",
        "field_2_objects.csv",
    ]
    for name, src in (("field_1", raw / "field_1.tif"), ("extra", raw / "extra.npy")):
        image = tifffile.imread(src) if src.suffix == ".tif" else np.load(src)
        labels = tifffile.imread(out / f"{name}_labels.tif")
        got = pd.read_csv(tables / f"{name}_objects.csv")
        assert len(got) == len(np.unique(labels)) - 1 > 0
        expected = measure(labels, image, voxel_size=(0.5, 0.5))
        pd.testing.assert_frame_equal(got, expected, check_dtype=False)

    # a re-run measures the finished images whose table is missing, without segmenting them
    (tables / "field_1_objects.csv").unlink()
    before = (tables / "field_0_objects.csv").stat().st_mtime_ns
    code, _, err = run([*argv, "--measure", tables, "--voxel-size", "0.5,0.5"], capsys)
    assert code == 0 and "4 already done, skipped" in err
    assert (tables / "field_1_objects.csv").exists()
    assert (tables / "field_0_objects.csv").stat().st_mtime_ns == before

    # a pattern with {stem}
    code, _, err = run([*argv, "--measure", str(tmp_path / "t" / "{stem}.csv")], capsys)
    assert code == 0, err
    assert outputs(tmp_path / "t") == ["extra.csv", "field_0.csv", "field_1.csv", "field_2.csv"]
    assert "area_um2" not in pd.read_csv(tmp_path / "t" / "extra.csv").columns  # no size known
    assert not [p for p in tables.iterdir() if ".part" in p.name]


def test_an_image_whose_measuring_fails_is_reported(
    raw, tmp_path, saved_threshold_model, capsys, monkeypatch
):
    import napari_tessera.files as files
    from napari_tessera import InputError

    real = files.measure_output

    def fail_on_extra(image, *args):
        if image.name == "extra.npy":
            raise InputError("no room for the table")
        return real(image, *args)

    monkeypatch.setattr(files, "measure_output", fail_on_extra)
    out, tables = tmp_path / "out", tmp_path / "tables"
    argv = ["segment", raw, "-o", out, "--model", saved_threshold_model, "--instances"]
    code, _, err = run([*argv, "--measure", tables], capsys)
    assert code == 1
    assert "extra.npy: measuring its objects failed: no room for the table" in err
    assert "extra_labels.tif" in outputs(out)  # the labels are kept
    assert outputs(tables) == [f"field_{k}_objects.csv" for k in range(3)]


def test_measure_in_a_folder_run_names_a_folder(raw, tmp_path, saved_threshold_model, capsys):
    out = tmp_path / "out"
    base = ["segment", raw, "-o", out, "--model", saved_threshold_model]
    for extra, message in [
        (["--instances", "--measure", tmp_path / "one.csv"], "names one file"),
        (["--measure", tmp_path / "tables"], "add --instances"),
    ]:
        code, _, err = run([*base, *extra], capsys)
        assert code == 2 and message in err, err
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "tables").exists() and not (tmp_path / "one.csv").exists()


def test_an_interrupted_folder_run_keeps_finished_files(
    raw, tmp_path, saved_threshold_model, capsys, monkeypatch
):
    out = tmp_path / "out"
    real = UNet.forward

    def stop_in_second_file(self, x):
        if out.is_dir() and any(out.iterdir()):  # the first image is written
            raise KeyboardInterrupt
        return real(self, x)

    monkeypatch.setattr(UNet, "forward", stop_in_second_file)
    argv = ["segment", str(raw / "field_*.tif"), "-o", out, "--model", saved_threshold_model]
    code, _, err = run(argv, capsys)
    assert code == 130
    assert f"finished files kept in {out}" in err
    assert outputs(out) == ["field_0_labels.tif"]
    monkeypatch.setattr(UNet, "forward", real)
    code, _, err = run(argv, capsys)
    assert code == 0 and "1 already done" in err
    assert os.path.exists(out / "field_2_labels.tif")


def test_a_folder_run_loads_the_model_once(
    raw, tmp_path, saved_threshold_model, capsys, monkeypatch
):
    import napari_tessera.io as tio

    loads = []
    real = tio.load_model
    monkeypatch.setattr(tio, "load_model", lambda *a, **k: loads.append(1) or real(*a, **k))
    code, _, err = run(
        ["segment", raw, "-o", tmp_path / "out", "--model", saved_threshold_model], capsys
    )
    assert code == 0, err
    assert len(loads) == 1


@pytest.mark.slow
def test_a_folder_run_spreads_files_over_a_dask_cluster(
    raw, tmp_path, saved_threshold_model, capsys, cluster
):
    """--scheduler: each file is a task on the workers (processes of their own); the labels
    equal the in-process run, a bad file is reported, and a re-run skips the finished."""
    (raw / "broken.tif").write_bytes(b"not a tiff")
    here, there = tmp_path / "here", tmp_path / "there"
    base = ["--model", saved_threshold_model, "--instances"]
    code, _, err = run(["segment", raw, "-o", here, *base], capsys)
    assert code == 1, err
    argv = ["segment", raw, "-o", there, *base, "--scheduler", cluster.scheduler_address]
    code, _, err = run(argv, capsys)
    assert code == 1, err
    assert "dask: 2 worker(s) at tcp://127.0.0.1:" in err
    assert "1 file(s) failed" in err and "broken.tif" in err
    assert (
        outputs(there)
        == outputs(here)
        == [
            "extra_labels.tif",
            "field_0_labels.tif",
            "field_1_labels.tif",
            "field_2_labels.tif",
        ]
    )
    for name in outputs(here):
        np.testing.assert_array_equal(tifffile.imread(there / name), tifffile.imread(here / name))
    code, _, err = run(argv, capsys)
    assert code == 1 and "4 already done" in err
