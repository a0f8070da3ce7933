"""A plain (non-editable) install carries everything napari and the CLI need.

Builds the wheel from the working tree, installs it into a scratch folder without
dependencies, and checks what a user's `pip install napari-tessera` would get: the npe2
manifest where the entry point says, the built-in model, the console script, and the
metadata napari's plugin listing shows.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # builds and installs a wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # build from a copy-free tree: pip builds in its own temporary folder
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.fail(f"building the wheel failed:\n{proc.stderr[-2000:]}")
    (whl,) = out.glob("napari_tessera-*.whl")
    return whl


def test_wheel_holds_manifest_model_and_entry_points(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        assert "napari_tessera/napari.yaml" in names
        assert "napari_tessera/models/nuclei.safetensors" in names
        (ep,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        entry_points = z.read(ep).decode()
        (md,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = z.read(md).decode()
        assert z.getinfo("napari_tessera/models/nuclei.safetensors").file_size > 1_000_000
    assert "[napari.manifest]" in entry_points
    assert "napari-tessera = napari_tessera:napari.yaml" in entry_points
    assert "tessera = napari_tessera.cli:main" in entry_points
    assert "Classifier: Framework :: napari" in metadata
    assert not any(n.startswith("tests/") for n in names)


def test_installed_wheel_validates_and_loads_its_model(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    pkg = target / "napari_tessera"
    code = (
        "import sys, npe2, napari_tessera\n"
        f"assert napari_tessera.__file__.startswith({str(pkg)!r}), napari_tessera.__file__\n"
        "from napari_tessera.models import default_model_path\n"
        "from napari_tessera.io import load_model\n"
        "m = npe2.PluginManifest.from_file(default_model_path().parents[1] / 'napari.yaml')\n"
        "assert m.name == 'napari-tessera' and m.display_name == 'Tessera', m.name\n"
        "cmds = {c.id for c in m.contributions.commands}\n"
        "assert any('segment' in c for c in cmds) and any('train' in c for c in cmds), cmds\n"
        "for c in m.contributions.commands:\n"
        "    mod, _, attr = c.python_name.partition(':')\n"
        "    __import__(mod, fromlist=['x'])\n"
        "    obj = sys.modules[mod]\n"
        "    for part in attr.split('.'): obj = getattr(obj, part)\n"
        "net = load_model(default_model_path())\n"
        "print(net.config.base_channels)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "QT_QPA_PLATFORM": "offscreen"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "16"
