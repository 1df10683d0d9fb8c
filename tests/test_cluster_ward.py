"""Weighted Ward over micro-clusters against fastcluster's exact Ward, and cutting the tree."""

import fastcluster
import numpy as np
import pytest
from scipy.cluster.hierarchy import fcluster
from sklearn.metrics import adjusted_rand_score

from cluster_service.cluster.backend import FaissBackend
from cluster_service.cluster.cut import cut
from cluster_service.cluster.graph import hybrid_ward
from cluster_service.cluster.params import ApproxParams
from cluster_service.cluster.ward import weighted_ward
from cluster_service.errors import UserError

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("n,d,seed", [(300, 8, 0), (257, 32, 1), (60, 3, 2)])
def test_one_point_per_micro_equals_exact_ward(n, d, seed):
    x = np.random.default_rng(seed).normal(size=(n, d))
    exact = fastcluster.linkage(x, method="ward")
    ours = weighted_ward(x, np.ones(n))
    np.testing.assert_allclose(ours[:, 2], exact[:, 2], rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(ours[:, 3], exact[:, 3])
    ks = range(1, n + 1)
    ours_cut, exact_cut = cut(ours, ks), cut(exact, ks)
    for k in ks:
        assert len(np.unique(ours_cut[k])) == k
        np.testing.assert_array_equal(ours_cut[k], exact_cut[k])
    # the same partitions scipy's own cut gives
    for k in (2, 7, n // 3):
        assert adjusted_rand_score(fcluster(exact, k, "maxclust"), ours_cut[k]) == 1.0


def test_sizes_weight_the_merge_cost():
    """Starting from a partition of exact Ward's own tree, weighted Ward rebuilds the rest exactly."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 6))
    exact = fastcluster.linkage(x, method="ward")
    m = 40
    part = cut(exact, [m])[m]
    sizes = np.bincount(part)
    cents = np.stack([x[part == c].mean(axis=0) for c in range(m)])
    upper = weighted_ward(cents, sizes)
    np.testing.assert_allclose(upper[:, 2], exact[-(m - 1):, 2], rtol=1e-9)
    np.testing.assert_array_equal(upper[:, 3], exact[-(m - 1):, 3])
    for k in (1, 5, 20, m):
        # same partition (ids may differ where two concepts have equal size)
        assert adjusted_rand_score(cut(upper, [k], sizes)[k][part], cut(exact, [k])[k]) == 1.0


def test_cut_numbers_concepts_by_size_and_validates_k():
    x = np.concatenate([np.zeros((5, 2)), np.full((2, 2), 10.0), np.full((9, 2), -10.0)])
    x += np.random.default_rng(0).normal(scale=0.01, size=x.shape)
    labels = cut(weighted_ward(x, np.ones(len(x))), [3])[3]
    assert np.bincount(labels).tolist() == [9, 5, 2]
    z = weighted_ward(x, np.ones(len(x)))
    with pytest.raises(UserError, match="at least 1"):
        cut(z, [0])
    with pytest.raises(UserError, match="more clusters than"):
        cut(z, [len(x) + 1])
    with pytest.raises(UserError, match="positive size"):
        weighted_ward(x, np.zeros(len(x)))


def test_knn_graph_ward_with_complete_graph_is_exact():
    x = np.random.default_rng(5).normal(size=(300, 5))
    exact = fastcluster.linkage(x, method="ward")
    ours = hybrid_ward(x, np.ones(len(x)), ApproxParams(dense_max=40, neighbors=len(x) - 1), backend=FaissBackend())
    np.testing.assert_allclose(ours[:, 2], exact[:, 2], rtol=1e-9)
    ks = (1, 10, 40, 100, 299)
    ours_cut, exact_cut = cut(ours, ks), cut(exact, ks)
    for k in ks:
        assert adjusted_rand_score(ours_cut[k], exact_cut[k]) == 1.0


def test_knn_graph_ward_close_to_exact_on_structured_data():
    rng = np.random.default_rng(6)
    x = rng.normal(scale=6.0, size=(30, 8))[rng.integers(0, 30, 1500)] + rng.normal(size=(1500, 8))
    exact = fastcluster.linkage(x, method="ward")
    ours = hybrid_ward(x, np.ones(len(x)), ApproxParams(dense_max=200, neighbors=16), backend=FaissBackend())
    assert ours.shape == exact.shape and np.all(np.diff(ours[:, 2]) >= 0)
    assert ours[-1, 3] == len(x)
    for k, floor in ((30, 0.99), (200, 0.8)):
        assert adjusted_rand_score(cut(ours, [k])[k], cut(exact, [k])[k]) >= floor


def _representative_merges(m: int, rng: np.random.Generator, ties: bool) -> tuple[np.ndarray, ...]:
    """A random hierarchy over m leaves, each merge naming both clusters by their representative leaf
    (the survivor keeps its own), with heights that may be out of order (inversions) or tied."""
    alive, a, b = list(range(m)), [], []
    while len(alive) > 1:
        i, j = rng.choice(len(alive), 2, replace=False)
        a.append(alive[i])
        b.append(alive.pop(j))
    h = rng.integers(0, 4, m - 1).astype(float) if ties else rng.random(m - 1)
    return np.array(a), np.array(b), h


@pytest.mark.parametrize("ties", [False, True])
def test_vectorised_renumbering_equals_the_union_find(ties):
    """The event-sort renumbering of ``_to_scipy`` gives the union-find's linkage: monotone heights
    take the vectorised path, inverted ones may fall back, and both end equal."""
    from cluster_service.cluster.ward import _by_representatives, _to_scipy, _union_find

    rng = np.random.default_rng(7 + ties)
    fast = 0
    for _ in range(40):
        m = int(rng.integers(2, 300))
        a, b, h = _representative_merges(m, rng, ties)
        for heights in (np.sort(h), h):  # built bottom-up in height order, then shuffled heights
            order = np.argsort(heights, kind="stable")
            sizes = rng.integers(1, 5, m).astype(float)  # weighted leaves (micro-clusters) too
            want = _union_find(a, b, heights, sizes, order)
            assert np.array_equal(_to_scipy(a, b, heights, sizes), want)
            fast += _by_representatives(a[order], b[order], heights[order], sizes) is not None
    assert fast >= 40  # at least every monotone case took the vectorised path
