"""deep_maxima, the h-maxima seeds of split_instances, against grayscale reconstruction;
and the objects split_instances grows from them through the basins.

The fast seeds must be the very mask of the reconstruction they replace, ties included, so
those tests ask for identity. The objects are a watershed from those seeds by the basins
each voxel climbs into: the same objects as skimage's flooding, with the voxels on the rims
of basins where they climb, so those tests ask for the same seeds and objects, every voxel
labelled as the neighbour it climbs to, and near-identity with the flooding.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.morphology import local_maxima, reconstruction
from skimage.segmentation import watershed

from napari_tessera import maxima, parallel, postprocess
from napari_tessera.postprocess import distance_inside, split_instances


def deep_maxima(height: np.ndarray, depth: float) -> np.ndarray:
    """The fast seeds' mask."""
    return maxima.deep_maxima(height, depth)[0]


def reference_deep_maxima(height: np.ndarray, depth: float) -> np.ndarray:
    """The former implementation: skimage's grayscale reconstruction (sorts every voxel).

    Its ``connectivity=2`` is full connectivity in 2D, but 18-connectivity in 3D (plateaus
    that touch at a corner only are two maxima): the fast version keeps that."""
    rec = reconstruction(height - depth, height, method="dilation")
    return local_maxima(rec, connectivity=2, allow_borders=True)


@cache
def blobs(shape: tuple, spacing: tuple, seed: int = 0) -> np.ndarray:
    """A foreground mask of random overlapping discs (balls), radii 3-10 px in space,
    covering about a third of the image: touching objects to split."""
    rng = np.random.default_rng(seed)
    fg = np.zeros(shape, bool)
    while fg.mean() < 0.3:
        centre, radius = rng.uniform(0, shape), rng.uniform(3, 10)
        box = tuple(
            slice(max(0, int(c - radius / v)), min(n, int(c + radius / v) + 2))
            for n, c, v in zip(shape, centre, spacing)
        )
        grid = np.ogrid[box]
        d2 = sum(((g - c) * v) ** 2 for g, c, v in zip(grid, centre, spacing))
        fg[box] |= d2 <= radius**2
    return fg


def smooth_distance(fg: np.ndarray, spacing: tuple) -> np.ndarray:
    """The height split_instances seeds from: the distance to the background, smoothed."""
    return ndi.gaussian_filter(distance_inside(fg, spacing), [1 / v for v in spacing])


IMAGES = [
    ((256, 256), (1.0, 1.0)),
    ((24, 128, 128), (1.0, 1.0, 1.0)),
    ((24, 128, 128), (2.0, 1.0, 1.0)),
]
DEPTHS = [0.5, 2.0, 6.0]


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize(("shape", "spacing"), IMAGES)
def test_deep_maxima_is_the_reconstructions(shape, spacing, depth):
    height = smooth_distance(blobs(shape, spacing), spacing)
    expected = reference_deep_maxima(height, depth)
    assert np.array_equal(deep_maxima(height, depth), expected)


@pytest.mark.parametrize(("shape", "spacing"), IMAGES)
def test_deep_maxima_in_small_pieces(shape, spacing, monkeypatch):
    # the passes and the rebuilt heights are taken piece by piece: pieces of a few hundred
    # voxels (pairs cut at every piece's edge, a rebuilt slab per slice) change nothing
    monkeypatch.setattr(maxima, "PASS_CHUNK", 333)
    height = smooth_distance(blobs(shape, spacing), spacing)
    for depth in DEPTHS:
        assert np.array_equal(deep_maxima(height, depth), reference_deep_maxima(height, depth))


def flooded(fg: np.ndarray, depth: float, spacing: tuple, smooth: bool = True) -> np.ndarray:
    """The objects of skimage's flooding from the reconstruction's seeds (no size limit; a
    component without a seed is an object of its own), and the height flooded."""
    dist = distance_inside(fg, spacing)
    if smooth:
        dist = ndi.gaussian_filter(dist, [1 / v for v in spacing])
    dist *= fg
    markers, n_seeds = ndi.label(reference_deep_maxima(dist, depth) & fg, np.ones((3,) * fg.ndim))
    components, n = ndi.label(fg)
    return postprocess._watershed_by_component(dist, markers, n_seeds, components, n), dist


