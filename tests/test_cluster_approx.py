"""The approximate path on in-memory arrays: planted clusters, determinism, bad input."""

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from cluster_service.cluster.approx import approx_ward
from cluster_service.cluster.params import ApproxParams
from cluster_service.cluster.quality import evaluate, within_sse
from cluster_service.errors import UserError

pytestmark = pytest.mark.unit


def planted(n_per: int = 400, k: int = 8, d: int = 24, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=10.0, size=(k, d))
    truth = np.repeat(np.arange(k), n_per)
    x = centres[truth] + rng.normal(size=(len(truth), d))
    order = rng.permutation(len(x))
    return x[order].astype(np.float32), truth[order]


def test_planted_clusters_are_recovered():
    x, truth = planted()
    res = approx_ward(x, [8, 3], ApproxParams(micro=200, seed=0), shard=1000)
    assert len(res.partition.sizes) <= 200
    assert res.partition.sizes.sum() == len(x)
    assert adjusted_rand_score(truth, res.assignments(8)) == 1.0
    # coarser cut merges whole planted clusters
    assert len(np.unique(res.assignments(3))) == 3
    for c in range(8):
        assert len(np.unique(res.assignments(3)[truth == c])) == 1


def test_planted_clusters_with_tokens_as_leaves():
    x, truth = planted(n_per=150, k=8, d=16, seed=2)
    res = approx_ward(x, [8], ApproxParams(dense_max=300))  # default rule: every token a leaf, kNN-graph Ward below 300
    assert len(res.partition.sizes) == len(x)
    assert adjusted_rand_score(truth, res.assignments(8)) == 1.0


def test_same_seed_same_assignments_other_seed_runs_too():
    x, _ = planted(n_per=150, k=5, d=16, seed=1)
    x += np.random.default_rng(9).normal(scale=3.0, size=x.shape).astype(np.float32)  # blur: seeds matter
    a = approx_ward(x, [5, 40], ApproxParams(micro=120, seed=7))
    b = approx_ward(x, [5, 40], ApproxParams(micro=120, seed=7))
    np.testing.assert_array_equal(a.partition.token_micro, b.partition.token_micro)
    np.testing.assert_array_equal(a.linkage, b.linkage)
    for k in (5, 40):
        np.testing.assert_array_equal(a.assignments(k), b.assignments(k))
    c = approx_ward(x, [5, 40], ApproxParams(micro=120, seed=8))
    assert not np.array_equal(a.partition.token_micro, c.partition.token_micro)


def test_default_leaves_rule():
    assert ApproxParams().leaves(20_000, 600) == 20_000  # tokens are the leaves (kNN-graph Ward)
    assert ApproxParams().leaves(1_000_000, 50) == 1_000_000
    assert ApproxParams().leaves(1_000_001, 600) == 8192  # k-means micro-clusters above the CPU's graph_max
    assert ApproxParams(graph_max=2_000_000).leaves(2_000_000, 600) == 2_000_000  # --graph-max
    assert ApproxParams().leaves(2_000_000, 1000, graph_max=1_000_000) == 10_000  # never closer than 10·K
    assert ApproxParams().leaves(4_000_000, 600, graph_max=5_000_000) == 4_000_000  # a GPU's graph_max
    assert ApproxParams().leaves(6_000_000, 600, 5_000_000, micro_cap=131_072) == 131_072  # and its leaves
    assert ApproxParams(graph_max=1000).leaves(300_000, 50) == 8192


def test_bad_input_is_a_user_error():
    x, _ = planted(n_per=20, k=3, d=4)
    with pytest.raises(UserError, match="at least 1"):
        approx_ward(x, [0])
    with pytest.raises(UserError, match="more clusters than"):
        evaluate(x, [len(x) + 1])
    bad = x.copy()
    bad[17, 2] = np.nan
    with pytest.raises(UserError, match="row 17"):
        approx_ward(bad, [3], ApproxParams(micro=10))
    bad[17, 2] = np.inf
    with pytest.raises(UserError, match="NaN or inf"):
        approx_ward(bad, [3], ApproxParams(micro=10))


def test_quality_report_on_planted_data():
    x, truth = planted(n_per=100, k=6, d=12, seed=4)
    rows = evaluate(x, [6, 30], ApproxParams(seed=0, micro=150))
    by_k = {r["k"]: r for r in rows}
    assert by_k[6]["ari_vs_exact"] == 1.0 and by_k[6]["ari_exact_subsample"] == 1.0
    assert by_k[6]["sse_ratio_vs_exact"] == pytest.approx(1.0)
    assert 0.9 < by_k[30]["sse_ratio_vs_exact"] < 1.1
    assert by_k[6]["exact_sse"] == pytest.approx(within_sse(x, truth))
