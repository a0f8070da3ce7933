"""Reading a bioimage.io package that Tessera exported (no code from it runs, no unpickling).

Kept apart from bioimageio.py (export), which imports io.py: io.load_model calls this lazily.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from .errors import MissingExtra, ModelFileError
from .images import file_sha256

MODEL_ATTACHMENT = "tessera_model.safetensors"


def _need_spec():
    try:
        import bioimageio.spec  # noqa: F401
    except ImportError as err:
        raise MissingExtra(
            "bioimage.io packages need the optional extra: pip install 'napari-tessera[bioimageio]'"
        ) from err


def file_name(source: Any) -> str:
    s = str(getattr(source, "path", None) or source)
    return s.replace("\\", "/").rsplit("/", 1)[-1]


def one_line(err: Any) -> str:
    text = " ".join(str(err).split())
    return text[:300]


# -- import ------------------------------------------------------------------------------------
def read_package(path: str | os.PathLike):
    """The checked description of a bioimage.io model package (spec 0.5): the zip is whole
    (every member passes its CRC) and its rdf parses. One-line :class:`ModelFileError` else."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    if not zipfile.is_zipfile(path):
        raise ModelFileError(f"{path.name} is not a valid zip (corrupt or truncated)")
    _need_spec()
    from bioimageio.spec import ValidationContext, load_description
    from bioimageio.spec.model import v0_5

    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise ModelFileError(f"{path.name} is not a valid zip: {err}") from err
    if bad is not None:
        raise ModelFileError(f"{path.name} is corrupt: {bad} fails its CRC check")
    if not ({"rdf.yaml", "bioimageio.yaml"} & names):
        raise ModelFileError(f"{path.name} is a zip but not a bioimage.io package (no rdf.yaml)")
    try:
        with ValidationContext(perform_io_checks=False):
            # an older (0.4) package is upgraded to 0.5 as bioimageio.spec reads it
            descr = load_description(path, perform_io_checks=False, format_version="latest")
    except Exception as err:  # noqa: BLE001 (any parser failure is a bad package)
        raise ModelFileError(f"{path.name}: cannot read its rdf: {one_line(err)}") from err
    if not isinstance(descr, v0_5.ModelDescr):
        raise ModelFileError(
            f"{path.name}: not a valid bioimage.io model (spec 0.5) package: "
            f"{one_line(getattr(descr, 'validation_summary', descr))}"
        )
    return descr


def tessera_attachment(descr):
    """The Tessera model file a package carries (one Tessera exported), or None."""
    conf = (descr.config.model_dump() if descr.config is not None else {}) or {}
    tess = conf.get("napari_tessera") or {}
    for a in descr.attachments:
        if file_name(a.source) == tess.get("model_file", MODEL_ATTACHMENT):
            return a
    return None


@contextlib.contextmanager
def extracted_model_file(path: str | os.PathLike, descr=None):
    """Load a bioimage.io package that Tessera exported, natively and without running its code.

    The rdf is read with ``bioimageio.spec`` (or given as ``descr``); the Tessera model file
    it carries is checked against its sha256 and against the ``pytorch_state_dict``
    architecture kwargs, then loaded by :func:`napari_tessera.io.load_model` (safetensors: no
    unpickling). Yields the checked model file (in a temporary folder) and the config the
    rdf's kwargs describe.
    """
    from .config import UNetConfig
    from .errors import ConfigError

    path = Path(path)
    descr = read_package(path) if descr is None else descr
    sd = descr.weights.pytorch_state_dict
    att = tessera_attachment(descr)
    if att is None or sd is None:
        raise ModelFileError(
            f"{path.name}: a bioimage.io model from another tool, not one Tessera exported: "
            "it can segment, but it is not a Tessera model"
        )
    wname = file_name(att.source)
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
    if wname not in names:
        raise ModelFileError(f"{path.name}: its weights file {wname} is missing")
    try:
        kwargs_cfg = UNetConfig.from_dict(dict(sd.architecture.kwargs))
    except (ConfigError, TypeError) as err:
        raise ModelFileError(f"{path.name}: invalid architecture kwargs: {err}") from err
    with tempfile.TemporaryDirectory(prefix="tessera-bioimageio-") as tmpd:
        out = Path(tmpd) / wname
        with zipfile.ZipFile(path) as zf, zf.open(wname) as src, open(out, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        if att.sha256 is None or file_sha256(out) != str(att.sha256):
            raise ModelFileError(f"{path.name}: sha256 mismatch for its weights file {wname}")
        yield out, kwargs_cfg