def assert_a_watershed_by_climbing(labels, expected, height, fg, depth) -> int:
    """``labels``: the same objects as ``expected`` (a flooding from the same seeds), few
    voxels anywhere else than the flooding put them, and in each component that differs
    from the flooding (that did not flood whole), each voxel labelled as the highest of
    its neighbours inside ``fg`` where one is higher than it, but for the few the basins
    leave to a climb from the seeds among them. Returns how many components differ."""
    assert labels.max() == expected.max() and np.array_equal(labels > 0, fg)
    pairs = np.unique(np.stack([expected[fg], labels[fg]]), axis=1)  # overlaps
    agree = np.bincount(expected[fg] * (labels.max() + 1) + labels[fg])
    # every flooded object has one climbed object covering most of it, and the reverse
    assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == expected.max()
    most = agree.reshape(-1, labels.max() + 1)[1:, 1:].max(axis=1)
    sizes = np.bincount(expected[fg])[1:]
    assert np.all(most > sizes / 2)
    assert np.mean(labels[fg] == expected[fg]) > 0.95  # the same ids here
    padded = np.pad(np.where(fg, height, -np.inf), 1, constant_values=-np.inf)
    step = maxima._uphill_steps(padded)
    components = ndi.label(fg)[0]
    climbed = np.unique(components[labels != expected])
    peaks, basins = maxima.deep_maxima(height, depth)
    markers = ndi.label(peaks & fg, np.ones((3,) * fg.ndim))[0]
    left = np.zeros(fg.shape, bool)  # the voxels the basins leave to a climb
    left[fg] = basins.seeds(markers)((slice(None),) * fg.ndim, fg) == 0
    left &= np.isin(components, components[markers > 0])  # (a component without seeds
    # is one object: the basins are not asked)
    assert left.sum() < 0.05 * fg.sum() and (fg.ndim == 3 or not left.any())
    flat = np.pad(labels, 1).ravel()
    inside = np.pad(np.isin(components, climbed) & ~left, 1).ravel() & (step != 0)
    inside = np.flatnonzero(inside)
    assert np.array_equal(flat[inside], flat[inside + step[inside]])
    return len(climbed)


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize(("shape", "spacing"), IMAGES)
def test_split_instances_is_a_watershed_from_the_deep_maxima(shape, spacing, depth):
    fg = blobs(shape, spacing)
    labels, nxt = split_instances(fg, seed_depth=depth, spacing=spacing, min_size=1)
    expected, height = flooded(fg, depth, spacing)
    climbed = assert_a_watershed_by_climbing(labels, expected, height, fg, depth)
    assert climbed > 0 or depth > 2  # the rims of basins differ from the flooding
    # the depth matters on these images: touching objects are cut, and fewer when deeper
    assert nxt - 1 > ndi.label(fg)[1]
    if depth > DEPTHS[0]:
        shallower, _ = split_instances(fg, seed_depth=DEPTHS[0], spacing=spacing)
        assert shallower.max() > labels.max()


@pytest.mark.parametrize("depth", [0.5, 1.0, 3.0])
@pytest.mark.parametrize(
    ("shape", "spacing"), [((96, 96), (1.0, 1.0)), ((12, 48, 48), (2.0, 1.0, 1.0))]
)
def test_plateaus_of_an_unsmoothed_distance(shape, spacing, depth):
    # unsmoothed, the distance takes few values (square roots of whole numbers): wide
    # plateaus, and passes exactly as high as peaks
    fg = blobs(shape, spacing, seed=1)
    height = distance_inside(fg, spacing)
    assert np.array_equal(deep_maxima(height, depth), reference_deep_maxima(height, depth))
    labels, _ = split_instances(fg, seed_depth=depth, spacing=spacing, smooth=0, min_size=1)
    expected, height = flooded(fg, depth, spacing, smooth=False)
    assert_a_watershed_by_climbing(labels, expected, height, fg, depth)


def test_basins_join_the_seed_over_the_highest_pass():
    # three peaks (5, 4, 6) seeded at 5 and 6: the middle basin joins the 5 over the
    # higher pass (3 against 2); the slope from the 6 climbs to it; the floor joins none
    height = np.array([0, 5, 3, 4, 2, 6, 0], np.float32)
    seeds, basins = maxima.deep_maxima(height, 1.5)
    assert seeds.tolist() == [False, True, False, False, False, True, False]
    markers = np.array([0, 1, 0, 0, 0, 2, 0])  # the 4 left without a seed of its own
    assert climb_all(basins, markers) == [0, 1, 1, 1, 2, 2, 0]
    # two seeded basins never merge, however high the pass between them
    markers[3] = 3
    assert climb_all(basins, markers) == [0, 1, 1, 3, 2, 2, 0]
    # a basin given two seeds is left to climbing; a basin joining it joins the higher seed
    markers = np.array([0, 1, 4, 0, 0, 2, 0])  # the 3 climbs to the 5: one basin
    assert climb_all(basins, markers) == [0, 0, 0, 1, 2, 2, 0]


