"""kNN-graph Ward: the bottom of the tree for more leaves than a dense M² matrix can hold.

Ward is reducible, so merging any reciprocal-nearest-neighbour (RNN) pair at any time yields the
same tree as the greedy algorithm. Each round here finds, for every cluster, its cheapest Ward
merge among its graph neighbours and merges all reciprocal pairs at once, vectorised over edges;
the graph contracts as clusters merge (a cluster's neighbours are the union of its members'). The
only approximation is a true Ward-nearest neighbour missing from the graph, which is rare while
clusters are small. Once at most ``dense_max`` clusters remain, dense weighted Ward (exact) builds
the rest, and all merges are sorted by height into one scipy linkage over the leaves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .ward import _to_scipy, weighted_ward

if TYPE_CHECKING:
    from .backend import ClusterBackend

#: Edges per chunk when computing merge costs (bounds the gathered E×D temporaries).
_EDGE_CHUNK = 1 << 15


def knn_edges(points: np.ndarray, neighbors: int, backend: ClusterBackend) -> tuple[np.ndarray, np.ndarray]:
    """Undirected kNN edges (u < v, unique) by exact Euclidean search on ``backend``."""
    x = np.ascontiguousarray(points, dtype=np.float32)
    nbr = backend.knn(x, neighbors)
    src = np.repeat(np.arange(len(x)), nbr.shape[1])
    dst = nbr.ravel()
    ok = (dst >= 0) & (dst != src)
    return _undirected(src[ok], dst[ok], len(x))


def _undirected(u: np.ndarray, v: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = np.minimum(u, v), np.maximum(u, v)
    keep = lo != hi
    key = np.unique(lo[keep].astype(np.int64) * n + hi[keep])
    return key // n, key % n


def _costs(sums: np.ndarray, size: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """2·ΔSSE of merging u and v for every edge (the squared fastcluster height)."""
    out = np.empty(len(u))
    for lo in range(0, len(u), _EDGE_CHUNK):
        a, b = u[lo:lo + _EDGE_CHUNK], v[lo:lo + _EDGE_CHUNK]
        na, nb = size[a], size[b]
        diff = sums[a] / na[:, None] - sums[b] / nb[:, None]
        out[lo:lo + len(a)] = 2.0 * na * nb / (na + nb) * np.einsum("ij,ij->i", diff, diff)
    return out


def graph_rounds(sums: np.ndarray, size: np.ndarray, u: np.ndarray, v: np.ndarray, target: int):
    """RNN rounds on the graph over clusters (sums [n, D], sizes [n]) until ``target`` remain.

    Returns (indices of the remaining clusters, merges as (index a, index b, 2·ΔSSE) arrays); ``sums``
    and ``size`` are updated in place at the surviving index of each merge.
    """
    n = len(size)
    parent = np.arange(n)
    active = n
    ma, mb, mh = [], [], []
    while active > target and len(u):
        cost = _costs(sums, size, u, v)
        node = np.concatenate([u, v])
        other = np.concatenate([v, u])
        both = np.concatenate([cost, cost])
        order = np.lexsort((other, both, node))
        first = order[np.r_[True, node[order][1:] != node[order][:-1]]]
        nn = np.full(n, -1)
        nn[node[first]] = other[first]
        pair = (nn[u] == v) & (nn[v] == u)
        pu, pv, pc = u[pair], v[pair], cost[pair]
        if len(pu) > active - target:
            cheapest = np.argsort(pc, kind="stable")[: active - target]
            pu, pv, pc = pu[cheapest], pv[cheapest], pc[cheapest]
        sums[pu] += sums[pv]
        size[pu] += size[pv]
        parent[pv] = pu
        ma.append(pu)
        mb.append(pv)
        mh.append(pc)
        active -= len(pu)
        u, v = _undirected(parent[u], parent[v], n)
    keep = np.flatnonzero(parent == np.arange(n))
    return keep, _cat(ma, np.int64), _cat(mb, np.int64), _cat(mh, np.float64)


def _cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype)


def hybrid_ward(centroids: np.ndarray, sizes: np.ndarray, *, dense_max: int, neighbors: int,
                backend: ClusterBackend) -> np.ndarray:
    """Scipy linkage over all leaves: kNN-graph Ward down to ``dense_max`` clusters, dense Ward above.

    The kNN graph is rebuilt over the current cluster centroids each time the number of clusters
    halves, so merged clusters see their new neighbourhood, not only their members' old one.
    ``neighbors`` per cluster in each kNN graph, searched on ``backend``.
    """
    n = len(sizes)
    if n <= dense_max:
        return weighted_ward(centroids, sizes)
    x = centroids.astype(np.float64)
    size = np.asarray(sizes, dtype=np.float64).copy()
    sums = (x - x.mean(axis=0)) * size[:, None]
    rep = np.arange(n)  # a leaf inside each current cluster, names it in the merge list
    ma, mb, mh = [], [], []
    while len(rep) > dense_max:
        u, v = knn_edges(sums / size[:, None], neighbors, backend)
        keep, a, b, h = graph_rounds(sums, size, u, v, max(dense_max, len(rep) // 2))
        if not len(a):
            break
        ma.append(rep[a])
        mb.append(rep[b])
        mh.append(h)
        rep, sums, size = rep[keep], sums[keep], size[keep]
    top = weighted_ward(sums / size[:, None], size)
    rep_of = np.concatenate([rep, np.zeros(len(rep) - 1, dtype=np.int64)])
    for i, a in enumerate(top[:, 0].astype(np.int64)):
        rep_of[len(rep) + i] = rep_of[a]
    ma.append(rep_of[top[:, 0].astype(np.int64)])
    mb.append(rep_of[top[:, 1].astype(np.int64)])
    mh.append(top[:, 2] ** 2)
    return _to_scipy(np.concatenate(ma), np.concatenate(mb), np.concatenate(mh),
                     np.asarray(sizes, dtype=np.float64))
