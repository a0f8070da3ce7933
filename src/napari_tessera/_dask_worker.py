"""What runs on dask workers (imported only when a cluster is used)."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from distributed import WorkerPlugin, get_worker

from .chunked import UnitJob, open_image, read_region, unit_index, unit_labels

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
    from .files import FileDone, segment_one_file
    from .inference import Notice

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
