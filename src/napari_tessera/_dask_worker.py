"""What runs on dask workers (imported only when a cluster is used)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from distributed import WorkerPlugin, get_worker

from .axes import SliceLayout
from .chunked import _out_index, open_image, slice_labels
from .inference import Notice, SliceResult, iter_slice_predictions

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


def slice_task(s: int, digest: str, source, lay: SliceLayout, out_path: str, settings: dict):
    """Run on a worker: predict slice ``s``, write its labels, return ``(s, count, notices)``."""
    import zarr

    plugin = _worker_plugin()
    if plugin.digest != digest:
        raise RuntimeError("the worker holds another model")
    if isinstance(source, str):  # a file the worker opens (lazily) and reads one slice of
        data = np.asarray(lay.slice_view(plugin.image(source), s))
    else:  # the slice itself, (C, Y, X)
        data = source
    instances, min_size, kwargs = settings["instances"], settings["min_size"], settings["kw"]
    notices, prob = [], None
    for event in iter_slice_predictions(plugin.model, data, axes="CYX", **kwargs):
        if isinstance(event, SliceResult):
            prob = event.probabilities
        elif isinstance(event, Notice):
            notices.append(event.message)
    labels, count = slice_labels(prob, instances, min_size)
    zarr.open_array(out_path, mode="r+")[_out_index(lay, s)] = labels
    return s, count, notices
