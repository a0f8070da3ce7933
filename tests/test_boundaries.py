"""Package boundaries: the core never imports napari or Qt; the napari manifest is valid."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "napari_tessera"

CORE_MODULES = [
    "napari_tessera",
    "napari_tessera.cli",
    "napari_tessera.inference",
    "napari_tessera.io",
    "napari_tessera.tiling",
    "napari_tessera.postprocess",
    "napari_tessera.synthetic",
    "napari_tessera.models",
    "napari_tessera._sample_data",
]
OPTIONAL_CORE = ["napari_tessera.training"]  # core as well, where this version has it
FORBIDDEN = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6")

_PROBE = """
import importlib, json, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
forbidden = {forbidden!r}
bad = sorted(m for m in sys.modules
             if m in forbidden or m.startswith('napari.')
             or any(m.startswith(f + '.') for f in forbidden[1:]))
print(json.dumps(bad))
"""


def _imported_gui_modules(modules: list[str]) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE.format(forbidden=FORBIDDEN), *modules],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_core_imports_neither_napari_nor_qt():
    modules = CORE_MODULES + [m for m in OPTIONAL_CORE if importlib.util.find_spec(m)]
    assert _imported_gui_modules(modules) == []


def test_the_probe_detects_gui_imports():
    """The subprocess check has power: a Qt import is reported."""
    if importlib.util.find_spec("qtpy") is None:
        pytest.skip("qtpy is not installed")
    bad = _imported_gui_modules(["json", "qtpy"])
    assert "qtpy" in bad


def test_top_level_manifest_matches_package_manifest():
    top = ROOT / "napari.yaml"
    inner = PACKAGE / "napari.yaml"
    assert top.is_file() and inner.is_file()
    assert top.read_bytes() == inner.read_bytes()
    a = yaml.safe_load(top.read_text())
    b = yaml.safe_load(inner.read_text())
    assert a == b
    assert a["name"] == "napari-tessera"
    assert a["contributions"]["commands"]


def test_manifest_commands_point_to_real_callables():
    manifest = yaml.safe_load((PACKAGE / "napari.yaml").read_text())
    ids = set()
    for command in manifest["contributions"]["commands"]:
        ids.add(command["id"])
        assert command["id"].startswith("napari-tessera.")
        module, _, attr = command["python_name"].partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), command["python_name"]
    for group in manifest["contributions"].values():
        for item in group:
            if "command" in item:
                assert item["command"] in ids


def test_sample_data_commands_return_layer_data():
    from napari_tessera import _sample_data

    for fn in (_sample_data.nuclei_2d_sample, _sample_data.nuclei_stack_sample):
        layers = fn()
        assert layers and all(len(layer) == 3 and layer[2] == "image" for layer in layers)
        assert layers[0][0].ndim in (2, 3) and layers[0][0].size > 0


def test_npe2_validates_the_manifest():
    npe2 = pytest.importorskip("npe2")
    manifest = npe2.PluginManifest.from_distribution("napari-tessera")
    assert manifest.name == "napari-tessera"
    proc = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", "napari-tessera"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "valid" in (proc.stdout + proc.stderr).lower()
