"""The kNN searches behind every-token-a-leaf Ward: cell-probed (CPU) and tiled brute force (torch)."""

import os
import subprocess
import sys
from pathlib import Path

import fastcluster
import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from cluster_service.cluster.backend import FaissBackend, TorchBackend
from cluster_service.cluster.cut import cut
from cluster_service.cluster.graph import hybrid_ward
from cluster_service.cluster.group_knn import knn_groups
from cluster_service.cluster.knn import cell_knn, exact_knn, recall, refine_knn
from cluster_service.cluster.params import ApproxParams

pytestmark = pytest.mark.unit


def mixture(n: int, d: int = 16, centres: int = 60, seed: int = 0, spread: float = 2.0) -> np.ndarray:
    """Overlapping Gaussian blobs of different widths: cells cut through blobs, as on real vectors."""
    rng = np.random.default_rng(seed)
    which = rng.integers(0, centres, n)
    width = rng.uniform(0.5, 2.0, centres)[which, None]
    return (rng.normal(scale=spread, size=(centres, d))[which] + width * rng.normal(size=(n, d))).astype(np.float32)


def test_cell_knn_recall_grows_with_probes_and_is_deterministic():
    x = mixture(20_000)
    x -= x.mean(axis=0)
    got = {p: cell_knn(x, 17, cell_size=250, probes=p, partitions=1, refine=0) for p in (1, 4, 16)}
    rec = {p: recall(x, nb, 16, queries=1000) for p, nb in got.items()}
    assert rec[1] < rec[4] < rec[16]
    assert rec[16] >= 0.95
    assert np.array_equal(got[16], cell_knn(x, 17, cell_size=250, probes=16, partitions=1, refine=0))
    assert np.array_equal(got[16][:, 0], np.arange(len(x)))  # every point finds itself first
    # probing every cell is exact search
    full = cell_knn(x[:3000], 17, cell_size=250, probes=12, partitions=1, refine=0)
    assert recall(x[:3000], full, 16, queries=3000) == 1.0


def test_cell_layouts_and_refinement_raise_recall_deterministically():
    """Independent layouts miss different neighbours: 4 layouts of 2 probes beat one, refinement
    adds more, and the whole search repeats bit for bit. (On real vectors 4 layouts also beat one
    layout of 4× the probes: bench_cluster_scale.py knn; Gaussian blobs do not show that.)"""
    x = mixture(20_000)
    x -= x.mean(axis=0)
    one = recall(x, cell_knn(x, 17, cell_size=250, probes=2, partitions=1, refine=0), 16, queries=1000)
    layouts = recall(x, cell_knn(x, 17, cell_size=250, probes=2, partitions=4, refine=0), 16, queries=1000)
    both = cell_knn(x, 17, cell_size=250, probes=2, partitions=4, refine=1)
    refined = recall(x, both, 16, queries=1000)
    assert one < layouts < refined, (one, layouts, refined)
    assert np.array_equal(both, cell_knn(x, 17, cell_size=250, probes=2, partitions=4, refine=1))
    assert np.array_equal(both[:, 0], np.arange(len(x)))
    assert (both >= 0).all() and all(len(set(r)) == 17 for r in both[:500].tolist())  # distinct neighbours


def test_refinement_repairs_scattered_misses():
    x = mixture(5000, d=24, seed=8)
    truth = exact_knn(x, 17)
    rng = np.random.default_rng(0)
    broken = truth.copy()
    wrong = rng.random(broken.shape) < 0.3
    wrong[:, 0] = False
    broken[wrong] = -1  # missing entries, as a search that found too few leaves them
    before = recall(x, broken, 16, queries=2000)
    after = recall(x, refine_knn(x, broken, 2), 16, queries=2000)
    assert before < 0.75 and after > 0.9, (before, after)


def test_recall_counts_missing_neighbours():
    x = mixture(2000)
    truth = exact_knn(x, 17)
    assert recall(x, truth, 16, queries=2000) == 1.0
    half = truth.copy()
    half[:, 9:] = -1
    assert recall(x, half, 16, queries=2000) == pytest.approx(0.5, abs=0.02)


def test_cell_probed_graph_ward_stays_close_to_exact_ward():
    x = mixture(6000, d=16, centres=40, seed=3)
    exact = cut(fastcluster.linkage(x, method="ward"), [40, 200])
    flat = cut(hybrid_ward(x, np.ones(len(x)), ApproxParams(dense_max=500), backend=FaissBackend()), [40, 200])
    cells = cut(hybrid_ward(x, np.ones(len(x)), ApproxParams(dense_max=500, knn_exact_max=1000),
                            backend=FaissBackend()), [40, 200])
    for k in (40, 200):
        a_flat = adjusted_rand_score(exact[k], flat[k])
        a_cells = adjusted_rand_score(exact[k], cells[k])
        assert a_cells >= a_flat - 0.05, (k, a_flat, a_cells)


