"""Size-weighted Ward over micro-clusters: exact Ward started from a given partition.

Ward's merge cost between clusters A and B is ΔSSE = |A||B|/(|A|+|B|)·‖c_A − c_B‖², and the
Lance–Williams update for it is exact for any starting partition, so seeding the recurrence with
micro-cluster centroids and sizes gives the same tree exact Ward would build above that partition.
Heights follow fastcluster/scipy: √(2·ΔSSE), i.e. the Euclidean distance for two single points.

The nearest-neighbour chain walks the dense matrix of squared heights: O(M²) time and memory,
every step a vectorised O(M) row operation, no Python loop over pairs.
"""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_limits

from ..errors import UserError

#: Rows per block when filling the initial distance matrix (bounds the temporaries).
_BLOCK = 1024


def _initial_costs(centroids: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Matrix of 2·ΔSSE between every pair (the squared fastcluster height), +inf on the diagonal."""
    x = centroids.astype(np.float64)
    x = x - x.mean(axis=0)  # centring keeps ‖a‖²+‖b‖²−2a·b accurate for nearby points
    sq = np.einsum("ij,ij->i", x, x)
    n = sizes.astype(np.float64)
    m = len(n)
    cost = np.empty((m, m), dtype=np.float64)
    # one BLAS thread: OpenBLAS splits a product differently for another thread count and the last
    # bits of the heights move, so the tree a job's driver makes (Ray gives it one thread) would differ
    # from the same run's on a laptop (every core); one thread costs ~10 s at 8192 leaves here
    with threadpool_limits(1, user_api="blas"):
        for lo in range(0, m, _BLOCK):
            hi = min(lo + _BLOCK, m)
            block = cost[lo:hi]
            np.matmul(x[lo:hi], x.T, out=block)
            block *= -2.0
            block += sq[lo:hi, None]
            block += sq[None, :]
            np.maximum(block, 0.0, out=block)
            block *= 2.0 * n[lo:hi, None] * n[None, :] / (n[lo:hi, None] + n[None, :])
    np.fill_diagonal(cost, np.inf)
    return cost


def weighted_ward(centroids: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Ward linkage over clusters given by centroids [M, D] and sizes [M].

    Returns a scipy-format linkage [M−1, 4]: (child a, child b, height, size), children numbered
    like scipy (leaves 0..M−1, the i-th merge makes cluster M+i), merges sorted by height.
    """
    m = len(sizes)
    if m < 1 or centroids.shape[0] != m:
        raise UserError(f"weighted Ward: need ≥ 1 cluster with one centroid each (got {m} sizes, "
                        f"{centroids.shape[0]} centroids)")
    if np.any(np.asarray(sizes) <= 0):
        raise UserError("weighted Ward: every micro-cluster must have a positive size")
    if m == 1:
        return np.zeros((0, 4), dtype=np.float64)
    cost = _initial_costs(centroids, sizes)
    size = np.asarray(sizes, dtype=np.float64).copy()
    active = np.ones(m, dtype=bool)
    merges_a = np.empty(m - 1, dtype=np.int64)
    merges_b = np.empty(m - 1, dtype=np.int64)
    heights2 = np.empty(m - 1, dtype=np.float64)
    chain: list[int] = []
    for step in range(m - 1):
        if not chain:
            chain.append(int(np.argmax(active)))
        while True:
            a = chain[-1]
            row = cost[a]
            b = int(np.argmin(row))
            if len(chain) > 1:
                prev = chain[-2]
                if row[prev] <= row[b]:
                    b = prev
                if b == prev:
                    break
            chain.append(b)
        chain.pop()
        chain.pop()
        lo, hi = (a, b) if a < b else (b, a)
        d_ab = cost[lo, hi]
        merges_a[step], merges_b[step], heights2[step] = lo, hi, d_ab
        na, nb = size[lo], size[hi]
        # Lance–Williams for Ward on squared heights; inactive entries are +inf and stay so
        new = ((na + size) * cost[lo] + (nb + size) * cost[hi] - size * d_ab) / (na + nb + size)
        new[lo] = np.inf
        new[hi] = np.inf
        cost[lo, :] = new
        cost[:, lo] = new
        cost[hi, :] = np.inf
        cost[:, hi] = np.inf
        size[lo] = na + nb
        active[hi] = False
    return _to_scipy(merges_a, merges_b, heights2, np.asarray(sizes, dtype=np.float64))


def _to_scipy(a: np.ndarray, b: np.ndarray, heights2: np.ndarray, leaf_sizes: np.ndarray) -> np.ndarray:
    """Sort chain-order merges by height (stable) and renumber clusters the scipy way.

    ``a``/``b`` name each merged cluster by a leaf inside it. Where they name each cluster by its
    representative (the leaf the cluster keeps through its merges, as the kNN-graph rounds and the
    dense top do), the cluster a leaf is in at merge i is the node made by that leaf's previous merge:
    one stable sort of all (leaf, merge) events, vectorised, where a union-find over 5M merges was a
    20 s Python loop. Any other naming (or a height inversion from rounding that reuses a node) fails
    the validity check and takes the union-find loop, which gives the same linkage in every case.
    """
    order = np.argsort(heights2, kind="stable")
    z = _by_representatives(a[order], b[order], heights2[order], np.asarray(leaf_sizes, dtype=np.float64))
    return _union_find(a, b, heights2, leaf_sizes, order) if z is None else z


def _by_representatives(a: np.ndarray, b: np.ndarray, h2: np.ndarray, leaf_sizes: np.ndarray) -> np.ndarray | None:
    m = len(a) + 1
    steps = m - 1
    leaf = np.concatenate([a, b]).astype(np.int64)
    when = np.concatenate([np.arange(steps), np.arange(steps)])
    ev = np.lexsort((when, leaf))  # by leaf, then merge
    node = leaf.copy()
    same = np.zeros(len(ev), dtype=bool)
    same[1:] = leaf[ev[1:]] == leaf[ev[:-1]]
    prev = np.empty(len(ev), dtype=np.int64)
    prev[1:] = when[ev[:-1]]
    node[ev[same]] = m + prev[same]
    ca, cb = node[:steps], node[steps:]
    lo, hi = np.minimum(ca, cb), np.maximum(ca, cb)
    children = np.concatenate([lo, hi])
    if (hi >= m + np.arange(steps)).any() or (np.bincount(children, minlength=2 * m - 1) > 1).any():
        return None
    z = np.empty((steps, 4), dtype=np.float64)
    z[:, 0], z[:, 1], z[:, 2] = lo, hi, np.sqrt(h2)
    weight = leaf_sizes.tolist() + [0.0] * steps  # a list: a Python loop over it is ~0.2 µs a merge
    for i, (p, q) in enumerate(zip(lo.tolist(), hi.tolist(), strict=True)):
        weight[m + i] = weight[p] + weight[q]
    z[:, 3] = weight[m:]
    return z


def _union_find(a: np.ndarray, b: np.ndarray, heights2: np.ndarray, leaf_sizes: np.ndarray,
                order: np.ndarray) -> np.ndarray:
    m = len(a) + 1
    parent = np.arange(2 * m - 1)
    weight = np.concatenate([leaf_sizes, np.zeros(m - 1)])

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    z = np.empty((m - 1, 4), dtype=np.float64)
    for i, s in enumerate(order):
        ra, rb = find(int(a[s])), find(int(b[s]))
        new = m + i
        parent[ra] = parent[rb] = new
        weight[new] = weight[ra] + weight[rb]
        z[i] = (min(ra, rb), max(ra, rb), np.sqrt(heights2[s]), weight[new])
    return z


def finish_with_dense(rep: np.ndarray, centroids: np.ndarray, sizes: np.ndarray, a: np.ndarray, b: np.ndarray,
                      heights2: np.ndarray, leaf_sizes: np.ndarray) -> np.ndarray:
    """The scipy linkage over all leaves, from the merges made so far and dense Ward over what remains.

    ``a``/``b``/``heights2``: the merges made (each cluster named by its representative leaf, the
    survivor keeping its own); ``rep``/``centroids``/``sizes``: the clusters left, each named by its
    representative. Dense weighted Ward is exact above any partition, so it builds the rest of the tree.
    """
    top = weighted_ward(centroids, sizes)
    rep_of = np.concatenate([rep, np.zeros(len(rep) - 1, dtype=np.int64)])
    for i, first in enumerate(top[:, 0].astype(np.int64)):
        rep_of[len(rep) + i] = rep_of[first]
    return _to_scipy(np.concatenate([a, rep_of[top[:, 0].astype(np.int64)]]),
                     np.concatenate([b, rep_of[top[:, 1].astype(np.int64)]]),
                     np.concatenate([heights2, top[:, 2] ** 2]), np.asarray(leaf_sizes, dtype=np.float64))
