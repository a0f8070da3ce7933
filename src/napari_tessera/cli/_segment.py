"""``tessera segment``: one image, a folder or a pattern of them."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from ._common import (
    CHANNELS_HELP,
    Progress,
    arg_channels,
    arg_edge_offset,
    arg_halo,
    arg_non_negative_int,
    arg_positive_int,
    arg_tile_size,
    arg_voxel_size,
    check_output,
    drive,
    load_model_arg,
    resolve_axes,
    say_halo,
    segment_options,
    warn,
)


def cmd_segment(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..files import iter_segment_file
    from ..images import is_zarr
    from ..rgb import file_options

    if args.scheduler:
        from ..cluster import open_client  # noqa: F401  an optional extra: said before any output

        if args.trust_model:
            raise InputError(
                "--trust-model runs a model in this process only, not with --scheduler"
            )
    if args.measure is not None and not args.instances:
        raise InputError("--measure measures objects: add --instances (classes are not objects)")
    if _is_folder_run(args.input):
        return _segment_folder(args)
    inp, out = Path(args.input[0]), Path(args.output)
    table = _table_path(args, inp, out)
    if is_zarr(out) or args.scheduler:
        return _segment_chunked(args, inp, out, table)
    check_output(out, inp)
    prob_path = Path(args.probabilities) if args.probabilities else None
    if prob_path is not None:
        check_output(prob_path, inp)
        if prob_path.resolve() == out.resolve():
            raise InputError("--probabilities must name another file than -o")
        if table is not None and table.resolve() == prob_path.resolve():
            raise InputError("--measure must name another file than --probabilities")
    model = load_model_arg(args.model, trust_model=args.trust_model)
    # an RGB image's channels: the widgets' rule (notes said once the run has started)
    options, notes = file_options(model, inp, args.axes, segment_options(args))
    t0 = time.perf_counter()
    bar = Progress(args.quiet, "segment", "tile")
    gen = iter_segment_file(
        model, inp, out, options, args.axes, prob_path, table=table, voxel_size=args.voxel_size
    )
    labels, out_axes = drive(gen, bar, notes)
    n = (
        f"{len(np.unique(labels)) - (1 if (labels == 0).any() else 0)} objects"
        if args.instances
        else f"classes {sorted(int(v) for v in np.unique(labels))}"
    )
    if not args.quiet:
        warn(
            f"wrote {out} ({'x'.join(map(str, labels.shape))} {out_axes}, {labels.dtype}, {n}) "
            f"in {time.perf_counter() - t0:.1f} s"
        )
        if table is not None:
            warn(f"wrote the objects table {table}")
        say_halo(model, args.halo)
    return 0


def _table_path(args: argparse.Namespace, inp: Path, out: Path) -> Path | None:
    """The CSV file --measure names for one input (None without --measure), checked."""
    from ..errors import InputError
    from ..sets import table_for

    if args.measure is None:
        return None
    table = table_for(inp, args.measure)
    check_output(table, inp)
    if table.resolve() == out.resolve():
        raise InputError("--measure must name another file than -o")
    return table


def _is_folder_run(inputs: list[str]) -> bool:
    """Several inputs, a pattern or a folder (not a .zarr one): one output per image."""
    from ..images import is_zarr

    if len(inputs) != 1:
        return True
    one = inputs[0]
    return any(c in one for c in "*?[") or (Path(one).is_dir() and not is_zarr(Path(one)))


def _segment_folder(args: argparse.Namespace) -> int:
    """One labels file per input image in the -o folder (:func:`iter_segment_files`).
    Exit code 1 when some failed, with a summary of which and why."""
    from ..errors import InputError
    from ..files import (
        FileProgress,
        iter_segment_files,
        output_folder,
        plan_outputs,
        plan_tables,
    )
    from ..inference import Notice, run_to_end
    from ..sets import expand_inputs

    images = expand_inputs(args.input)
    if args.probabilities:
        raise InputError("--probabilities takes one input image, not a folder of them")
    folder = output_folder(args.output)
    plan_outputs(images, folder)  # two inputs, one output: an error before the model loads
    if args.measure is not None:
        plan_tables(images, args.measure)
    options = segment_options(args)
    model = load_model_arg(args.model, trust_model=args.trust_model)
    bar = Progress(args.quiet, "segment", "file")
    if args.scheduler:
        from ..cluster import iter_segment_files_on_cluster

        gen = iter_segment_files_on_cluster(
            model,
            images,
            folder,
            options,
            scheduler=args.scheduler,
            workers=args.workers,
            axes=args.axes,
            restart=args.restart,
            tables=args.measure,
            voxel_size=args.voxel_size,
        )
    else:
        from ..rgb import files_by_rule

        gen = iter_segment_files(
            model,
            images,
            folder,
            options,
            axes=args.axes,
            restart=args.restart,
            run_files=files_by_rule,  # an RGB image's channels: the widgets' rule
            tables=args.measure,
            voxel_size=args.voxel_size,
        )

    def show(event) -> None:
        if isinstance(event, FileProgress):
            bar.update(round(event.fraction * event.n_files, 2), event.n_files, file=event.name)
        elif isinstance(event, Notice):
            warn(event.message)

    try:
        report = run_to_end(gen, show)
    finally:
        bar.close()
    _folder_summary(args, report)
    if not args.quiet and report.done:
        say_halo(model, args.halo)
    return 1 if report.failed else 0


def _folder_summary(args, report) -> None:
    """What a folder run did; failures are listed even with --quiet."""
    if not args.quiet:
        said = (
            f"segmented {len(report.done)} file(s) into {report.folder} in {report.seconds:.1f} s"
        )
        if report.skipped:
            said += f"; {len(report.skipped)} already done, skipped (--restart redoes them)"
        if args.measure is not None:
            said += f"; objects tables: {args.measure}"
        warn(said)
    if report.failed:
        warn(f"{len(report.failed)} file(s) failed:")
        for inp, why in report.failed:
            print(f"  {inp}: {why}", file=sys.stderr)


def _segment_chunked(args: argparse.Namespace, inp: Path, out: Path, table: Path | None) -> int:
    """``tessera segment`` into a zarr array, slice by slice, here or on a dask cluster;
    with ``table``, its objects are then measured from the labels written (read whole)."""
    from ..errors import InputError
    from ..files import measure_output
    from ..images import check_output_folder, is_zarr, open_image

    if not is_zarr(out):
        raise InputError("--scheduler writes zarr: give an output ending in .zarr")
    if args.probabilities and not is_zarr(args.probabilities):
        raise InputError("with a .zarr output, --probabilities must name a .zarr folder too")
    check_output_folder(out)
    if out.exists() and inp.exists() and out.resolve() == inp.resolve():
        raise InputError(f"output {out} would overwrite an input")
    model = load_model_arg(args.model, trust_model=args.trust_model)
    t0 = time.perf_counter()
    bar = Progress(args.quiet, "segment", "slice" if args.scheduler else "tile")
    path = _segment_zarr(args, model, inp, out, bar, "")
    if table is not None:
        in_channels = model.config.in_channels
        note = measure_output(inp, path, table, args.axes, in_channels, args.voxel_size)
        if note is not None:
            warn(note)
        if not args.quiet:
            warn(f"wrote the objects table {table}")
    if not args.quiet:
        shape = "x".join(map(str, open_image(inp)[0].shape))
        warn(f"wrote {path} (labels of a {shape} image) in {time.perf_counter() - t0:.1f} s")
        say_halo(model, args.halo)
    return 0


def _segment_zarr(args, model, inp: Path, out: Path, bar, prefix: str) -> Path:
    """Segment one image into a zarr array slice by slice (or block by block), here or on a
    dask cluster; an interrupted run resumes. Returns the output path."""
    from ..chunked import choose_block, iter_segment_to_zarr
    from ..images import open_image
    from ..inference import image_layout
    from ..rgb import segment_options as rgb_options

    arr, file_axes = open_image(inp)
    axes, note = resolve_axes(arr, args.axes, file_axes, model.config.in_channels, args.quiet)
    options, notes = rgb_options(model, arr, axes, segment_options(args), inp.name)
    lay = image_layout(model, arr, axes, options.channels)
    if choose_block(args.block_size, lay, model, args.halo, args.instances) and isinstance(
        bar, Progress
    ):
        bar.unit = "block"
    if args.scheduler:
        from ..cluster import iter_segment_to_zarr as on_cluster

        gen = on_cluster(
            model,
            str(inp),
            out,
            scheduler=args.scheduler,
            workers=args.workers,
            axes=axes,
            options=options,
            resume=not args.restart,
            block_size=args.block_size,
            probabilities=args.probabilities,
        )
    else:
        gen = iter_segment_to_zarr(
            model,
            arr,
            out,
            axes=axes,
            options=options,
            resume=not args.restart,
            block_size=args.block_size,
            probabilities=args.probabilities,
        )
    return drive(gen, bar, ([prefix + note] if note else []) + notes)


def add_parser(sub) -> None:
    """The ``tessera segment`` subcommand."""
    s = sub.add_parser(
        "segment",
        help="segment an image (TIFF or .npy) with a U-Net",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Segment every 2D slice of an image with mirrored overlap-tile inference and write "
            "the labels as a TIFF or a zarr array: per-pixel classes (0 = background) or, with "
            "--instances, one id per object. A .zarr output is written slice by slice, so the "
            "image need not fit in memory; an interrupted run resumes where it stopped.\n\n"
            "Several inputs (files, a folder, a pattern) write one labels file each into the "
            "-o folder; a re-run skips the finished ones, and a file that fails is reported "
            "without stopping the others (exit code 1 when some failed)."
        ),
    )
    s.add_argument(
        "input",
        nargs="+",
        help="image: .tif/.tiff, .npy, or a zarr / OME-Zarr folder (.zarr); or several images, "
        "a folder of them or a pattern ('raw/*.tif'): then -o names a folder that gets one "
        "{stem}_labels.tif (.zarr for .zarr inputs) per image",
    )
    s.add_argument(
        "-o",
        "--output",
        required=True,
        help="labels to write: a TIFF, or a .zarr folder written slice by slice (larger than "
        "memory; an interrupted run resumes); for several inputs, a folder",
    )
    s.add_argument(
        "--model",
        help="model file (.safetensors) or bioimage.io package (.zip, Tessera's or another "
        "tool's with ONNX weights); default: the built-in nuclei model",
    )
    s.add_argument(
        "--trust-model",
        action="store_true",
        help="run a bioimage.io package that has only TorchScript weights (loading TorchScript "
        "runs code stored in the package: only for packages you trust)",
    )
    s.add_argument(
        "--axes",
        help="axes of the image, e.g. YX, ZYX, CYX, ZCYX, YXC (default: TIFF metadata or a guess)",
    )
    s.add_argument(
        "--channels",
        type=arg_channels,
        help=CHANNELS_HELP + ", or those a model trained here was trained on",
    )
    _tiling_args(s)
    _output_args(s)
    _large_args(s)
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    s.set_defaults(func=cmd_segment)


def _tiling_args(s) -> None:
    """How the image is tiled and where the network runs."""
    s.add_argument(
        "--tile-size",
        type=arg_tile_size,
        default=None,
        help="network input per tile, N or NxM pixels (default: 1024 kept pixels plus the halo)",
    )
    s.add_argument(
        "--halo",
        type=arg_halo,
        default="auto",
        help="context around each tile: 'auto' (what this model needs for tile seams to change "
        "99.9%% of probabilities by at most 0.01, measured), 'exact' (the receptive field: the "
        "same as one whole-image pass, slower) or pixels (default: auto)",
    )
    s.add_argument("--blend", choices=["crop", "gaussian"], default="crop", help="tile merging")
    s.add_argument("--batch-size", type=arg_positive_int, default=1, help="tiles per forward pass")
    s.add_argument(
        "--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)"
    )
    s.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")


def _output_args(s) -> None:
    """Classes or objects, their edges, probabilities, the objects table."""
    s.add_argument(
        "--instances",
        nargs="?",
        const="3d",
        choices=["3d", "2d"],
        help="one id per object instead of classes; the objects of a Z stack are 3D, linked "
        "through the slices (time points never are); '--instances 2d': each slice's own",
    )
    s.add_argument(
        "--min-size",
        type=arg_positive_int,
        metavar="PX",
        help="smallest object kept (px; voxels for 3D objects); default: the size the model "
        "stores (a model trained here: a fifth of its median painted object), else 8",
    )
    s.add_argument(
        "--edge-offset",
        type=arg_edge_offset,
        metavar="PX",
        help="move object edges by PX pixels before objects are split (positive shrinks); "
        "default: the offset the model was calibrated with when it was trained, else 0",
    )
    s.add_argument(
        "--probabilities",
        metavar="PATH",
        help="also write class probabilities (a TIFF, or a .zarr folder with a .zarr output)",
    )
    s.add_argument(
        "--measure",
        metavar="CSV",
        help="also measure every object (needs --instances) and write the table as CSV: "
        "label, centroid, bounding box, area (2D) or volume (3D) in pixels and, with a voxel "
        "size, in micrometres, equivalent diameter, solidity and eccentricity (2D), and the "
        "mean, max and integrated intensity of each image channel. For several inputs, a "
        "folder (made if needed) that gets one {stem}_objects.csv per image, or a pattern "
        "with {stem} ('tables/{stem}.csv'); a re-run measures the skipped images whose table "
        "is missing",
    )
    s.add_argument(
        "--voxel-size",
        type=arg_voxel_size,
        metavar="Z,Y,X",
        help="voxel (pixel) size in micrometres, Z,Y,X (3D) or Y,X (2D): the Z step with which "
        "--instances links a stack's slices into 3D objects, and the physical units of the "
        "--measure table; default: the size the file states (OME-TIFF, ImageJ TIFF, "
        "OME-Zarr), else cubic voxels and a table in pixels only",
    )


def _large_args(s) -> None:
    """Clusters, blocks of large planes, restarting."""
    s.add_argument(
        "--scheduler",
        metavar="local|ADDRESS",
        help="run on a dask cluster: 'local' (a cluster on this machine, 127.0.0.1 only) or a "
        "dask scheduler's address; one input: its slices are tasks (needs a .zarr output); "
        "several inputs: each file is a task (a remote cluster must see the files)",
    )
    s.add_argument(
        "--workers",
        type=arg_positive_int,
        help="dask worker processes (local) or workers to wait for",
    )
    s.add_argument(
        "--block-size",
        type=arg_non_negative_int,
        metavar="N",
        help="with .zarr output: split each 2D plane into NxN blocks so a plane need not fit in "
        "memory (class labels only; default: automatic above 8192x8192 px; 0: never)",
    )
    s.add_argument(
        "--restart",
        action="store_true",
        help="with .zarr output: ignore the finished slices of an interrupted run; for several "
        "inputs: redo the images whose labels are already in the output folder",
    )
