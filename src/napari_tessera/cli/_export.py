"""``tessera export``: a model file as a bioimage.io model package (zip)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ._common import check_output, resolve_axes, warn


def _test_slice(model, args):
    """``(a (C, Y, X) slice or None for the built-in sample, what it is)``: the first slice of
    ``--test-image``, else of the image the model was trained on when that file is still
    there."""
    from ..images import read_image
    from ..inference import image_layout

    path = args.test_image
    said = "--test-image"
    if path is None:
        known = (getattr(model, "metadata", None) or {}).get("training_images") or []
        path = next((p for p in known if isinstance(p, str) and Path(p).is_file()), None)
        said = "the image it was trained on"
    if path is None:
        return None, "the built-in nuclei sample"
    arr, axes = read_image(path)
    axes, _ = resolve_axes(arr, args.axes, axes, model.config.in_channels, True)
    lay = image_layout(model, arr, axes)
    return np.asarray(lay.slice_view(arr, 0)), f"{said} ({Path(path).name}, first slice)"


def _list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [t.strip() for t in text.split(",") if t.strip()]


def cmd_export(args: argparse.Namespace) -> int:
    from ..bioimageio import export_bioimageio
    from ..errors import InputError
    from ..io import load_model, require_tessera_model

    src, out = Path(args.model), Path(args.output)
    if out.suffix.lower() != ".zip":
        raise InputError(f"the package must be a .zip file, got {out.name}")
    check_output(out, src)
    model = load_model(src)
    require_tessera_model(model, src, "export")
    test_image, said = _test_slice(model, args)
    export_bioimageio(
        model,
        out,
        name=args.name,
        description=args.description,
        authors=_list(args.authors),
        license=args.license,
        tags=_list(args.tags),
        test_image=test_image,
    )
    if not args.quiet:
        warn(f"wrote {out} (bioimage.io model package: pytorch_state_dict, torchscript, onnx)")
        warn(f"its test input: {said}")
    return 0


def add_parser(sub) -> None:
    """The ``tessera export`` subcommand."""
    p = sub.add_parser(
        "export",
        help="export a model as a bioimage.io model package (.zip)",
        description=(
            "Write a bioimage.io model package (RDF spec 0.5) of a Tessera model: "
            "pytorch_state_dict, torchscript and onnx weights, declared pre- and "
            "postprocessing, a test image with its output, a cover and a README. Needs "
            "pip install 'napari-tessera[bioimageio]'."
        ),
    )
    p.add_argument("model", help="Tessera model file (.safetensors)")
    p.add_argument("-o", "--output", required=True, help="package to write (.zip)")
    p.add_argument("--name", help="model name (default: from the output file name)")
    p.add_argument("--description", help="one-paragraph description")
    p.add_argument("--authors", help="comma-separated author names (default: your user name)")
    p.add_argument("--license", default="CC-BY-4.0", help="SPDX licence (default CC-BY-4.0)")
    p.add_argument("--tags", help="comma-separated extra tags")
    p.add_argument(
        "--test-image",
        help="image whose first slice is the package's test input (default: the image the model "
        "was trained on, when that file is still there; else the built-in nuclei sample)",
    )
    p.add_argument("--axes", help="axes of --test-image (default: its metadata or a guess)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(func=cmd_export)
