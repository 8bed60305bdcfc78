"""k-center: the float32 Gram-form scan of ``kcenter_greedy`` picks exactly what the float64 reference picks.

Near-tie data is where a float32 scan goes wrong without its exact fallback: lattice points (many exactly equal
distances, ties to the lowest index), duplicates, float64 points closer together than float32 can resolve, large
norms (Gram-form cancellation) and already-selected centres.
"""

from __future__ import annotations

import numpy as np
import pytest

from selbench.methods.kcenter import coverage_radius, kcenter_greedy, kcenter_greedy_exact
from tests.test_methods_embedding import ctx_with, make_pool, run
from tests.conftest import alpaca_rows


def assert_same(X, k, first=None, already=()):
    picks, dist, min_dist = kcenter_greedy(X, k, first=first, already_selected=already)
    ref_picks, ref_dist, ref_min = kcenter_greedy_exact(X, k, first=first, already_selected=already)
    assert picks == ref_picks
    assert np.array_equal(dist, ref_dist)  # exact pick distances, inf for a free first centre
    assert min_dist.max() == ref_min.max()  # exact coverage radius
    scale = (np.linalg.norm(np.asarray(X, np.float64), axis=1).max() * 2) ** 2
    np.testing.assert_allclose(min_dist ** 2, ref_min ** 2, rtol=0, atol=1e-5 * scale)  # squared: float32 bound
    return picks


def near_tie_sets(rng):
    lattice = rng.integers(-2, 3, size=(400, 6)).astype(np.float32)  # ~ duplicates and equal distances
    yield lattice, 120
    yield lattice * 1e3 + 5e3, 60  # large norms: Gram-form cancellation swamps the gaps
    base = rng.standard_normal((50, 16))
    tiny = np.repeat(base, 6, axis=0) + rng.integers(0, 3, size=(300, 16)) * 1e-10  # below float32 resolution
    yield tiny, 150
    unit = rng.standard_normal((2000, 32)).astype(np.float32)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    yield np.concatenate([unit, unit[::-1]]), 300  # every point twice: exact ties between the copies
    ring = np.stack([np.cos(np.arange(360) * np.pi / 180), np.sin(np.arange(360) * np.pi / 180)], 1)
    yield ring, 90  # symmetric: equal distances up to rounding


def test_fast_picks_equal_exact_reference_on_near_ties():
    rng = np.random.default_rng(0)
    for X, k in near_tie_sets(rng):
        picks = assert_same(X, k, first=3)
        assert len(set(picks)) == k
        assert_same(X, k // 2, already=[0, 7, 7, 11])  # DiverseEvol's labelled set (a duplicate index too)
        assert_same(X[:400], len(X[:400]) - 5, first=0)  # down to the exact zeros of duplicates


def test_fast_picks_equal_exact_reference_on_embeddings():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((5000, 384)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    picks = assert_same(X, 200, first=17)
    assert picks[0] == 17
    assert coverage_radius(X, picks) == kcenter_greedy_exact(X, 200, first=17)[2].max()


def test_edge_cases():
    X = np.random.default_rng(2).standard_normal((10, 3))
    assert kcenter_greedy(X, 0, first=0)[0] == []
    picks, dist, min_dist = kcenter_greedy(X, 10, first=4)
    assert sorted(picks) == list(range(10)) and (min_dist == 0).all() and np.isinf(dist[0])
    with pytest.raises(ValueError):
        kcenter_greedy(X, 11, first=0)
    with pytest.raises(ValueError):
        kcenter_greedy(X, 2)


def test_method_first_centre_given_or_seeded(tmp_path):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((60, 8)).astype(np.float32)
    pool = make_pool(alpaca_rows(len(X)))
    given = run("kcenter", pool, 10, ctx_with(X, tmp_path), first=42)
    assert given.ids[0] == pool.examples[42].id
    assert given.extras["first_centre"] == 42 and given.extras["first_centre_source"] == "given"
    assert given.ids == [pool.examples[i].id for i in kcenter_greedy_exact(X, 10, first=42)[0]]
    seeded = run("kcenter", pool, 10, ctx_with(X, tmp_path, seed=4))
    assert seeded.extras["first_centre_source"] == "seeded"
    assert seeded.extras["first_centre"] == int(np.random.default_rng(4).integers(60))
    assert seeded.extras["coverage_radius"] == coverage_radius(X, [pool.ids.index(i) for i in seeded.ids])
    with pytest.raises(ValueError, match="first"):
        run("kcenter", pool, 10, ctx_with(X, tmp_path), first=60)
