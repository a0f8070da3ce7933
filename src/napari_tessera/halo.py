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
  99.9th percentile of that change over the pixels ``d`` from the edge (the worst over ``d`` and
  beyond): a percentile, not the maximum, so more probes refine it rather than raise it;
- the auto halo is the smallest ``d`` on the pooling grid where the profile is at most
  ``tolerance`` (0.01 by default), and at least one grid step.

Every kept pixel of a tile lies at least the halo away from the tile's edge, so at most about
one pixel in a thousand next to a seam changes by more than the tolerance, as far as the probes
represent the image. Training measures over probes covering the painted slices with half the
tolerance, for the images it has not seen, and stores the result with the model (metadata
``halo``); other models are measured on the image they segment and cached per set of weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .errors import ModelFileError
from .tiling import _take_yx, mirror_indices

AUTO_TOLERANCE = 0.01  # class-probability change the auto halo allows ...
PERCENTILE = 99.9  # ... at this share of the pixels at each distance from a tile edge
STORED_TOLERANCE = AUTO_TOLERANCE / 2  # for a halo stored to be used on other images
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


def _fingerprint(model) -> tuple:
    """Changes whenever any weight or buffer is replaced or changed in place."""
    return tuple((t.data_ptr(), t._version) for t in (*model.parameters(), *model.buffers()))


PROBE_SPOTS = ((0.5, 0.5), (0.0, 0.0), (0.25, 0.75))  # centre, corner, in between


def probe_tile(model) -> int:
    """Side of a probe tile: pixels of every distance 0..exact halo from its edge."""
    return 2 * model.exact_halo() + 2 * model.size_multiple


def probe_origin(shape: tuple[int, int], size: int, multiple: int, spot: int) -> tuple[int, int]:
    """Origin, on the pooling grid, of probe tile number ``spot`` (of ``size`` pixels): the
    image's centre, its top-left corner (half of the context mirrored) and a point between."""
    fy, fx = PROBE_SPOTS[spot % len(PROBE_SPOTS)]
    y = int(fy * shape[0]) - (size // 2 if fy else 0)
    x = int(fx * shape[1]) - (size // 2 if fx else 0)
    return y - y % multiple, x - x % multiple


def read_probes(
    model, image, lay, levels=None, slices=None, *, cover: bool = False
) -> list[np.ndarray]:
    """Normalised probe windows of an image (a probe tile with the exact halo around it),
    read without loading whole slices.

    Default: three probes (:data:`PROBE_SPOTS`) from the first, middle and last slices (of
    ``slices`` if given). ``cover=True``: probe tiles side by side over every slice of
    ``slices`` (at most :data:`MAX_COVER_PROBES`, spread evenly), as training measures the
    halo it stores. ``levels``: intensity levels to normalise with (default: each slice's own,
    as inference uses them).
    """
    from .normalize import normalize_slice, slice_levels

    tile, exact, m = probe_tile(model), model.exact_halo(), model.size_multiple
    n = tile + 2 * exact
    pool = list(slices) if slices else list(range(lay.n_slices))
    if cover:
        h, w = lay.yx
        spots = [(s, y, x) for s in pool for y in range(0, h, tile) for x in range(0, w, tile)]
        if len(spots) > MAX_COVER_PROBES:
            keep = np.linspace(0, len(spots) - 1, MAX_COVER_PROBES).round().astype(int)
            spots = [spots[k] for k in keep]
    else:
        picks = sorted({pool[0], pool[len(pool) // 2], pool[-1]})
        spots = [
            (picks[i % len(picks)], *probe_origin(lay.yx, tile, m, i))
            for i in range(len(PROBE_SPOTS))
        ]
    norm = model.config.normalization
    out = []
    for s, y0, x0 in spots:
        view = lay.slice_view(image, s)
        iy = mirror_indices(y0 - exact, y0 - exact + n, lay.yx[0])
        ix = mirror_indices(x0 - exact, x0 - exact + n, lay.yx[1])
        where = f"slice {s}" if lay.n_slices > 1 else "image"
        lv = levels if levels is not None else slice_levels(view, norm, where)
        out.append(normalize_slice(_take_yx(view, iy, ix), norm, where=where, levels=lv))
    return out


def context_profile(model, windows, *, device="cpu"):
    """Class-probability change against distance from a tile edge (see the module).

    ``windows``: normalised ``(C, n, n)`` probe windows (:func:`read_probes`): a probe tile
    with the exact halo around it. Returns a float array ``p``, ``d = 0 .. exact halo``: the
    99.9th percentile of the change of pixels ``d`` from the edge, the worst over ``d`` and
    beyond.
    """
    from .inference import _probabilities
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
            return _probabilities(net(t.contiguous(memory_format=torch.channels_last)))[0]

    inner = (slice(None), slice(exact, exact + size), slice(exact, exact + size))
    changes = []
    for window in windows:
        if window.shape[-2:] != (size + 2 * exact,) * 2:
            raise ValueError(f"probe windows must be {size + 2 * exact} pixels wide")
        ref = run(window)[inner]
        err = (run(window[inner]) - ref).abs().amax(0).cpu().numpy()
        changes.append(err.ravel()[order])
    if not changes:
        raise ValueError("no probe windows")
    by_distance = np.stack(changes, axis=1)  # (pixels sorted by distance, probes)
    rings = [by_distance[starts[d] : starts[d + 1]] for d in range(exact + 1)]
    ring = np.array([np.percentile(r, PERCENTILE) for r in rings])
    return np.maximum.accumulate(ring[::-1])[::-1]  # pixels d *or more* from the edge


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
    return pixels


def auto_halo(model, probe, *, device="cpu") -> int:
    """The model's auto halo: stored with it, cached for these weights, or measured now on
    ``probe()`` (:func:`read_probes` of the image about to be segmented)."""
    pixels = stored_halo(model)
    if pixels is not None:
        return pixels
    key = _fingerprint(model)
    cached = getattr(model, "_tessera_auto_halo", None)
    if cached is not None and cached[0] == key:
        return cached[1].pixels
    if probe is None:
        raise ValueError("the auto halo of these weights is measured on the image: pass probe")
    found = measure_halo(model, probe(), device=device)
    model._tessera_auto_halo = (key, found)
    return found.pixels


def last_measurement(model) -> HaloMeasurement | None:
    """The measurement behind the model's cached auto halo, if its weights have not changed."""
    cached = getattr(model, "_tessera_auto_halo", None)
    if cached is not None and cached[0] == _fingerprint(model):
        return cached[1]
    return None


def describe_auto(model) -> str | None:
    """One line on the auto halo the model's last run used, or None if it has none."""
    if model.config.padding == "valid":
        return None
    entry = (getattr(model, "metadata", None) or {}).get("halo")
    if entry is not None:
        pixels = stored_halo(model)
        worst = (entry.get("profile") or [])[pixels : pixels + 1]
        bound = f": seams change 99.9% of probabilities by {_bound(worst[0])}" if worst else ""
        return f"halo {pixels} px (auto, stored with the model{bound})"
    found = last_measurement(model)
    return found.describe() if found is not None else None
