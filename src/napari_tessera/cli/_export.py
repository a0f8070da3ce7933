"""``tessera export``: a model file as a bioimage.io model package (zip)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import check_output, warn


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
    export_bioimageio(
        model,
        out,
        name=args.name,
        description=args.description,
        authors=_list(args.authors),
        license=args.license,
        tags=_list(args.tags),
    )
    if not args.quiet:
        warn(f"wrote {out} (bioimage.io model package: pytorch_state_dict, torchscript, onnx)")
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
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(func=cmd_export)
