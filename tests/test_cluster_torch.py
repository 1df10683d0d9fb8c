"""The torch (GPU) path of the cluster stage, run on CPU torch: against FAISS/NumPy and itself."""

import dataclasses

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import zarr
from scipy.cluster.hierarchy import is_valid_linkage
from sklearn.metrics import adjusted_rand_score

from cluster_service.cluster.backend import FaissBackend, TorchBackend, resolve_backend
from cluster_service.cluster.config import ClusterConfig
from cluster_service.cluster.graph import knn_edges
from cluster_service.cluster.group_knn import knn_groups
from cluster_service.cluster.micro import nearest, train_kmeans
from cluster_service.cluster.parallel import assign_all
from cluster_service.cluster.source import ArraySource, ZarrSource
from cluster_service.cluster.stage import cluster_run
from cluster_service.cluster.torch_ops import train_kmeans_torch
from cluster_service.errors import UserError
from cluster_service.store import RunStore

CPU = torch.device("cpu")


def planted(n: int, k: int, d: int, seed: int = 0, spread: float = 4.0):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, n)
    return (rng.normal(scale=spread, size=(k, d))[truth] + rng.normal(size=(n, d))).astype(np.float32), truth


def sse(x: np.ndarray, cents: np.ndarray) -> float:
    lab = nearest(x, cents, np.einsum("ij,ij->i", cents, cents), 1024)
    return float(((x.astype(np.float64) - cents[lab]) ** 2).sum())


def make_store(root, x: np.ndarray, shard: int = 512) -> RunStore:
    n, d = x.shape
    group = zarr.open_group(str(root / "activations.zarr"), mode="a")
    group.create_array("layer_6", shape=(n, d), chunks=(128, d), shards=(shard, d), dtype="float16",
                       compressors=None)[:] = x
    pq.write_table(pa.table({"row": np.arange(n), "sentence_id": np.arange(n) // 10,
                             "position": (np.arange(n) % 10).astype(np.int32),
                             "word": [f"w{i % 37}" for i in range(n)], "occurrence": np.ones(n, np.int64)}),
                   root / "tokens.parquet")
    sids = np.arange((n + 9) // 10)
    pq.write_table(pa.table({"sentence_id": sids, "text": ["s"] * len(sids)}), root / "sentences.parquet")
    store = RunStore(root)
    store.write_manifest({"stages": {}})
    return store


@pytest.mark.unit
def test_kmeans_sse_close_to_faiss():
    x, _ = planted(20_000, 64, 32)
    ours = sse(x, train_kmeans_torch(x, 256, seed=0, iters=10, device=CPU))
    theirs = sse(x, train_kmeans(x, 256, seed=0, iters=10))
    assert ours <= 1.03 * theirs, (ours, theirs)


@pytest.mark.unit
def test_kmeans_is_deterministic_and_fills_empty_clusters():
    x, _ = planted(5000, 20, 16, seed=3)
    a = train_kmeans_torch(x, 100, seed=7, iters=5, device=CPU)
    b = train_kmeans_torch(x, 100, seed=7, iters=5, device=CPU)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, train_kmeans_torch(x, 100, seed=8, iters=5, device=CPU))
    # Three distinct points, 8 centroids: most clusters empty at every step; splits keep them finite.
    dup = np.repeat(np.eye(3, 8, dtype=np.float32) * 5.0, 30, axis=0)
    c = train_kmeans_torch(dup, 8, seed=0, iters=4, device=CPU)
    assert np.isfinite(c).all()
    # Every distinct point has a centroid at it (up to the ±1/1024 split nudge).
    assert sse(dup, c) < 1e-3 * sse(dup, dup.mean(axis=0, keepdims=True))
    with pytest.raises(UserError):
        train_kmeans_torch(dup[:5], 8, seed=0, iters=1, device=CPU)


