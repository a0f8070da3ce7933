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


def _modules() -> list[str]:
    """Every module of the package, by its dotted name."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


# the core: every module but the widgets (and the CLI's entry point, which runs on import)
CORE_MODULES = [m for m in _modules() if "._widgets" not in m and not m.endswith("__main__")]
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
    assert "napari_tessera.inference" in CORE_MODULES and "napari_tessera.cli" in CORE_MODULES
    assert _imported_gui_modules(CORE_MODULES) == []


def _imports(path: Path, name: str) -> set[str]:
    """The package modules ``name`` imports anywhere in it (function-local imports too)."""
    import ast

    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found |= {f"{mod}.{a.name}" for a in node.names}  # `from . import x`
    known = set(_modules())
    return {m for m in found if m in known and m != name and not name.startswith(m + ".")}


def test_no_module_imports_another_that_imports_it_back():
    """No import cycle between the package's modules, function-local imports included (a
    package's __init__ re-exporting its submodules is not a cycle)."""
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        graph[name] = _imports(path, name)
    cycles = []
    state: dict[str, int] = {}

    def visit(node, trail):
        state[node] = 1
        for nxt in graph.get(node, ()):
            if nxt.startswith(node + ".") or node.startswith(nxt + "."):
                continue  # a package and its own modules
            if state.get(nxt) == 1:
                cycles.append(trail[trail.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_the_cycle_check_has_power(tmp_path, monkeypatch):
    pkg = tmp_path / "napari_tessera"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import x\n")
    (pkg / "b.py").write_text("def f():\n    from . import a\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    with pytest.raises(AssertionError):
        test_no_module_imports_another_that_imports_it_back()


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
