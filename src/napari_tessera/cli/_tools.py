"""``tessera sample`` and ``tessera convert-weights``."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import arg_positive_int, check_output, warn


def cmd_sample(args: argparse.Namespace) -> int:
    from ..images import write_tiff
    from ..synthetic import nuclei_2d, nuclei_3d

    out = Path(args.output)
    check_output(out)
    if args.slices > 1:
        s = nuclei_3d((args.slices, args.size, args.size), seed=args.seed)  # cubic voxels
        axes = "ZYX"
    else:
        s = nuclei_2d((args.size, args.size), seed=args.seed)
        axes = "YX"
    write_tiff(out, s.image, axes=axes)
    if args.labels:
        lab = Path(args.labels)
        check_output(lab)
        write_tiff(lab, s.labels, axes=axes)
    if not args.quiet:
        warn(
            f"wrote {out} ({'x'.join(map(str, s.image.shape))} {axes}, "
            f"{int(s.labels.max())} nuclei)"
        )
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from ..convert import convert_weights
    from ..io import read_model_info

    src, out = Path(args.input), Path(args.output)
    check_output(out, src)
    convert_weights(
        src,
        out,
        padding=args.padding,
        normalization=tuple(args.normalization) if args.normalization else None,
        class_names=args.class_names,
    )
    if not args.quiet:
        cfg, meta = read_model_info(out)
        warn(
            f"wrote {out}: U-Net depth {cfg.depth}, width {cfg.base_channels}, "
            f"{cfg.in_channels} channel(s) in, {cfg.n_classes} classes, {cfg.upsampling} "
            f"upsampling, {cfg.padding} padding ({meta['provenance']['layout']} layout)"
        )
    return 0


def add_parser(sub) -> None:
    """The ``tessera sample / convert-weights`` subcommand."""
    c = sub.add_parser(
        "convert-weights",
        help="convert a trusted PyTorch .pt/.pth U-Net state_dict to a .safetensors model",
        description=(
            "Convert a PyTorch state_dict of a U-Net (Tessera's layout or the PyTorch-UNet "
            "layout) into a Tessera model file. The input is read with "
            "torch.load(weights_only=True): only tensors and plain containers are rebuilt and "
            "any other Python object is refused, so a whole pickled model is rejected, not run. "
            "This still trusts PyTorch's restricted unpickler: convert only files from a source "
            "you trust. The architecture is read from the tensor shapes; give what shapes "
            "cannot tell (padding, normalisation, class names)."
        ),
    )
    c.add_argument("input", help="trusted .pt/.pth file holding a state_dict")
    c.add_argument("-o", "--output", required=True, help="model file to write (.safetensors)")
    c.add_argument("--padding", choices=["same", "valid"], default="same")
    c.add_argument(
        "--normalization",
        nargs=2,
        type=float,
        metavar=("LOW", "HIGH"),
        help="percentiles the network's inputs are scaled between (default 1 99.8)",
    )
    c.add_argument("--class-names", nargs="+", metavar="NAME", help="one name per output class")
    c.add_argument("-q", "--quiet", action="store_true")
    c.set_defaults(func=cmd_convert)

    m = sub.add_parser(
        "sample",
        help="write a synthetic fluorescence-nuclei image (and its labels)",
        description="Write a deterministic synthetic nuclei image as a TIFF, for trying Tessera.",
    )
    m.add_argument("-o", "--output", required=True, help="image TIFF to write")
    m.add_argument("--labels", help="also write the ground-truth instance labels here")
    m.add_argument("--size", type=arg_positive_int, default=512, help="side length in pixels")
    m.add_argument(
        "--slices", type=arg_positive_int, default=1, help="Z slices of a 3D scene (1 = a 2D image)"
    )
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("-q", "--quiet", action="store_true")
    m.set_defaults(func=cmd_sample)