@pytest.mark.unit
def test_assignment_equals_numpy_path():
    x, _ = planted(6000, 30, 24, seed=1)
    cents = train_kmeans(x, 120, seed=0, iters=5)
    src = ArraySource(x, 1024)
    ref = assign_all(src, cents, where="t", progress=False)
    got = TorchBackend(CPU).assign(src, cents, where="t", progress=False)
    # Exact on non-tied rows: every row whose two best centroids are not within float noise.
    d2 = ((x[:, None, :].astype(np.float64) - cents[None].astype(np.float64)) ** 2).sum(-1)
    two = np.sort(d2, axis=1)[:, :2]
    clear = (two[:, 1] - two[:, 0]) > 1e-3 * two[:, 1]
    assert clear.mean() > 0.99
    assert np.array_equal(got.token_micro[clear], ref.token_micro[clear])
    assert np.array_equal(got.counts, np.bincount(got.token_micro, minlength=120))
    sums = np.zeros((120, x.shape[1]))
    np.add.at(sums, got.token_micro, x.astype(np.float64))
    assert np.allclose(got.sums, sums, rtol=1e-12, atol=1e-9)
    assert got.sq_norm == pytest.approx(ref.sq_norm, rel=1e-12)


@pytest.mark.integration
def test_streaming_from_zarr_equals_in_memory(tmp_path):
    x, _ = planted(3000, 10, 16, seed=2)
    store = make_store(tmp_path, x, shard=512)
    x16 = x.astype(np.float16).astype(np.float32)
    cents = train_kmeans_torch(x16, 50, seed=0, iters=3, device=CPU)
    a = TorchBackend(CPU).assign(ZarrSource(str(store.local_path("activations.zarr")), "layer_6"), cents, where="z",
                                 progress=False)
    b = TorchBackend(CPU).assign(ArraySource(x16, 512), cents, where="m", progress=False)
    assert np.array_equal(a.token_micro, b.token_micro)
    assert np.array_equal(a.sums, b.sums) and a.sq_norm == b.sq_norm


@pytest.mark.unit
def test_knn_equals_faiss_exact():
    x, _ = planted(3000, 40, 32, seed=4, spread=2.0)
    neighbors = 16
    ours = knn_groups(x, neighbors, CPU)
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    _, theirs = index.search(x, neighbors + 1)
    x64 = x.astype(np.float64)

    def dists(nbr: np.ndarray) -> np.ndarray:
        return ((x64[:, None, :] - x64[nbr]) ** 2).sum(-1)

    # The same neighbours up to the order of near-equal distances.
    assert np.allclose(dists(ours), dists(theirs), rtol=1e-5, atol=1e-4)
    assert (np.sort(ours, axis=1) == np.sort(theirs, axis=1)).all(axis=1).mean() > 0.99
    u1, v1 = knn_edges(x, neighbors, TorchBackend(CPU))
    u2, v2 = knn_edges(x, neighbors, FaissBackend())
    e1, e2 = set(zip(u1.tolist(), v1.tolist(), strict=True)), set(zip(u2.tolist(), v2.tolist(), strict=True))
    assert len(e1 ^ e2) <= 0.001 * len(e2)


@pytest.mark.unit
def test_resolve_backend():
    assert isinstance(resolve_backend("cpu"), FaissBackend)
    assert resolve_backend("torch-cpu").device == CPU
    if torch.cuda.is_available():
        assert resolve_backend("auto").device == torch.device("cuda")
    else:
        assert isinstance(resolve_backend("auto"), FaissBackend)
        with pytest.raises(UserError, match="no CUDA"):
            resolve_backend("cuda")


def valid_tree(z: np.ndarray, n_leaves: int, n_tokens: int) -> bool:
    """A scipy linkage over ``n_leaves`` leaves whose column 3 counts tokens (leaves weigh their size)."""
    leaves = np.ones(2 * n_leaves - 1)
    for i, (a, b) in enumerate(z[:, :2].astype(np.int64)):
        leaves[n_leaves + i] = leaves[a] + leaves[b]
    by_leaf = np.column_stack([z[:, :3], leaves[n_leaves:]])
    return (len(z) == n_leaves - 1 and is_valid_linkage(by_leaf) and z[-1, 3] == n_tokens
            and bool(np.all(np.diff(z[:, 2]) >= 0)))


