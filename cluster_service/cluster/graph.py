"""kNN-graph Ward: the bottom of the tree for more leaves than a dense M² matrix can hold.

Ward is reducible, so merging any reciprocal-nearest-neighbour (RNN) pair at any time yields the
same tree as the greedy algorithm. Each round here finds, for every cluster, its cheapest Ward
merge among its graph neighbours and merges all reciprocal pairs at once, vectorised over edges;
the graph contracts as clusters merge (a cluster's neighbours are the union of its members'). The
only approximation is a true Ward-nearest neighbour missing from the graph, which is rare while
clusters are small. Once at most ``dense_max`` clusters remain, dense weighted Ward (exact) builds
the rest, and all merges are sorted by height into one scipy linkage over the leaves.

The rounds are torch tensor operations on the backend's device (the CPU for FAISS, the GPU for the
torch backend): one implementation, O(N·k) memory in edges plus the cluster centroids, and at 5M
tokens on a GPU the edge sorts run where the centroids already are. Every sort is stable with the
same keys on every device, so a device gives the same tree for the same neighbours.

The centroids keep the input's precision: float32 for tokens (a merge's new centroid is computed
in float64 and rounded once, ~1e-7 relative, and the costs are summed in float64), float64 for
float64 input. Float64 running sums were exact to the last bit but cost 3 GB at 1M × 384 and 30 GB
at 5M × 768, more than the tokens themselves.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..logs import log_event
from .ward import finish_with_dense, weighted_ward

if TYPE_CHECKING:
    from .backend import ClusterBackend
    from .params import ApproxParams

log = logging.getLogger("cluster_service.cluster")

#: Edges per chunk when computing merge costs (bounds the gathered E×D temporaries).
_EDGE_CHUNK = 1 << 16
#: On the CPU: [4096, D] temporaries stay in cache (1.2 s against 10.2 s per 2M edges × 384 here).
_EDGE_CHUNK_CPU = 1 << 12

def knn_edges(points: np.ndarray, neighbors: int, backend: ClusterBackend,
              search: dict[str, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Undirected kNN edges (u < v, unique) by the backend's neighbour search."""
    u, v = _edges(points, neighbors, backend, torch.device("cpu"), search)
    return u.numpy(), v.numpy()


