"""Sets of image files: the inputs a folder or pattern names, labels paired by file stem, and
the output each input gets. The one place that decides these names (CLI and widgets)."""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path

from .errors import InputError

IMAGE_SUFFIXES = (".tif", ".tiff", ".npy", ".zarr")
_DOUBLE = (".ome.tif", ".ome.tiff", ".ome.zarr")


def file_stem(path: str | Path) -> str:
    """The name without its image suffix (``a.ome.tif`` -> ``a``, ``b.npy`` -> ``b``)."""
    name = Path(path).name
    for suffix in (*_DOUBLE, *IMAGE_SUFFIXES):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def is_image_file(path: Path) -> bool:
    return path.name.lower().endswith(IMAGE_SUFFIXES) and not path.name.startswith(".")


def _has_wildcard(text: str) -> bool:
    return any(c in text for c in "*?[")


def expand_inputs(specs: Sequence[str]) -> list[Path]:
    """The image files that ``specs`` name, in order, each once.

    A spec is a file, a folder (its image files: .tif, .tiff, .npy, .zarr, sorted by name)
    or a glob pattern (``raw/*.tif``). A spec that names nothing is an error that says so.
    """
    out: list[Path] = []
    for spec in specs:
        path = Path(spec)
        if _has_wildcard(spec):
            found = sorted(Path(p) for p in glob.glob(spec) if is_image_file(Path(p)))
            if not found:
                raise InputError(f"no image files match {spec!r}")
        elif path.is_dir() and not path.name.lower().endswith(".zarr"):
            found = sorted(p for p in path.iterdir() if is_image_file(p))
            if not found:
                raise InputError(f"no image files (.tif, .tiff, .npy, .zarr) in folder {spec}")
        elif path.exists():
            found = [path]
        else:
            raise InputError(f"input not found: {spec}")
        out += [p for p in found if p not in out]
    return out


def pair_labels(images: Sequence[Path], pattern: str) -> list[tuple[Path, Path]]:
    """Each image with its labels file, ``pattern`` with ``{stem}`` replaced by the image's stem
    (``painted/{stem}_labels.tif``).

    Errors, before anything runs: an image without its labels file, and a labels file that
    matches the pattern but no image (a typo in a file name leaves both unpaired).
    """
    if "{stem}" not in pattern:
        raise InputError(
            f"the labels pattern {pattern!r} must contain {{stem}}, e.g. 'painted/{{stem}}.tif'"
        )
    pairs = [(img, Path(pattern.replace("{stem}", file_stem(img)))) for img in images]
    missing = [lab for _, lab in pairs if not lab.exists()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise InputError(f"labels file not found: {missing[0]}{more}")
    wanted = {lab.resolve() for _, lab in pairs}
    candidates = glob.glob(glob.escape(pattern).replace(glob.escape("{stem}"), "*"))
    stray = sorted(p for p in candidates if Path(p).resolve() not in wanted)
    if stray:
        raise InputError(f"labels file {stray[0]} has no image among the inputs")
    for img, lab in pairs:
        if img.resolve() == lab.resolve():
            raise InputError(f"{img} would be its own labels file")
    return pairs


def output_for(image: Path, folder: Path, suffix: str = ".tif") -> Path:
    """Where the labels of ``image`` go in ``folder``: ``{stem}_labels.tif`` (or ``.zarr``)."""
    return folder / f"{file_stem(image)}_labels{suffix}"


TABLE_NAME = "{stem}_objects.csv"


def table_for(image: Path, spec: str | Path, several: bool = False) -> Path:
    """Where the objects table (CSV) of ``image`` goes for ``--measure SPEC``.

    A spec with ``{stem}`` is a pattern (``tables/{stem}.csv``); a folder (one that exists, a
    spec ending in a slash, or any spec without ``{stem}`` when there are ``several`` inputs)
    gets ``{stem}_objects.csv``; otherwise the spec is the file itself.
    """
    text = str(spec)
    stem = file_stem(image)
    if "{stem}" in text:
        return Path(text.replace("{stem}", stem))
    folder = Path(text)
    if several or folder.is_dir() or text.endswith(("/", "\\")):
        if several and folder.suffix.lower() == ".csv":
            raise InputError(
                f"the tables' path {text} names one file but there are several inputs: give a "
                "folder "
                "(one {stem}_objects.csv per image) or a pattern with {stem}"
            )
        return folder / TABLE_NAME.replace("{stem}", stem)
    return folder


def check_unique_outputs(images: Sequence[Path], folder: Path, suffix: str = ".tif") -> None:
    """Two inputs with the same stem (``a.tif`` and ``a.npy``) would write one output."""
    seen: dict[Path, Path] = {}
    for img in images:
        out = output_for(img, folder, suffix)
        if out in seen:
            raise InputError(f"{seen[out]} and {img} would both write {out}: rename one")
        seen[out] = img