def _stage(root, x, **kw) -> tuple[dict, dict]:
    store = make_store(root, x)
    cfg = ClusterConfig(layers=[6], k=[8, 30], examples=2, **kw)
    summary = cluster_run(store, cfg)["6"]
    ldir = store.local_path(store.clusters_key(6))
    arrays = {name: np.load(ldir / name) for name in ("linkage.npy", "assignments_k8.npy", "assignments_k30.npy")}
    return summary, arrays


@pytest.mark.integration
@pytest.mark.parametrize("leaves", ["kmeans", "tokens"])
def test_stage_torch_path_matches_faiss_path(tmp_path, leaves):
    """k-means micro-clusters (M=300), or every token a leaf with kNN-graph Ward below 800 clusters."""
    x, truth = planted(4000, 8, 24, seed=5, spread=3.0)
    kw = {"micro": 300} if leaves == "kmeans" else {"dense_max": 800}
    ref, ref_arr = _stage(tmp_path / "cpu", x, device="cpu", **kw)
    got, arr = _stage(tmp_path / "torch", x, device="torch-cpu", **kw)
    again, arr2 = _stage(tmp_path / "torch2", x, device="torch-cpu", **kw)
    assert ref["backend"] == "faiss" and got["backend"] == "torch-cpu"
    n_leaves = got["micro"]
    assert n_leaves == (300 if leaves == "kmeans" else 4000)
    assert valid_tree(arr["linkage.npy"], n_leaves, len(x)) and valid_tree(ref_arr["linkage.npy"], n_leaves, len(x))
    for k in (8, 30):
        assert got["per_k"][k]["sse"] <= 1.02 * ref["per_k"][k]["sse"]
        assert len(np.unique(arr[f"assignments_k{k}.npy"])) == k
    assert adjusted_rand_score(truth, arr["assignments_k8.npy"]) > 0.95
    assert all(np.array_equal(arr[name], arr2[name]) for name in arr)


@pytest.mark.integration
def test_stage_resumes_per_backend(tmp_path):
    """A rerun on the same backend reuses every step; switching backend redoes them."""
    x, _ = planted(2000, 6, 16, seed=6)
    store = make_store(tmp_path, x)
    cfg = ClusterConfig(layers=[6], k=[6], micro=100, examples=1, device="torch-cpu")
    cluster_run(store, cfg)
    linkage = store.local_path(store.clusters_key(6)) / "linkage.npy"
    stamp = linkage.stat().st_mtime_ns
    cluster_run(store, cfg)
    assert linkage.stat().st_mtime_ns == stamp
    cluster_run(store, dataclasses.replace(cfg, device="cpu"))
    assert linkage.stat().st_mtime_ns != stamp


@pytest.mark.integration
def test_ray_requested_with_torch_device_assigns_in_process(tmp_path, ray_local, caplog):
    """Ray initialised + a torch device: the driver assigns on the device; same bits as without Ray."""
    x, _ = planted(2000, 6, 16, seed=7)
    store = make_store(tmp_path, x)
    src = ZarrSource(str(store.local_path("activations.zarr")), "layer_6")
    cents = train_kmeans_torch(x, 40, seed=0, iters=3, device=CPU)
    with caplog.at_level("INFO", logger="cluster_service.cluster"):
        a = resolve_backend("torch-cpu", use_ray=True).assign(src, cents, where="r", progress=False)
    assert "not as Ray tasks" in caplog.text
    b = TorchBackend(CPU).assign(src, cents, where="r", progress=False)
    assert np.array_equal(a.token_micro, b.token_micro) and np.array_equal(a.sums, b.sums)