def test_the_first_seed_uphill():
    # each voxel climbs to its highest neighbour and stops at the first seed it meets;
    # a voxel at -inf, or whose climb meets none, gets 0
    height = np.array([1, 2, 3, 4, 5, -np.inf, 2, 1], np.float32)
    markers = np.array([0, 0, 7, 0, 9, 0, 0, 0])
    assert maxima.first_seed_uphill(height, markers).tolist() == [7, 7, 7, 9, 9, 0, 0, 0]
    plane = np.array([[1, 2, 1], [2, 9, 3], [1, 3, 8]], np.float32)
    seeds = np.zeros((3, 3), int)
    seeds[2, 2], seeds[1, 1] = 5, 6  # the centre's climb stops at it: a seed
    assert maxima.first_seed_uphill(plane, seeds).tolist() == [[6] * 3, [6] * 3, [6, 6, 5]]


def climb_all(basins, markers) -> list[int]:
    return basins.seeds(markers)((slice(None),), np.ones(markers.shape, bool)).tolist()


def test_a_component_not_all_joining_its_own_seeds_floods():
    # a component takes the seeds its voxels climb to only when every one is a seed of its
    # own; else (a voxel that joins none, or another component's seed) it floods
    fg = blobs((256, 256), (1.0, 1.0))
    height = smooth_distance(fg, (1.0, 1.0)) * fg
    markers, n_seeds = ndi.label(reference_deep_maxima(height, 0.5) & fg, np.ones((3, 3)))
    components, n = ndi.label(fg)
    flooding = postprocess._watershed_by_component(height, markers, n_seeds, components, n)
    seeds = [np.unique(markers[(components == c) & (markers > 0)]) for c in range(n + 1)]
    two, other = [c for c in range(1, n + 1) if len(seeds[c]) >= 2][:2]
    swapped = flooding.copy()  # component ``two`` with its first two seeds swapped
    first, second = seeds[two][:2]
    swapped[flooding == first], swapped[flooding == second] = second, first
    for wrong, expected in ((0, flooding), (seeds[other][0], flooding), (None, swapped)):
        given = swapped.copy()
        if wrong is not None:  # one voxel of ``two`` joins no seed, or ``other``'s
            given[tuple(np.argwhere(components == two)[0])] = wrong

        def climb(box, mask, given=given):
            return given[box][mask]

        got = postprocess._watershed_by_component(height, markers, n_seeds, components, n, climb)
        assert np.array_equal(got, expected)


@pytest.mark.parametrize("seed", range(40))
def test_ties_everywhere(seed):
    # small images of a few whole numbers (plateaus, passes as high as peaks, maxima on the
    # border), whole-number depths (peak - depth exactly at a pass), 1 to 3 dimensions
    rng = np.random.default_rng(seed)
    shape = tuple(rng.integers(1, 10, rng.integers(1, 4)))
    height = rng.integers(0, 4, shape).astype([np.float32, np.float64, np.int16][seed % 3])
    for depth in (0.0, 0.5, 1.0, 2.0):
        assert np.array_equal(deep_maxima(height, depth), reference_deep_maxima(height, depth))


def test_many_basins():
    # noise: a basin every few pixels, more than a table of pairs of basins would hold
    height = np.random.default_rng(0).random((160, 160)).astype(np.float32)
    for depth in (0.05, 0.3):
        assert np.array_equal(deep_maxima(height, depth), reference_deep_maxima(height, depth))


def test_empty():
    for shape in [(32, 32), (4, 16, 16)]:
        height = distance_inside(np.zeros(shape, bool), (1.0,) * len(shape))
        assert not deep_maxima(height, 2.0).any() and not reference_deep_maxima(height, 2.0).any()
        labels, nxt = split_instances(np.zeros(shape, bool), seed_depth=2.0, start=5)
        assert not labels.any() and nxt == 5


def test_every_component_is_one_object_at_least():
    # eight specks too shallow for a seed of depth 4, and two overlapping discs deep enough
    fg = np.zeros((64, 200), bool)
    for k in range(8):
        fg[3:6, 5 + 20 * k : 8 + 20 * k] = True
    yy, xx = np.mgrid[:64, :200]
    fg |= ((yy - 40) ** 2 + (xx - 40) ** 2 <= 225) | ((yy - 40) ** 2 + (xx - 66) ** 2 <= 225)
    labels, nxt = split_instances(fg, seed_depth=4.0, min_size=1, start=1)
    assert nxt == 11 and np.array_equal(labels > 0, fg)
    # the seeded discs first, then each speck on its own, in the order of the components
    assert [labels[4, 6 + 20 * k] for k in range(8)] == list(range(3, 11))
    assert labels[40, 35] != labels[40, 71] and {labels[40, 35], labels[40, 71]} == {1, 2}