def _dists(x: np.ndarray, nbr: np.ndarray) -> np.ndarray:
    x64 = x.astype(np.float64)
    return ((x64[:, None, :] - x64[nbr]) ** 2).sum(-1)


def test_group_minimum_knn_equals_exact_search_across_blocks():
    x = mixture(5000, d=32, seed=5)
    x -= x.mean(axis=0)
    ours = knn_groups(x, 16, torch.device("cpu"), rows=700)  # query blocks that do not divide n
    theirs = exact_knn(x, 17)
    assert np.allclose(_dists(x, ours), _dists(x, theirs), rtol=1e-5, atol=1e-4)
    assert (np.sort(ours, axis=1) == np.sort(theirs, axis=1)).all(axis=1).mean() > 0.99
    assert np.array_equal(ours, knn_groups(x, 16, torch.device("cpu")))  # blocking does not change it


@pytest.mark.parametrize("n", [5, 18, 257, 3203])
def test_group_minimum_knn_small_and_ragged_sizes(n):
    """Fewer points than groups, super-groups or neighbours, and a last group cut short: the padding
    columns past the last point are never chosen, and every point still finds its true neighbours."""
    x = mixture(n, d=12, seed=n)
    ours = knn_groups(x, 16, torch.device("cpu"), rows=100)
    assert ours.shape == (n, min(17, n)) and (ours >= 0).all() and (ours < n).all()
    assert np.allclose(_dists(x, ours), _dists(x, exact_knn(x, min(17, n))), rtol=1e-5, atol=1e-4)


def test_group_minimum_knn_keeps_duplicates():
    """Ties at distance 0 (each point three more times): the copies and the point itself come first."""
    base = mixture(800, d=24, seed=11)
    x = np.concatenate([base] * 4)[np.random.default_rng(3).permutation(3200)]
    ours = knn_groups(x, 16, torch.device("cpu"), rows=500)
    d = _dists(x, ours)
    assert np.allclose(d[:, :4], 0.0, atol=1e-6)
    assert np.allclose(d, _dists(x, exact_knn(x, 17)), rtol=1e-5, atol=1e-4)


_FUSED_CHECK = """
import numpy as np, torch
from cluster_service.cluster import group_knn
from tests.test_cluster_knn import mixture
x = torch.from_numpy(mixture(1000, d=40, seed=2))
xm = torch.nn.functional.pad(x, (0, (-40) % group_knn.BLOCK_K))  # as knn_groups pads D
xn = (xm * xm).sum(dim=1)
supers = -(-len(x) // (group_knn.GROUP * group_knn.SUPER))
fused = torch.full((300, supers * group_knn.SUPER), float("inf"))
plain, fused_s, plain_s = fused.clone(), torch.empty(300, supers), torch.empty(300, supers)
group_knn.triton_group_min(xm[:300], xm, xn, fused, fused_s)
group_knn.torch_group_min(xm[:300], xm, xn, plain, plain_s)
assert torch.isfinite(fused_s).all() and torch.allclose(fused, plain, rtol=1e-5, atol=1e-4)
assert torch.allclose(fused_s, plain_s, rtol=1e-5, atol=1e-4)
pts, cpu = x.numpy(), torch.device("cpu")
same = np.array_equal(group_knn.knn_groups(pts, 16, cpu, fused=True, rows=300),
                      group_knn.knn_groups(pts, 16, cpu, fused=False, rows=300))
assert same
print("fused ok")
"""


def test_fused_triton_kernel_equals_the_torch_group_minima():
    """The GPU's fused kernel, run by Triton's interpreter on the CPU (set before Triton is imported,
    hence a fresh process): the same group minima as the torch matmuls (to fp32 rounding), with
    ragged tiles (1000 points, tiles of 128), and the same neighbours end to end."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", _FUSED_CHECK], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0 and "fused ok" in done.stdout, done.stderr[-2000:]


def test_torch_rounds_give_the_faiss_tree_for_the_same_neighbours():
    x = mixture(3000, d=16, seed=7)
    z_cpu = hybrid_ward(x, np.ones(len(x)), ApproxParams(dense_max=300), backend=FaissBackend())
    z_torch = hybrid_ward(x, np.ones(len(x)), ApproxParams(dense_max=300), backend=TorchBackend(torch.device("cpu")))
    for k in (30, 300):
        assert adjusted_rand_score(cut(z_cpu, [k])[k], cut(z_torch, [k])[k]) > 0.99
