"""Deep maxima (the h-maxima transform) without sorting every voxel: the seeds of
:func:`~napari_tessera.postprocess.split_instances` when a split rule has a seed depth."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import local_maxima

from . import parallel

#: the seed each voxel of a box (those of a mask in it) joins: ``climb(box, mask)``
Climb = Callable[[tuple[slice, ...], np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Basins:
    """The basins of a height map: each voxel above the floor climbs to its highest
    neighbour until it reaches a peak, whose basin it is in (voxels at the floor are in the
    last basin, ``n``, which holds no peak); ``a``, ``b``, ``s``: the touching pairs of
    basins and the highest pass between each pair."""

    of: np.ndarray  # per voxel, its basin (0 .. n)
    height: np.ndarray  # per voxel
    n: int
    a: np.ndarray
    b: np.ndarray
    s: np.ndarray

    def seeds(self, markers: np.ndarray) -> Climb:
        """The seed (a label of ``markers``) each voxel joins through its basin, as a function
        of a box and a mask in it. Basins merge from the highest pass between them down, but
        two that hold different seeds never merge: the watershed of the basins as a minimum
        spanning forest. Labelling each voxel by its basin's seed is a watershed from
        ``markers`` on the height, up to the voxels on the rims of basins, which go where
        they climb rather than where a flooding reaches first.

        0 where a voxel joins no seed, and in a basin that holds two seeds or more (in 3D a
        maximum among its 18 neighbours may have a higher 26th, and climb to another
        seed's peak): there each voxel needs the first seed its climb meets
        (:func:`first_seed_uphill`). Such a basin is its highest seed's where others join it."""
        pos = markers > 0
        order = np.argsort(self.height[pos], kind="stable")  # the highest seed last
        basin, mark = self.of[pos][order], markers[pos][order]
        own = np.zeros(self.n + 1, np.int64)
        own[basin] = mark
        mixed = np.unique(basin[own[basin] != mark])
        seed = own[: self.n].tolist()
        root = _merge_unseeded(seed, self.a, self.b, self.s)
        joined = np.zeros(self.n + 1, markers.dtype)  # the floor's basin joins none
        joined[: self.n] = np.array(seed, np.int64)[root]
        joined[mixed] = 0

        def seeds_in(box: tuple[slice, ...], mask: np.ndarray) -> np.ndarray:
            return joined[self.of[box][mask]]

        return seeds_in


def first_seed_uphill(height: np.ndarray, markers: np.ndarray) -> np.ndarray:
    """Per voxel, the seed (a label of ``markers``) that its climb to the highest neighbour
    meets first; 0 where it meets none, and where ``height`` is -inf."""
    padded = np.pad(height, 1, constant_values=-np.inf)
    step = _uphill_steps(padded)
    seeds = np.pad(markers, 1).ravel()
    stop = (seeds > 0) | (step == 0) | ~np.isfinite(padded.ravel())
    to = np.arange(padded.size, dtype=step.dtype)
    to[~stop] += step[~stop]  # a seed stops the climb
    _jump(np.flatnonzero(~stop), to, stop)
    return seeds[to].reshape(padded.shape)[(slice(1, -1),) * height.ndim]


def _merge_unseeded(seed: list[int], a, b, s) -> np.ndarray:
    """Per basin, the basin whose seed it joins: union-find over the passes from the highest
    down, joining two groups unless each holds a different seed (``seed``: per basin, 0 for
    none; updated for the groups' roots)."""
    up = list(range(len(seed)))
    for _, x, y in _from_the_highest_pass(a, b, s, up):
        if x != y and (seed[x] == 0 or seed[y] == 0 or seed[x] == seed[y]):
            up[y] = x
            seed[x] = seed[x] or seed[y]
    root = np.array(up, np.int64)
    while True:  # pointer jumping to each basin's root
        nxt = root[root]
        if np.array_equal(nxt, root):
            return root
        root = nxt


def deep_maxima(height: np.ndarray, depth: float) -> tuple[np.ndarray, Basins | None]:
    """Regional maxima that rise more than ``depth`` above the pass to any higher one (the
    h-maxima transform): a mask, one region per maximum.

    The very mask of ``local_maxima(reconstruction(height - depth, height),
    connectivity=2)`` (skimage's grayscale reconstruction by dilation, full connectivity;
    ``depth >= 0``; in 3D ``connectivity=2`` is 18-connectivity, so plateaus that touch
    only at a corner are two maxima), without sorting every voxel as skimage does: each
    voxel climbs to a peak, which splits the image into basins (:func:`_ascent_basins`);
    the basins merge from the highest pass between them down (:func:`_flood_levels`), and
    within a basin the reconstruction is ``height`` cut at one level. Also returns the
    basins (:class:`Basins`; None for a flat image).
    """
    height = np.asarray(height)
    small = height.dtype in (np.float16, np.float32)
    f = height.astype(np.float32 if small else np.float64, copy=False)  # as skimage's
    floor = f.min()  # every two voxels are joined at this level: the passes start above it
    if f.size == 0 or f.max() == floor:  # flat: one plateau, which is its own maximum
        return local_maxima(f, connectivity=2, allow_borders=True), None
    padded = np.pad(f, 1, constant_values=-np.inf)  # no voxel climbs out of the image
    above = padded.ravel() > floor  # voxels at the floor end at the floor: left out
    basins, peaks = _ascent_basins(padded, above)
    a, b, s = _passes(padded.ravel(), basins, _half_neighbourhood(padded), above)
    tops = (peaks.astype(height.dtype) - depth).astype(f.dtype)  # the seed's peaks
    low = min(floor, tops.max())  # the reconstruction at the floor, and its least anywhere
    cut = _flood_levels(tops, a, b, s, floor)
    inner = (slice(1, -1),) * f.ndim
    basins, above = basins.reshape(padded.shape)[inner], above.reshape(padded.shape)[inner]
    rebuilt = np.empty(f.shape, f.dtype)
    rows = max(1, PASS_CHUNK * f.shape[0] // f.size)
    for z in range(0, f.shape[0], rows):  # in pieces: small temporaries
        part = slice(z, z + rows)
        np.minimum(f[part], cut[basins[part]], out=rebuilt[part])
        np.copyto(rebuilt[part], f.dtype.type(low), where=~above[part])
        np.copyto(basins[part], len(peaks), where=~above[part])  # the floor's own basin
    found = Basins(basins, f, len(peaks), a, b, s)
    return local_maxima(rebuilt, connectivity=2, allow_borders=True), found


def _half_neighbourhood(array: np.ndarray) -> np.ndarray:
    """Flat offsets to the neighbours of a voxel (full connectivity) that come after it."""
    ndim = array.ndim
    offsets = np.indices((3,) * ndim).reshape(ndim, -1).T - 1
    flat = offsets @ (np.array(array.strides) // array.itemsize)
    return flat[flat > 0]


#: voxels in one block of :func:`_uphill_steps` (with its margin): a few fit in the cache
UPHILL_BLOCK_VOXELS = 2**18


def _uphill_steps(padded: np.ndarray) -> np.ndarray:
    """Flat offset from each voxel of ``padded`` to the highest voxel of its 3x3(x3)
    neighbourhood, 0 where none is higher than the voxel itself (and on the outermost
    border, which is padding). Blocks cut across every axis but the last, each with a
    margin of one, go to parallel threads: passes over a block that fits in the cache are
    several times faster than over the whole stack."""
    ndim, shape = padded.ndim, padded.shape
    strides = np.array(padded.strides) // padded.itemsize
    codes = np.indices((3,) * ndim).reshape(ndim, -1).T - 1  # one step per axis: -1, 0, 1
    big = padded.size >= 2**31
    to_offset = (codes @ strides).astype(np.int64 if big else np.int32)
    step = np.zeros(shape, to_offset.dtype)
    edge = max(4, int((UPHILL_BLOCK_VOXELS / shape[-1]) ** (1 / max(1, ndim - 1))))

    def block(corner: tuple[int, ...]) -> None:
        inner = tuple(slice(c, min(c + edge, n - 1)) for c, n in zip(corner, shape))
        margin = tuple(slice(s.start - 1, s.stop + 1) for s in inner)
        code = _uphill_codes(np.ascontiguousarray(padded[margin]))
        step[inner] = to_offset[code[(slice(1, -1),) * len(inner)]]

    corners = list(itertools.product(*(range(1, n - 1, edge) for n in shape[:-1])))
    threads = min(parallel.threads_for(padded.size), len(corners))
    if threads == 1:
        list(map(block, corners))
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(block, corners))
    return step.ravel()


def _uphill_codes(best: np.ndarray) -> np.ndarray:
    """Per voxel of ``best``, which neighbour is the highest, as an index into
    ``np.indices((3,) * ndim)`` (the voxel itself: the middle one) where no neighbour is
    higher. One axis at a time: the highest of three along the first axis, of three of
    those along the next, ...; a candidate replaces the current best only if it is strictly
    higher. Neighbours outside ``best`` do not count."""
    ndim = best.ndim
    code = np.full(best.shape, (3**ndim - 1) // 2, np.uint8)
    for axis in range(ndim):
        new_best, new_code = best.copy(), code.copy()
        for d in (-1, 1):
            here, there = [slice(None)] * ndim, [slice(None)] * ndim
            here[axis] = slice(max(0, -d), best.shape[axis] - max(0, d))
            there[axis] = slice(max(0, d), best.shape[axis] - max(0, -d))
            here, there = tuple(here), tuple(there)
            higher = best[there] > new_best[here]
            np.copyto(new_best[here], best[there], where=higher)
            move = np.add if d > 0 else np.subtract  # a step of d along ``axis``
            move(code[there], np.uint8(3 ** (ndim - 1 - axis)), out=new_code[here], where=higher)
        best, code = new_best, new_code
    return code


def _jump(todo: np.ndarray, to: np.ndarray, stop: np.ndarray) -> None:
    """Pointer jumping: each of ``todo`` follows ``to`` until it reaches a ``stop``, each
    round doubling the steps. Threads may share ``to``: every value in it is on the way."""
    while todo.size:
        to[todo] = reached = to[to[todo]]
        todo = todo[~stop[reached]]


def _ascent_basins(padded: np.ndarray, above: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each voxel's basin, from 0 (flat; meaningless where not ``above``), and each peak's
    height.

    ``padded``: heights with a border of -inf; ``above``: (flat) the voxels above the
    image's floor, the only ones that count. A peak is a connected set of voxels (full
    connectivity) none of whose neighbours is higher: all at one height. A voxel climbs to
    its highest neighbour until it reaches a peak, so a path that never goes below it joins
    it to its basin's peak."""
    f = padded.ravel()
    step = _uphill_steps(padded)
    top = (step == 0) & above
    labels, n = ndi.label(top.reshape(padded.shape), np.ones((3,) * padded.ndim))
    labels = labels.ravel()
    peaks = np.empty(n, f.dtype)
    peaks[labels[top] - 1] = f[top]
    to = np.arange(f.size, dtype=step.dtype)
    to += step
    todo = np.flatnonzero(~top & above)  # a voxel above the floor climbs to one above it

    climb = partial(_jump, to=to, stop=top)
    threads = parallel.threads_for(todo.size)
    if threads == 1:
        climb(todo)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(climb, np.array_split(todo, threads)))
    basins = labels  # the peaks' own (from 1), 0 elsewhere; then each climber's peak's
    basins[todo] = parallel.lookup(labels, parallel.lookup(to, todo))
    basins -= 1
    return np.maximum(basins, 0, out=basins), peaks


#: voxels per piece of the scans in :func:`deep_maxima`: small temporaries
PASS_CHUNK = 2**20


def _passes(f: np.ndarray, basins: np.ndarray, offsets: np.ndarray, above: np.ndarray) -> tuple:
    """The touching pairs of basins ``(a, b, s)`` and the height ``s`` of the highest pass
    between each pair: the most, over neighbours one in each, of the lower of the two.
    Only neighbours both ``above`` the floor count. ``f``, ``basins`` and ``above`` are flat."""
    n = int(basins.max()) + 1

    def across(d: int) -> tuple[np.ndarray, np.ndarray]:  # the pairs one step ``d`` apart
        keys, heights = [np.empty(0, np.int64)], [np.empty(0, f.dtype)]
        for lo in range(0, f.size - d, PASS_CHUNK):  # in pieces: small temporaries
            hi = min(lo + PASS_CHUNK, f.size - d)
            pair = basins[lo:hi] != basins[lo + d : hi + d]
            pair &= above[lo:hi]
            pair &= above[lo + d : hi + d]
            i = np.flatnonzero(pair) + lo
            a, b = basins[i].astype(np.int64), basins[i + d].astype(np.int64)
            keys.append(np.minimum(a, b) * n + np.maximum(a, b))
            heights.append(np.minimum(f[i], f[i + d]))
        return np.concatenate(keys), np.concatenate(heights)

    with ThreadPoolExecutor(parallel.threads_for(f.size)) as pool:
        found = list(pool.map(across, offsets.tolist()))
    keys = np.concatenate([k for k, _ in found])
    passes = np.concatenate([p for _, p in found])
    if n * n <= max(f.size, 2**20):  # few basins: the highest pass per pair in a table
        table = np.full(n * n, -np.inf, f.dtype)
        np.maximum.at(table, keys, passes)
        keys = np.flatnonzero(table > -np.inf)
        passes = table[keys]
    elif keys.size:  # else sorted by pair
        order = np.argsort(keys)
        keys, passes = keys[order], passes[order]
        first = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        keys, passes = keys[first], np.maximum.reduceat(passes, first)
    return keys // n, keys % n, passes


def _from_the_highest_pass(a, b, s, up: list[int]) -> Iterator[tuple[int, int, int]]:
    """The touching pairs of basins ``a``, ``b`` from the highest pass ``s`` between them
    down, each as ``(k, x, y)``: its index and the roots of its two groups in the
    union-find ``up`` (path halving), which the caller updates as it joins them."""
    for k in np.argsort(-s, kind="stable").tolist():
        x, y = int(a[k]), int(b[k])
        while up[x] != x:
            up[x] = x = up[up[x]]
        while up[y] != y:
            up[y] = y = up[up[y]]
        yield k, x, y


def _flood_levels(tops: np.ndarray, a, b, s, floor) -> np.ndarray:
    """Per basin, the level at which grayscale reconstruction cuts it: the most, over the
    merges of its basin with others from the highest pass ``s`` down, of the lower of the
    pass and the highest ``top`` (peak - depth) merged so far (the basin's own top to
    start with). Basins still apart at the end merge at ``floor``."""
    n = len(tops)
    up = list(range(n))  # union-find; the merges make a tree of nodes n, n + 1, ...
    parent, top, level = [-1] * n, tops.tolist(), tops.tolist()
    for k, x, y in _from_the_highest_pass(a, b, s, up):
        if x != y:
            node = len(top)
            top.append(max(top[x], top[y]))
            level.append(min(float(s[k]), top[node]))
            up[x] = up[y] = node
            up.append(node)
            parent[x] = parent[y] = node
            parent.append(-1)
    for node in range(len(level) - 1, -1, -1):  # a node is cut at the most of its ancestors'
        if parent[node] >= 0:
            level[node] = max(level[node], level[parent[node]])
    cut = np.array(level[:n], tops.dtype)
    return np.maximum(cut, min(floor, tops.max()))