def test_parallel_smoothing_is_scipys():
    rng = np.random.default_rng(0)
    cases = [
        ((8, 400, 400), [0.5, 1.0, 1.0]),
        ((1100, 1000), [1.0, 1.0]),
        ((5, 500, 600), [0.25, 2.0, 1.0]),
    ]
    for shape, sigmas in cases:
        image = rng.random(shape).astype(np.float32)
        assert image.size >= 2**20  # large enough to go to threads
        expected = ndi.gaussian_filter(image, sigmas)
        assert np.array_equal(parallel.gaussian(image, sigmas), expected)


def uphill_heights() -> list[np.ndarray]:
    """Padded heights in 2D and 3D: smooth distances, and coarse noise full of ties."""
    rng = np.random.default_rng(3)
    spacing = (2.0, 1.0, 1.0)
    heights = [
        smooth_distance(blobs((24, 128, 128), spacing), spacing),
        rng.integers(0, 4, (9, 40, 50)).astype(np.float32),
        rng.integers(0, 4, (70, 90)).astype(np.float32),
    ]
    return [np.pad(h, 1, constant_values=-np.inf) for h in heights]


@pytest.mark.parametrize("block", [maxima.UPHILL_BLOCK_VOXELS, 200])
@pytest.mark.parametrize("threads", [1, 3])
def test_uphill_steps_reach_the_highest_neighbour(block, threads, monkeypatch):
    # in blocks with a margin of one: a block edge must still see the neighbours beyond it
    monkeypatch.setattr(maxima, "UPHILL_BLOCK_VOXELS", block)
    monkeypatch.setattr(parallel, "threads_for", lambda voxels: threads)
    for padded in uphill_heights():
        step = maxima._uphill_steps(padded)
        inner = np.zeros(padded.shape, bool)
        inner[(slice(1, -1),) * padded.ndim] = True
        inner = inner.ravel()
        f = padded.ravel()
        highest = ndi.maximum_filter(padded, size=3, mode="constant", cval=-np.inf).ravel()
        i = np.flatnonzero(inner)
        assert np.array_equal(step[i] == 0, highest[i] == f[i])  # a peak stays put
        assert np.array_equal(f[i + step[i]], highest[i])  # else it moves to the highest
        assert np.all(np.abs(step[i]) <= sum(s // padded.itemsize for s in padded.strides))
        assert np.count_nonzero(step[i]) > i.size // 4


def test_uphill_steps_do_not_depend_on_blocks_or_threads(monkeypatch):
    # ties between equally high neighbours go the same way however the image is cut
    padded = uphill_heights()[1]
    whole = maxima._uphill_steps(padded)
    for block, threads in ((200, 1), (200, 3), (1000, 2)):
        monkeypatch.setattr(maxima, "UPHILL_BLOCK_VOXELS", block)
        monkeypatch.setattr(parallel, "threads_for", lambda voxels, t=threads: t)
        assert np.array_equal(maxima._uphill_steps(padded), whole)


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize(("shape", "spacing"), IMAGES)
def test_flooding_by_component_is_one_flooding(shape, spacing, threads, monkeypatch):
    # one component at a time in its box (in threads) gives the labels of one flooding
    monkeypatch.setattr(parallel, "threads_for", lambda voxels: threads)
    fg = blobs(shape, spacing)
    dist = smooth_distance(fg, spacing)
    markers, n_seeds = ndi.label(deep_maxima(dist, 0.5) & fg, np.ones((3,) * fg.ndim))
    components, n = ndi.label(fg)
    assert np.array_equal(np.unique(components[markers > 0]), np.arange(1, n + 1))  # all seeded
    got = postprocess._watershed_by_component(dist, markers, n_seeds, components, n)
    assert np.array_equal(got, watershed(-dist, markers, mask=fg))


@pytest.mark.parametrize("seed_depth", [0.0, 2.0])
@pytest.mark.parametrize(("shape", "spacing"), IMAGES)
def test_split_is_the_same_in_threads(shape, spacing, seed_depth, monkeypatch):
    # every threaded step (distances, climbing to the peaks, passes, look-ups) gives the
    # labels of one thread, ids included
    fg = blobs(shape, spacing)
    monkeypatch.setattr(parallel, "threads_for", lambda voxels: 1)
    one, n_one = split_instances(fg, seed_depth=seed_depth, spacing=spacing)
    assert n_one > 20
    for threads in (2, 3):
        monkeypatch.setattr(parallel, "threads_for", lambda voxels, threads=threads: threads)
        got, n_got = split_instances(fg, seed_depth=seed_depth, spacing=spacing)
        assert n_got == n_one
        assert np.array_equal(got, one)
