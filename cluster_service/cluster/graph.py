"""kNN-graph Ward: the bottom of the tree for more leaves than a dense M² matrix can hold.

Ward is reducible, so merging any reciprocal-nearest-neighbour (RNN) pair at any time yields the
same tree as the greedy algorithm. Each round here finds, for every cluster, its cheapest Ward
merge among its graph neighbours and merges all reciprocal pairs at once, vectorised over edges;
the graph contracts as clusters merge (a cluster's neighbours are the union of its members'). The
only approximation is a true Ward-nearest neighbour missing from the graph, which is rare while
clusters are small. Once at most ``dense_max`` clusters remain, dense weighted Ward (exact) builds
the rest, and all merges are sorted by height into one scipy linkage over the leaves.

The rounds are torch tensor operations on the backend's device (the CPU for FAISS, the GPU for the
torch backend): one implementation, O(N·k) memory in edges plus the float64 cluster sums, and at
5M tokens on a GPU the edge sorts run where the sums already are. Every sort is stable with the
same keys on every device, so a device gives the same tree for the same neighbours.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..logs import log_event
from .ward import _to_scipy, weighted_ward

if TYPE_CHECKING:
    from .backend import ClusterBackend
    from .params import ApproxParams

log = logging.getLogger("cluster_service.cluster")

#: Edges per chunk when computing merge costs (bounds the gathered E×D temporaries).
_EDGE_CHUNK = 1 << 16
#: Rows per chunk when turning float64 sums into the float32 centroids the kNN search reads.
_ROW_CHUNK = 1 << 16


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


def _costs(sums: torch.Tensor, size: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """2·ΔSSE of merging u and v for every edge (the squared fastcluster height), in float64 from the sums."""
    out = torch.empty(len(u), dtype=torch.float64, device=sums.device)
    for lo in range(0, len(u), _EDGE_CHUNK):
        a, b = u[lo:lo + _EDGE_CHUNK], v[lo:lo + _EDGE_CHUNK]
        na, nb = size[a], size[b]
        diff = sums[a] / na[:, None] - sums[b] / nb[:, None]
        out[lo:lo + len(a)] = 2.0 * na * nb / (na + nb) * (diff * diff).sum(dim=1)
    return out


def _costs32(means: torch.Tensor, size: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The same costs from float32 centroids: what the rounds rank edges by.

    The rounds read every edge's two centroids each round, and that gather is their cost (memory
    bound: 2·E·D values); float32 halves it against the float64 sums, and needs no division. Its
    rounding (~1e-7 of ‖c‖ per coordinate, on centred data) can only swap edges whose costs agree
    to ~1e-6; the heights of the merges made are then computed in float64 by ``_costs``.
    """
    out = torch.empty(len(u), dtype=torch.float64, device=means.device)
    for lo in range(0, len(u), _EDGE_CHUNK):
        a, b = u[lo:lo + _EDGE_CHUNK], v[lo:lo + _EDGE_CHUNK]
        na, nb = size[a], size[b]
        diff = means[a] - means[b]
        out[lo:lo + len(a)] = 2.0 * na * nb / (na + nb) * (diff * diff).sum(dim=1, dtype=torch.float64)
    return out


def _stable_order(*keys: torch.Tensor) -> torch.Tensor:
    """Indices sorting by keys[0], then keys[1], ... (like ``np.lexsort(keys[::-1])``)."""
    order = torch.arange(len(keys[0]), device=keys[0].device)
    for key in reversed(keys):
        order = order[torch.sort(key[order], stable=True).indices]
    return order


