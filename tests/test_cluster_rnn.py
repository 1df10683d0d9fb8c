"""Exact Ward by reciprocal-nearest-neighbour rounds (the GPU's exact Ward), run here on the CPU:
the same tree as fastcluster, with and without weights, ties and duplicates, and in the stage."""

import fastcluster
import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score
from test_cluster_stage import blobs, make_store

from cluster_service.cluster.config import ClusterConfig
from cluster_service.cluster.cut import cut
from cluster_service.cluster.rnn_ward import rnn_ward
from cluster_service.cluster.stage import cluster_run
from cluster_service.cluster.ward import weighted_ward
from cluster_service.errors import UserError

CPU = torch.device("cpu")


def mixture(n: int, d: int, seed: int, centres: int = 30) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(scale=4.0, size=(centres, d))[rng.integers(0, centres, n)] + rng.normal(size=(n, d))


@pytest.mark.parametrize("n,d,dense_max", [(1500, 8, 50), (2500, 32, 300)])
def test_rounds_build_fastclusters_tree(n, d, dense_max):
    x = mixture(n, d, seed=n)
    ours = rnn_ward(x, CPU, dense_max=dense_max)
    ref = fastcluster.linkage(x, method="ward")
    np.testing.assert_allclose(ours[:, 2], ref[:, 2], rtol=1e-9)
    np.testing.assert_array_equal(ours[:, 3], ref[:, 3])
    ks = (2, 10, 30, 200, n // 2)
    ours_cut, ref_cut = cut(ours, ks), cut(ref, ks)
    for k in ks:
        assert adjusted_rand_score(ours_cut[k], ref_cut[k]) == 1.0


def test_float32_input_gives_the_tree_of_its_float64_values():
    x = mixture(1200, 16, seed=1).astype(np.float32)
    ours = rnn_ward(x, CPU, dense_max=40)
    ref = fastcluster.linkage(x.astype(np.float64), method="ward")
    np.testing.assert_allclose(ours[:, 2], ref[:, 2], rtol=1e-9)


def test_weighted_leaves_give_weighted_wards_tree():
    rng = np.random.default_rng(3)
    x, sizes = rng.normal(size=(900, 6)), rng.integers(1, 20, 900).astype(float)
    ours = rnn_ward(x, CPU, sizes, dense_max=60)
    ref = weighted_ward(x, sizes)
    np.testing.assert_allclose(ours[:, 2], ref[:, 2], rtol=1e-9)
    np.testing.assert_array_equal(ours[:, [0, 1, 3]], ref[:, [0, 1, 3]])


def test_duplicates_and_tied_costs_end_with_the_same_heights():
    """Points on a small integer grid: many exact duplicates and equal costs, where a cycle of ties
    could leave a round without a reciprocal pair; the rounds must still finish with Ward's heights."""
    x = np.random.default_rng(4).integers(0, 3, size=(1000, 3)).astype(np.float64)
    ours = rnn_ward(x, CPU, dense_max=10)
    ref = fastcluster.linkage(x, method="ward")
    np.testing.assert_allclose(np.sort(ours[:, 2]), np.sort(ref[:, 2]), rtol=1e-9, atol=1e-12)
    assert ours[-1, 3] == len(x) and np.all(np.diff(ours[:, 2]) >= 0)


@pytest.mark.integration
def test_stage_exact_on_the_torch_device_matches_fastcluster(tmp_path):
    x, truth = blobs(n=2000, k=5, d=8, seed=5)
    by_device = {}
    for device in ("cpu", "torch-cpu"):
        store = make_store(tmp_path / device, x, shard=256)
        summary = cluster_run(store, ClusterConfig(k=[5, 60], method="exact", device=device))["3"]
        assert summary["micro"] == 2000 and summary["backend"] == ("faiss" if device == "cpu" else "torch-cpu")
        cdir = store.local_path(store.clusters_key(3))
        by_device[device] = (np.load(cdir / "linkage.npy"), np.load(cdir / "assignments_k60.npy"))
    (z_cpu, a_cpu), (z_torch, a_torch) = by_device["cpu"], by_device["torch-cpu"]
    np.testing.assert_allclose(z_torch[:, 2], z_cpu[:, 2], rtol=1e-9)
    assert adjusted_rand_score(a_cpu, a_torch) == 1.0
    assert adjusted_rand_score(truth, np.load(cdir / "assignments_k5.npy")) == 1.0


@pytest.mark.integration
def test_exact_max_is_the_devices_unless_given(tmp_path):
    store = make_store(tmp_path, blobs(n=400, d=8)[0], shard=128)
    with pytest.raises(UserError, match=r"above --exact-max 300 for exact Ward on faiss"):
        cluster_run(store, ClusterConfig(k=[5], method="exact", exact_max=300))
    assert cluster_run(store, ClusterConfig(k=[5], method="exact"))["3"]["micro"] == 400  # 60,000 on the CPU
