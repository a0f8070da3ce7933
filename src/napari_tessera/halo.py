"""How much context a network needs around each tile: the "auto" halo, measured.

The exact halo covers the network's whole receptive field, so a tiled result equals one
whole-image pass; it costs 1.3-1.5x the work of the image itself with the default tiles. A
trained U-Net's output depends far less on its outermost context than the receptive field
allows, and a random one's hardly at all. :func:`measure_halo` finds out by experiment:

- a probe window of the normalised image is run through the network twice: once as a tile on
  its own (so a pixel ``d`` pixels from the window's edge sees only ``d`` pixels of context
  there, the rest zero padding, exactly as in a tile) and once with the exact halo around it;
- for every distance ``d`` from the edge, the change of a pixel is the largest difference in
  any class probability between the two runs, and the **context profile** at ``d`` is the
  99.9th percentile of that change over a probe's pixels ``d`` from the edge, the worst over
  the probes and over ``d`` and beyond: a percentile, not the maximum, so a single odd pixel
  does not decide, and the worst probe, so probes on empty background do not dilute one on
  cells;
- the auto halo is the smallest ``d`` on the pooling grid where the profile is at most
  ``tolerance`` (0.01 by default), and at least one grid step.

Every kept pixel of a tile lies at least the halo away from the tile's edge, so at most about
one pixel in a thousand next to a seam changes by more than the tolerance, as far as the probes
represent the image. Probes go where the image has the most in it (cells, not empty
background). Training measures over up to 16 probes of the painted slices and stores the
result with the model (metadata ``halo``); other models are measured on the image they
segment, cached per set of weights and image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .device import probabilities
from .errors import ModelFileError
from .tiling import _take_yx, mirror_indices

AUTO_TOLERANCE = 0.01  # class-probability change the auto halo allows ...
PERCENTILE = 99.9  # ... at this share of the pixels at each distance from a tile edge
MAX_COVER_PROBES = 16  # probes when training measures the halo it stores


@dataclass(frozen=True)
class HaloMeasurement:
    """The auto halo of one set of weights and the context profile it was read from."""

    pixels: int  # the halo chosen, on the pooling grid
    exact: int  # the exact halo (the receptive field on the pooling grid)
    tolerance: float
    profile: tuple[float, ...]  # 99.9th-percentile probability change, distances 0..exact
    probes: int  # probe windows measured

    def at(self, distance: int) -> float:
        """The profile at ``distance`` (see the module)."""
        return self.profile[min(int(distance), len(self.profile) - 1)]

    def describe(self) -> str:
        if self.pixels >= self.exact:
            return f"halo {self.pixels} px (auto: the exact halo was needed)"
        return (
            f"halo {self.pixels} px (auto, exact {self.exact} px): tile seams change 99.9% of "
            f"class probabilities by {_bound(self.at(self.pixels))}"
        )

    def as_metadata(self) -> dict:
        return {
            "pixels": self.pixels,
            "exact": self.exact,
            "tolerance": self.tolerance,
            "profile": [float(f"{v:.3g}") for v in self.profile],
            "probes": self.probes,
            "percentile": PERCENTILE,
        }


def _bound(value: float) -> str:
    return "less than 1e-6" if value < 1e-6 else f"at most {value:.2g}"


SEGMENT_PROBES = 3  # probes when measuring on the image being segmented
MAX_CANDIDATES = 256  # probe places looked at per slice (spread over the slice)


def probe_tile(model) -> int:
    """Side of a probe tile: pixels of every distance 0..exact halo from its edge."""
    return 2 * model.exact_halo() + 2 * model.size_multiple


def probe_places(lay, tile: int, picks, image, norm, levels=None):
    """Candidate probe tiles ``(score, slice, y, x)``: tiles side by side over the slices
    ``picks`` (at most :data:`MAX_CANDIDATES` per slice, spread evenly), scored by how much
    is in them (the intensity spread of a strided sample, in units of the slice's levels), so
    probes land on cells rather than on empty background."""
    from .normalize import slice_levels

    h, w = lay.yx
    step = max(1, tile // 32)
    places = []
    for s in picks:
        view = lay.slice_view(image, s)
        where = f"slice {s}" if lay.n_slices > 1 else "image"
        lv = levels if levels is not None else slice_levels(view, norm, where)
        grid = [(y, x) for y in range(0, h, tile) for x in range(0, w, tile)]
        if len(grid) > MAX_CANDIDATES:
            keep = np.linspace(0, len(grid) - 1, MAX_CANDIDATES).round().astype(int)
            grid = [grid[k] for k in keep]
        for y, x in grid:
            sample = np.asarray(view[:, y : y + tile : step, x : x + tile : step], np.float32)
            spread = [
                float(sample[c].std()) / (hi - lo) if hi > lo else 0.0
                for c, (lo, hi) in enumerate(lv)
            ]
            places.append((float(np.mean(spread)), s, y, x, lv))
    return places


def read_probes(
    model, image, lay, levels=None, slices=None, *, cover: bool = False
) -> list[np.ndarray]:
    """Normalised probe windows of an image (a probe tile with the exact halo around it, the
    part beyond the image mirrored), read without loading whole slices.

    The probe tiles are the :data:`SEGMENT_PROBES` fullest (see :func:`probe_places`) of the
    first, middle and last slices (of ``slices`` if given); ``cover=True``: the
    :data:`MAX_COVER_PROBES` fullest of every slice of ``slices``, as training measures the
    halo it stores. ``levels``: intensity levels to normalise with (default: each slice's own,
    as inference uses them).
    """
    from .normalize import normalize_slice

    tile, exact = probe_tile(model), model.exact_halo()
    n = tile + 2 * exact
    norm = model.config.normalization
    pool = list(slices) if slices else list(range(lay.n_slices))
    picks = pool if cover else sorted({pool[0], pool[len(pool) // 2], pool[-1]})
    count = MAX_COVER_PROBES if cover else SEGMENT_PROBES
    places = probe_places(lay, tile, picks, image, norm, levels)
    order = sorted(range(len(places)), key=lambda k: -places[k][0])[:count]
    out = []
    for k in sorted(order):  # in image order
        _, s, y0, x0, lv = places[k]
        view = lay.slice_view(image, s)
        iy = mirror_indices(y0 - exact, y0 - exact + n, lay.yx[0])
        ix = mirror_indices(x0 - exact, x0 - exact + n, lay.yx[1])
        where = f"slice {s}" if lay.n_slices > 1 else "image"
        out.append(normalize_slice(_take_yx(view, iy, ix), norm, where=where, levels=lv))
    return out


def context_profile(model, windows, *, device="cpu"):
    """Class-probability change against distance from a tile edge (see the module).

    ``windows``: normalised ``(C, n, n)`` probe windows (:func:`read_probes`): a probe tile
    with the exact halo around it. Returns a float array ``p``, ``d = 0 .. exact halo``: the
    99.9th percentile of the change of pixels ``d`` from the edge, the worst over ``d`` and
    beyond.
    """
    from .model.fast import inference_copy

    dev = torch.device(device)
    exact = model.exact_halo()
    size = probe_tile(model)
    net = inference_copy(model, dev)
    yy, xx = np.mgrid[:size, :size]
    dist = np.minimum(np.minimum(yy, xx), np.minimum(size - 1 - yy, size - 1 - xx)).ravel()
    order = np.argsort(dist, kind="stable")
    starts = np.searchsorted(dist[order], np.arange(exact + 2))

    def run(x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(x))[None].to(dev)
        with torch.inference_mode():
            return probabilities(net(t.contiguous(memory_format=torch.channels_last)))[0]

    inner = (slice(None), slice(exact, exact + size), slice(exact, exact + size))
    worst = np.zeros(exact + 1)
    for window in windows:
        if window.shape[-2:] != (size + 2 * exact,) * 2:
            raise ValueError(f"probe windows must be {size + 2 * exact} pixels wide")
        ref = run(window)[inner]
        change = (run(window[inner]) - ref).abs().amax(0).cpu().numpy().ravel()[order]
        ring = [
            np.percentile(change[starts[d] : starts[d + 1]], PERCENTILE) for d in range(exact + 1)
        ]
        worst = np.maximum(worst, ring)  # the worst probe: an empty one must not dilute a full one
    return np.maximum.accumulate(worst[::-1])[::-1]  # pixels d *or more* from the edge


def measure_halo(model, windows, *, tolerance: float = AUTO_TOLERANCE, device="cpu"):
    """The smallest halo on the pooling grid (at least one step) whose context profile on the
    probe ``windows`` is at most ``tolerance``; see the module."""
    m = model.size_multiple
    exact = model.exact_halo()
    windows = list(windows)
    profile = context_profile(model, windows, device=device)
    pixels = exact
    for h in range(m, exact, m):
        if profile[h] <= tolerance:
            pixels = h
            break
    profile = tuple(float(v) for v in profile)
    return HaloMeasurement(pixels, exact, tolerance, profile, len(windows))


def stored_halo(model) -> int | None:
    """The auto halo stored with the model (measured when it was trained), or None."""
    entry = (getattr(model, "metadata", None) or {}).get("halo")
    if entry is None:
        return None
    return check_stored_halo(entry, model.size_multiple, model.exact_halo())


def check_stored_halo(entry, multiple: int, exact: int) -> int:
    pixels = entry.get("pixels") if isinstance(entry, dict) else None
    if (
        isinstance(pixels, bool)
        or not isinstance(pixels, int)
        or not 0 <= pixels <= exact
        or pixels % multiple
    ):
        raise ModelFileError(
            f"the model's stored halo must be a whole number of {multiple}-pixel steps "
            f"between 0 and {exact}, got {entry!r}"
        )
    profile = entry.get("profile", [])
    if not isinstance(profile, list) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in profile
    ):
        raise ModelFileError("the model's stored halo profile must be a list of probabilities")
    return pixels


def _digest(windows) -> str:
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    for w in windows:
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()


class AutoHalos:
    """The one owner of auto-halo measurements, for this process (:data:`AUTO_HALOS`).

    A halo stored with a model (measured when it was trained) is used as it is. Otherwise
    :meth:`pixels` measures it on probes of the image about to be segmented and keeps the
    measurement under the model's :meth:`~napari_tessera.model.UNet.digest` (its weights'
    values) and the probes' content, so the same weights on the same image are measured once,
    and any change to a weight, in place or not, is a new set of weights. The most recent
    ``size`` measurements are kept; :meth:`latest` gives the one a model's last run used.
    """

    def __init__(self, size: int = 32) -> None:
        self.size = size
        self._found: dict[tuple[str, str], HaloMeasurement] = {}  # oldest first

    def pixels(self, model, probe, *, device="cpu") -> int:
        """The auto halo of ``model`` for the image ``probe()`` reads probes of
        (:func:`read_probes`)."""
        pixels = stored_halo(model)
        if pixels is not None:
            return pixels
        windows = probe()
        key = (model.digest(), _digest(windows))
        found = self._found.pop(key, None)
        if found is None:
            found = measure_halo(model, windows, device=device)
        self._found[key] = found  # most recent last
        while len(self._found) > self.size:
            self._found.pop(next(iter(self._found)))
        return found.pixels

    def latest(self, model) -> HaloMeasurement | None:
        """The most recent measurement of these weights, or None."""
        weights = model.digest()
        for (key, _), found in reversed(self._found.items()):
            if key == weights:
                return found
        return None

    def forget(self) -> None:
        self._found.clear()


AUTO_HALOS = AutoHalos()


def describe_halo(model, setting) -> str | None:
    """One line on the halo a run with the halo ``setting`` used: for "auto", the halo stored
    with the model or the last one measured for its weights; None for other settings."""
    if setting != "auto" or model.config.padding == "valid":
        return None
    entry = (getattr(model, "metadata", None) or {}).get("halo")
    if entry is not None:
        pixels = stored_halo(model)
        if entry.get("declared"):  # a bioimage.io model from another tool
            return f"halo {pixels} px (auto: the halo its package declares)"
        worst = (entry.get("profile") or [])[pixels : pixels + 1]
        bound = f": seams change 99.9% of probabilities by {_bound(worst[0])}" if worst else ""
        return f"halo {pixels} px (auto, stored with the model{bound})"
    found = AUTO_HALOS.latest(model)
    return found.describe() if found is not None else None