def graph_rounds(sums: torch.Tensor, size: torch.Tensor, u: torch.Tensor, v: torch.Tensor, target: int,
                 means: torch.Tensor | None = None):
    """RNN rounds on the graph over clusters (sums [n, D], sizes [n]) until ``target`` remain.

    Returns (indices of the remaining clusters, merges as (index a, index b, 2·ΔSSE) tensors); ``sums``
    and ``size`` are updated in place at the surviving index of each merge, and ``means`` (float32
    centroids, computed here when not given) with them. ``u < v`` must be sorted unique edges, as
    ``_undirected`` gives them. An edge's cost is computed once and again only after one of its ends
    merged: in a round about a third of the clusters merge, so most later edges keep theirs.
    """
    n = len(size)
    dev = sums.device
    if means is None:
        means = (sums / size[:, None]).float()
    parent = torch.arange(n, device=dev)
    active = n
    ma, mb, mh = [], [], []
    cost = _costs32(means, size, u, v)
    while active > target and len(u):
        node = torch.cat([u, v])
        other = torch.cat([v, u])
        both = torch.cat([cost, cost])
        order = _stable_order(node, both, other)
        sorted_node = node[order]
        first = order[torch.cat([torch.ones(1, dtype=torch.bool, device=dev), sorted_node[1:] != sorted_node[:-1]])]
        nn = torch.full((n,), -1, dtype=torch.int64, device=dev)
        nn[node[first]] = other[first]
        pair = (nn[u] == v) & (nn[v] == u)
        pu, pv, pc = u[pair], v[pair], cost[pair]
        if len(pu) > active - target:
            cheapest = torch.sort(pc, stable=True).indices[: active - target]
            pu, pv = pu[cheapest], pv[cheapest]
        ma.append(pu)
        mb.append(pv)
        mh.append(_costs(sums, size, pu, pv))  # the heights in float64
        sums[pu] += sums[pv]
        size[pu] += size[pv]
        means[pu] = (sums[pu] / size[pu, None]).float()
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
        new_cost[touched] = _costs32(means, size, u[touched], v[touched])
        cost = new_cost
    keep = torch.nonzero(parent == torch.arange(n, device=dev)).flatten()
    return keep, _cat(ma, torch.int64, dev), _cat(mb, torch.int64, dev), _cat(mh, torch.float64, dev)


def _cat(parts: list[torch.Tensor], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.cat(parts) if parts else torch.zeros(0, dtype=dtype, device=device)


def _means32(sums: torch.Tensor, size: torch.Tensor) -> np.ndarray:
    """The clusters' centroids as float32 on the host, converted in row chunks (no float64 copy)."""
    out = np.empty(tuple(sums.shape), dtype=np.float32)
    for lo in range(0, len(sums), _ROW_CHUNK):
        hi = lo + _ROW_CHUNK
        out[lo:hi] = (sums[lo:hi] / size[lo:hi, None]).float().cpu().numpy()
    return out


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
    host = torch.from_numpy(np.ascontiguousarray(centroids))
    sums = host.to(dev).to(torch.float64)  # float32 tokens travel as float32, widen on the device
    if sums.data_ptr() == host.data_ptr():
        sums = sums.clone()  # float64 input on the CPU: the rounds must not write into the caller's array
    # the mean in NumPy (pairwise, one thread): a torch CPU reduction over rows splits by thread count
    sums -= torch.from_numpy(np.asarray(centroids).mean(axis=0, dtype=np.float64)).to(dev)
    size = torch.as_tensor(np.asarray(sizes, dtype=np.float64), device=dev).clone()
    sums *= size[:, None]
    rep = torch.arange(n, device=dev)  # a leaf inside each current cluster, names it in the merge list
    ma, mb, mh = [], [], []
    while len(rep) > dense_max:
        t0 = time.perf_counter()
        means = _means32(sums, size)
        u, v = _edges(means, params.neighbors, backend, dev, params.knn_search_for(len(rep)))
        t1 = time.perf_counter()
        keep, a, b, h = graph_rounds(sums, size, u, v, max(dense_max, len(rep) // 2),
                                     torch.from_numpy(means).to(dev))  # on the CPU, the same memory
        log_event(log, "kNN graph level", clusters=len(rep), edges=len(u), merged=len(a),
                  knn_s=round(t1 - t0, 2), rounds_s=round(time.perf_counter() - t1, 2))
        if not len(a):
            break
        ma.append(rep[a])
        mb.append(rep[b])
        mh.append(h)
        rep, sums, size = rep[keep], sums[keep], size[keep]
    top = weighted_ward((sums / size[:, None]).cpu().numpy(), size.cpu().numpy())
    rep = rep.cpu().numpy()
    rep_of = np.concatenate([rep, np.zeros(len(rep) - 1, dtype=np.int64)])
    for i, a in enumerate(top[:, 0].astype(np.int64)):
        rep_of[len(rep) + i] = rep_of[a]
    return _to_scipy(np.concatenate([*(t.cpu().numpy() for t in ma), rep_of[top[:, 0].astype(np.int64)]]),
                     np.concatenate([*(t.cpu().numpy() for t in mb), rep_of[top[:, 1].astype(np.int64)]]),
                     np.concatenate([*(t.cpu().numpy() for t in mh), top[:, 2] ** 2]),
                     np.asarray(sizes, dtype=np.float64))
