"""Which model a widget runs: the built-in one, the last one trained here, or a file."""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..io import load_model, read_model_info
from ..models import default_model_path
from ._session import session

AUTO = "auto"  # the built-in model where it already segments the painting, else a new network
BUILTIN = "builtin"
SESSION = "session"
FILE = "file"
SCRATCH = "scratch"

_cache: dict[tuple[str, int, int], Any] = {}
_cache_lock = threading.Lock()


@dataclass
class ModelSpec:
    """What the widget knows in the main thread; ``load`` runs in the worker thread."""

    label: str
    in_channels: int | None  # None: a new network (training from scratch)
    n_classes: int | None
    load: Callable[[], Any] | None  # None: train from scratch
    channels: tuple[int, ...] | None = None  # the image channels it was trained on, if stored
    class_names: tuple[str, ...] | None = None  # from its metadata, if stored
    foreign: bool = False  # a bioimage.io model from another tool: segments, never trains

    @property
    def finds_objects(self) -> bool:
        """Its classes are objects on a background (the built-in model, a model trained on
        painted objects): one id per object is what a user wants from it."""
        if self.class_names is not None and [n.lower() for n in self.class_names] == [
            "background",
            "object",
        ]:
            return True
        return self.n_classes is not None and self.n_classes <= 2


def path_is_set(value) -> bool:
    return value is not None and str(value) not in ("", ".")


def _cached_loader(path: Path) -> Callable[[], Any]:
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)

    def load():
        with _cache_lock:
            model = _cache.get(key)
        if model is None:
            model = load_model(path)
            with _cache_lock:
                if len(_cache) >= 3:
                    _cache.pop(next(iter(_cache)))
                _cache[key] = model
        return model

    return load


def file_spec(path) -> ModelSpec:
    if not path_is_set(path):
        raise InputError(
            "no model file chosen: pick a .safetensors model file or a bioimage.io package (.zip)"
        )
    path = Path(path)
    if path.suffix.lower() == ".zip":
        from ..foreign import package_spec

        other = package_spec(path)  # None: a package Tessera exported
        if other is not None:
            loader = _cached_loader(path)
            names = other.class_names
            return ModelSpec(
                path.name, other.in_channels, other.n_classes, loader, None, names, True
            )
    config, meta = read_model_info(path)  # header only: fast, validates the file
    return ModelSpec(
        path.name,
        config.in_channels,
        config.n_classes,
        _cached_loader(path),
        _stored(meta),
        _names(meta),
    )


def _stored(metadata) -> tuple[int, ...] | None:
    ch = (metadata or {}).get("channels")
    return tuple(int(c) for c in ch) if ch else None


def _names(metadata) -> tuple[str, ...] | None:
    names = (metadata or {}).get("class_names")
    return tuple(str(n) for n in names) if isinstance(names, list | tuple) else None


def resolve(source: str, path=None, *, for_training: bool = False) -> ModelSpec:
    """The model behind a widget's choice. Training gets a copy it may change."""
    if source == AUTO and default_model_path() is None:
        source = SCRATCH
    if source == AUTO:
        builtin = resolve(BUILTIN, for_training=for_training)
        # the images are read as a new network reads them; the run judges the built-in model
        return ModelSpec("built-in nuclei model or a new network", None, None, builtin.load)
    if source == BUILTIN:
        p = default_model_path()
        if p is None:
            raise InputError("no built-in model is installed; choose a model file")
        spec = file_spec(p)
        spec.label = "built-in nuclei model"
    elif source == SESSION:
        model = session.last_trained_model
        if model is None:
            raise InputError("no model has been trained in this session yet")
        spec = ModelSpec(
            "last trained model",
            model.config.in_channels,
            model.config.n_classes,
            lambda: model,
            _stored(model.metadata),
            _names(model.metadata),
        )
    elif source == FILE:
        spec = file_spec(path)
    elif source == SCRATCH:
        return ModelSpec("new network", None, None, None)
    else:
        raise InputError(f"unknown model choice {source!r}")
    if for_training and spec.foreign:
        raise InputError(
            f"{spec.label} is a bioimage.io model from another tool: it segments, but Tessera "
            "cannot train it; start from the built-in model or a new network"
        )
    if for_training and spec.load is not None:
        load = spec.load

        def fresh():  # never train the cached or session model in place
            return copy.deepcopy(load())

        spec.load = fresh
    return spec


def choices(*, training: bool) -> list[tuple[str, str]]:
    out = []
    if default_model_path() is not None:
        if training:  # the default: it measured best on nuclei and on other objects
            out.append(("built-in model if it fits, else new", AUTO))
        out.append(("built-in nuclei model", BUILTIN))
    if session.last_trained_model is not None:
        out.append(("last trained (this session)", SESSION))
    if training:
        out.append(("new network (scratch)", SCRATCH))
    out.append(("model file ...", FILE))
    return out
