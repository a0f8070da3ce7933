"""Work spread over a dask.distributed cluster: the slices (or blocks) of one zarr run, or the
files of a folder run, each a task.

Each worker receives the model once, when it joins (a worker plugin), and keeps it for all its
tasks; the inputs and outputs are files every worker must see (a shared file system). The
results equal those of a run in one process. This module needs ``distributed``
(``pip install "napari-tessera[distributed]"``); the rest of the package does not.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from .axes import SliceLayout
from .chunked import ZarrRun, lazy_levels, plan_zarr_run, unit_index, unit_key, unit_labels
from .errors import InputError, MissingExtra
from .files import FileDone, iter_segment_files, segment_one_file
from .images import open_image, read_region
from .inference import Notice, Progress
from .options import SegmentOptions
from .postprocess import SplitRule

try:
    from distributed import Client, LocalCluster, WorkerPlugin, as_completed, get_worker
except ImportError as err:  # an optional extra: one line that says how to install it
    raise MissingExtra(
        '--scheduler needs dask.distributed: pip install "napari-tessera[distributed]"'
    ) from err


def open_client(scheduler: str, workers: int | None = None):
    """``(client, cluster or None, torch threads per worker or None)``.

    ``"local"``: a LocalCluster of ``workers`` single-threaded processes on this machine,
    listening on 127.0.0.1 only (no dashboard). Anything else: the address of a running
    scheduler (e.g. ``tcp://10.0.0.5:8786``), which the user names and so chooses to expose.
    """
    if scheduler == "local":
        cores = os.cpu_count() or 1
        n = workers or max(1, min(cores, 4))
        cluster = LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            silence_logs=40,
        )
        return Client(cluster), cluster, max(1, cores // n)
    try:
        client = Client(scheduler, timeout="20s")
    except (OSError, TimeoutError, ValueError) as err:
        raise InputError(f"cannot reach the dask scheduler at {scheduler} ({err})") from err
    if workers:
        client.wait_for_workers(workers, timeout=300)
    return client, None, None


def model_bytes(model) -> bytes:
    from .io import save_model

    with tempfile.TemporaryDirectory() as d:
        path = save_model(model, Path(d) / "model.safetensors")
        return path.read_bytes()


def iter_segment_to_zarr(
    model,
    image,
    output: str | os.PathLike,
    *,
    scheduler: str,
    workers: int | None = None,
    axes: str | None = "YX",
    options: SegmentOptions | None = None,
    resume: bool = True,
    block_size: int | None = None,
    probabilities: str | os.PathLike | None = None,
    **settings,
):
    """:func:`napari_tessera.chunked.iter_segment_to_zarr` with each slice (or block) a task
    on a dask cluster: ``scheduler`` "local" (a LocalCluster of ``workers`` processes bound to
    127.0.0.1) or the address of a running scheduler. ``image`` a file path lets the workers
    read their slices themselves."""
    options = SegmentOptions.build(options, **settings)
    run = yield from plan_zarr_run(
        model, image, output, axes, options, resume, block_size, probabilities, remote=True
    )
    yield from _units_on_cluster(run, scheduler, workers)
    return run.finish()


def segment_to_zarr(model, image, output, **kwargs) -> Path:
    """Non-generator form of :func:`iter_segment_to_zarr`."""
    from .inference import drain

    return drain(iter_segment_to_zarr(model, image, output, **kwargs))


def iter_segment_files_on_cluster(
    model,
    images: Sequence[Path],
    folder: str | Path,
    options: SegmentOptions,
    *,
    scheduler: str,
    workers: int | None = None,
    axes: str | None = None,
    restart: bool = False,
    tables: str | Path | None = None,
    voxel_size=None,
):
    """:func:`napari_tessera.files.iter_segment_files` with each file a task on a cluster
    (the objects tables, with ``tables``, are measured here from the labels written)."""
    run = partial(_files_on_cluster, scheduler=scheduler, workers=workers)
    return (
        yield from iter_segment_files(
            model,
            images,
            folder,
            options,
            axes=axes,
            restart=restart,
            run_files=run,
            tables=tables,
            voxel_size=voxel_size,
        )
    )


@dataclass(frozen=True)
class UnitJob:
    """What every task of a cluster run shares: how to label, where to write, which model."""

    rule: SplitRule
    options: SegmentOptions  # with the halo as a number
    margin: int  # context read around a block
    lay: SliceLayout
    out_path: str  # the labels' partial zarr array
    prob_path: str | None  # the probabilities' partial zarr array
    digest: str  # the model every worker must hold


def _units_on_cluster(run: ZarrRun, scheduler: str, n: int | None):
    """Each slice (or block) of a zarr run a task; at most two per worker in flight, so the
    client never holds the whole stack."""
    if not run.todo:
        return
    model, image, source, out, todo, lay = (
        run.model,
        run.image,
        run.source,
        run.out,
        run.todo,
        run.lay,
    )
    prob_path = str(out.prob_partial) if out.prob is not None else None
    job = UnitJob(
        run.rule, run.options, run.margin, lay, str(out.partial), prob_path, model.digest()
    )
    pending = iter(todo)
    with _Session(model, scheduler, n) as session:
        client, futures = session.client, session.futures
        yield session.notice
        n_workers = session.n_workers
        levels: dict[int, list] = {}  # whole-slice levels, for blocks

        def submit():
            unit = next(pending, None)
            if unit is None:
                return None
            s, box = unit
            if box is not None and s not in levels:
                levels.clear()
                levels[s] = lazy_levels(image, lay, s, model.config.normalization)
            if source is not None:
                data = source
            elif box is None:  # an array in this process: send only this slice
                data = np.ascontiguousarray(lay.slice_view(image, s))
            else:
                data = read_region(image, lay, s, box, job.margin)
            fut = client.submit(unit_task, job, s, box, levels.get(s), data, pure=False)
            futures.append(fut)
            return fut

        # at most two units per worker in flight: the client never holds the whole stack
        queue = as_completed([f for f in (submit() for _ in range(2 * max(n_workers, 1))) if f])
        total = len(todo)
        for k, fut in enumerate(queue, 1):
            s, box, count, notices = fut.result()
            out.mark_done(unit_key(s, box), count)
            nxt = submit()
            if nxt is not None:
                queue.add(nxt)
            for text in notices:
                yield Notice(f"slice {s}: {text}")
            yield Progress(k, total)


def _files_on_cluster(model, todo, options, axes, scheduler: str, workers: int | None):
    """Each file a task on a dask cluster; yields Notices and a FileDone per file."""
    if not todo:
        return
    with _Session(model, scheduler, workers) as session:
        yield session.notice
        files = {}
        for image, out in todo:
            fut = session.client.submit(
                file_task, image, out, options, axes, session.digest, pure=False
            )
            session.futures.append(fut)
            files[fut] = (image, out)
        for fut in as_completed(list(files)):
            image, out = files[fut]
            error, notices = fut.result()
            for text in notices:
                yield Notice(text)
            yield FileDone(image, out, "failed" if error else "done", error)


class _Session:
    """A client of the cluster whose workers hold the model (a plugin: loaded once per
    worker); on leaving, the tasks still queued are cancelled and the client (and a local
    cluster) closed."""

    def __init__(self, model, scheduler: str, workers: int | None) -> None:
        self.model, self.scheduler, self.workers = model, scheduler, workers
        self.futures: list = []

    def __enter__(self) -> _Session:
        self.client, self.cluster, threads = open_client(self.scheduler, self.workers)
        try:
            self.digest = self.model.digest()
            plugin = ModelPlugin(model_bytes(self.model), self.digest, threads)
            self.client.register_plugin(plugin, name=PLUGIN)
            self.n_workers = len(self.client.scheduler_info()["workers"])
        except BaseException:
            self.__exit__()
            raise
        where = self.client.scheduler.address
        self.notice = Notice(f"dask: {self.n_workers} worker(s) at {where}")
        return self

    def __exit__(self, *exc) -> None:
        for fut in self.futures:
            fut.cancel()
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


# -- on the workers ---------------------------------------------------------------------------
PLUGIN = "napari-tessera-model"


class ModelPlugin(WorkerPlugin):
    """A dask worker plugin: each worker loads the model once, when it joins, not per task."""

    name = PLUGIN
    idempotent = False

    def __init__(self, data: bytes, digest: str, torch_threads: int | None):
        self.data, self.digest, self.torch_threads = data, digest, torch_threads
        self.model = None
        self.images: dict[str, tuple[Any, str | None]] = {}
        self.loads = 0

    def setup(self, worker=None):
        import torch

        from .io import load_model

        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "model.safetensors"
            path.write_bytes(self.data)
            self.model = load_model(path)
        self.loads += 1
        self.data = b""  # the weights live in the model now

    def teardown(self, worker=None):
        self.model = None
        self.images.clear()

    def image(self, path: str):
        if path not in self.images:
            self.images[path] = open_image(path)
        return self.images[path][0]


def _worker_plugin() -> ModelPlugin:
    return get_worker().plugins[PLUGIN]


def unit_task(job: UnitJob, s: int, box, levels, source):
    """Run on a worker: one slice (``box`` None) or one block of slice ``s``; writes its labels
    and returns ``(s, box, object count, notices)``."""
    import zarr

    plugin = _worker_plugin()
    if plugin.digest != job.digest:
        raise RuntimeError("the worker holds another model")
    lay = job.lay
    if isinstance(source, str):  # a file the worker opens (lazily) and reads its part of
        image = plugin.image(source)
        if box is None:
            data = np.asarray(lay.slice_view(image, s))
        else:
            data = read_region(image, lay, s, box, job.margin)
    else:  # the slice or the block itself, (C, y, x)
        data = source
    rule = job.rule if box is None else replace(job.rule, instances=False)
    labels, count, notices, prob = unit_labels(
        plugin.model, data, box, job.margin, levels, rule, job.options, lay.yx
    )
    zarr.open_array(job.out_path, mode="r+")[unit_index(lay, s, box)] = labels
    if job.prob_path:
        zarr.open_array(job.prob_path, mode="r+")[(slice(None), *unit_index(lay, s, box))] = prob
    return s, box, count, notices


def file_task(image: Path, out: Path, options, axes, digest: str):
    """Run on a worker: segment one file of a folder run into ``out``; returns
    ``(error or None, notices)``."""
    plugin = _worker_plugin()
    if plugin.digest != digest:
        raise RuntimeError("the worker holds another model")
    notices, error = [], None
    for event in segment_one_file(plugin.model, Path(image), Path(out), options, axes):
        if isinstance(event, Notice):
            notices.append(event.message)
        elif isinstance(event, FileDone):
            error = event.error
    return error, notices