def _edges(points: np.ndarray, neighbors: int, backend: ClusterBackend, device: torch.device,
           search: dict[str, int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    nbr = torch.from_numpy(np.ascontiguousarray(backend.knn(points, neighbors, search))).to(device)
    n = len(points)
    src = torch.arange(n, device=device).repeat_interleave(nbr.shape[1])
    dst = nbr.reshape(-1)
    ok = (dst >= 0) & (dst != src)
    return _undirected(src[ok], dst[ok], n)


def _undirected(u: torch.Tensor, v: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    lo, hi = torch.minimum(u, v), torch.maximum(u, v)
    keep = lo != hi
    key = torch.unique(lo[keep] * n + hi[keep], sorted=True)
    return key // n, key % n


def _costs(means: torch.Tensor, size: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """2·ΔSSE of merging u and v for every edge (the squared fastcluster height), summed in float64.

    The rounds read every edge's two centroids each round, and that gather is their cost, so it
    reads them in their own precision: float32 centroids (~1e-7 of ‖c‖ per coordinate, on centred
    data) can only swap edges whose costs agree to ~1e-6. On the CPU the edges go in chunks whose
    temporaries stay in cache, gathered by ``index_select`` and squared in place: 8.5× faster than
    65,536-edge chunks of ``means[a] - means[b]`` (0.14 of the CPU rounds' time at 1M tokens, from 0.85).
    """
    out = torch.empty(len(u), dtype=torch.float64, device=means.device)
    chunk = _EDGE_CHUNK if means.device.type != "cpu" else _EDGE_CHUNK_CPU
    for lo in range(0, len(u), chunk):
        a, b = u[lo:lo + chunk], v[lo:lo + chunk]
        na, nb = size[a], size[b]
        diff = torch.index_select(means, 0, a)
        diff -= torch.index_select(means, 0, b)
        out[lo:lo + len(a)] = 2.0 * na * nb / (na + nb) * diff.square_().sum(dim=1, dtype=torch.float64)
    return out


def _merge_means(means: torch.Tensor, size: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """The centroid of each merge a ← a ∪ b, in place at a, in float64 rounded once; chunked so the
    temporaries stay small (a round can merge 170K pairs at 1M tokens: 0.5 GB per float64 [pairs, D])."""
    for lo in range(0, len(a), _EDGE_CHUNK):
        i, j = a[lo:lo + _EDGE_CHUNK], b[lo:lo + _EDGE_CHUNK]
        na, nb = size[i, None], size[j, None]
        means[i] = ((na * means[i] + nb * means[j]) / (na + nb)).to(means.dtype)


def _nearest(n: int, u: torch.Tensor, v: torch.Tensor, cost: torch.Tensor) -> torch.Tensor:
    """Each node's cheapest edge's other end (ties: the lower index), −1 for a node without edges.

    Two order-free scatter minima over the edges, from both ends: the cost, then the lowest other end
    among the edges at that cost. A stable sort of the 2·E (node, cost, other) triples gave the same
    answer at ~20× the time on the CPU (3 sorts of 24M entries a round at 1M tokens).
    """
    best = torch.full((n,), torch.inf, dtype=cost.dtype, device=cost.device)
    best.scatter_reduce_(0, u, cost, "amin")
    best.scatter_reduce_(0, v, cost, "amin")
    nn = torch.full((n,), n, dtype=torch.int64, device=cost.device)
    at_u, at_v = cost == best[u], cost == best[v]
    nn.scatter_reduce_(0, u[at_u], v[at_u], "amin")
    nn.scatter_reduce_(0, v[at_v], u[at_v], "amin")
    nn[nn == n] = -1
    return nn


def graph_rounds(means: torch.Tensor, size: torch.Tensor, u: torch.Tensor, v: torch.Tensor, target: int):
    """RNN rounds on the graph over clusters (centroids [n, D], sizes [n]) until ``target`` remain.

    Returns (indices of the remaining clusters, merges as (index a, index b, 2·ΔSSE) tensors);
    ``means`` and ``size`` are updated in place at the surviving index of each merge. ``u < v`` must
    be sorted unique edges, as ``_undirected`` gives them. An edge's cost is computed once and again
    only after one of its ends merged: in a round about a third of the clusters merge, so most later
    edges keep theirs.
    """
    n = len(size)
    dev = means.device
    parent = torch.arange(n, device=dev)
    active = n
    ma, mb, mh = [], [], []
    cost = _costs(means, size, u, v)
    while active > target and len(u):
        nn = _nearest(n, u, v, cost)
        pair = (nn[u] == v) & (nn[v] == u)
        pu, pv, pc = u[pair], v[pair], cost[pair]
        if len(pu) > active - target:
            cheapest = torch.sort(pc, stable=True).indices[: active - target]
            pu, pv, pc = pu[cheapest], pv[cheapest], pc[cheapest]
        ma.append(pu)
        mb.append(pv)
        mh.append(pc)
        _merge_means(means, size, pu, pv)
        size[pu] += size[pv]
        parent[pv] = pu
        active -= len(pu)
        merged = torch.zeros(n, dtype=torch.bool, device=dev)
        merged[pu] = True
        old_key = u * n + v
        u, v = _undirected(parent[u], parent[v], n)
        touched = merged[u] | merged[v]
        kept = ~touched
        new_cost = torch.empty(len(u), dtype=torch.float64, device=dev)
        new_cost[kept] = cost[torch.searchsorted(old_key, u[kept] * n + v[kept])]
        new_cost[touched] = _costs(means, size, u[touched], v[touched])
        cost = new_cost
    keep = torch.nonzero(parent == torch.arange(n, device=dev)).flatten()
    return keep, _cat(ma, torch.int64, dev), _cat(mb, torch.int64, dev), _cat(mh, torch.float64, dev)


def _cat(parts: list[torch.Tensor], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.cat(parts) if parts else torch.zeros(0, dtype=dtype, device=device)


def hybrid_ward(centroids: np.ndarray, sizes: np.ndarray, params: ApproxParams, *,
                backend: ClusterBackend) -> np.ndarray:
    """Scipy linkage over all leaves: kNN-graph Ward down to ``dense_max`` clusters, dense Ward above.

    The kNN graph is rebuilt over the current cluster centroids each time the number of clusters
    halves, so merged clusters see their new neighbourhood, not only their members' old one.
    ``params.neighbors`` per cluster in each kNN graph, searched on ``backend`` (cell-probed above
    ``params.knn_exact_max`` clusters on the CPU); the rounds run on the backend's ``device``.
    Centroids are centred first (the kNN search's ‖x‖²+‖y‖²−2·x·y and the merge costs keep their
    precision near the origin; Ward's costs do not change under a shift).
    """
    n = len(sizes)
    dense_max = params.dense_max
    if n <= dense_max:
        return weighted_ward(centroids, sizes)
    dev = backend.device
    host = np.asarray(centroids)
    dtype = torch.float64 if host.dtype == np.float64 else torch.float32
    means = torch.from_numpy(np.ascontiguousarray(host)).to(dev).to(dtype)
    if means.device.type == "cpu" and np.shares_memory(means.numpy(), host):
        means = means.clone()  # the rounds write into it, never into the caller's array
    # the mean in NumPy (pairwise, one thread): a torch CPU reduction over rows splits by thread count
    means -= torch.from_numpy(host.mean(axis=0, dtype=np.float64)).to(dev).to(dtype)
    size = torch.as_tensor(np.asarray(sizes, dtype=np.float64), device=dev).clone()
    rep = torch.arange(n, device=dev)  # a leaf inside each current cluster, names it in the merge list
    ma, mb, mh = [], [], []
    while len(rep) > dense_max:
        t0 = time.perf_counter()
        u, v = _edges(_search_input(means), params.neighbors, backend, dev, params.knn_search_for(len(rep)))
        t1 = time.perf_counter()
        keep, a, b, h = graph_rounds(means, size, u, v, max(dense_max, len(rep) // 2))
        log_event(log, "kNN graph level", clusters=len(rep), edges=len(u), merged=len(a),
                  knn_s=round(t1 - t0, 2), rounds_s=round(time.perf_counter() - t1, 2))
        if not len(a):
            break
        ma.append(rep[a])
        mb.append(rep[b])
        mh.append(h)
        rep, means, size = rep[keep], means[keep], size[keep]
    return finish_with_dense(rep.cpu().numpy(), means.cpu().numpy().astype(np.float64), size.cpu().numpy(),
                             host_array(ma, np.int64), host_array(mb, np.int64), host_array(mh, np.float64),
                             np.asarray(sizes, dtype=np.float64))


def _search_input(means: torch.Tensor) -> np.ndarray:
    """The centroids as the float32 host array the kNN search reads (no copy for float32 on the CPU)."""
    return np.ascontiguousarray(means.cpu().numpy(), dtype=np.float32)


def host_array(parts: list[torch.Tensor], dtype: type) -> np.ndarray:
    """One host array of a list of per-round tensors (empty when there were none)."""
    return np.concatenate([t.cpu().numpy() for t in parts]).astype(dtype) if parts else np.zeros(0, dtype=dtype)
