"""Cut a linkage at K clusters, several K from one tree, with stable concept numbering.

Concept ids are ordered by total weight (tokens) descending, ties by smallest leaf index, so ids
do not depend on merge bookkeeping and the largest concept is 0.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ..errors import UserError


def check_k(ks: Iterable[int], n_leaves_or_points: int, what: str = "points") -> list[int]:
    """Validate requested K values against the number of points; return them sorted, unique."""
    ks = sorted(set(int(k) for k in ks))
    if not ks:
        raise UserError("--k: give at least one number of clusters, e.g. --k 50")
    for k in ks:
        if k < 1:
            raise UserError(f"--k {k}: the number of clusters must be at least 1")
        if k > n_leaves_or_points:
            raise UserError(f"--k {k}: more clusters than {what} ({n_leaves_or_points})")
    return ks


def cut(linkage: np.ndarray, ks: Iterable[int], weights: np.ndarray | None = None) -> dict[int, np.ndarray]:
    """Concept id of every leaf [M] (int32) for each K, from applying the first M−K merges of ``linkage``."""
    m = linkage.shape[0] + 1
    ks = check_k(ks, m, "leaves in the tree")
    w = np.ones(m) if weights is None else np.asarray(weights, dtype=np.float64)
    parent = np.arange(2 * m - 1)
    out: dict[int, np.ndarray] = {}
    done = 0
    for k in sorted(ks, reverse=True):
        step = np.arange(done, m - k)
        parent[linkage[step, 0].astype(np.int64)] = m + step
        parent[linkage[step, 1].astype(np.int64)] = m + step
        done = m - k
        out[k] = _relabel(_roots(parent, m), w)
    return out


def _roots(parent: np.ndarray, m: int) -> np.ndarray:
    """Root of every leaf, by pointer jumping (vectorised)."""
    p = parent.copy()
    while True:
        nxt = p[p]
        if np.array_equal(nxt, p):
            break
        p = nxt
    return p[:m]


def _relabel(roots: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Dense ids 0..K−1 by descending weight, ties by the smallest leaf index."""
    uniq, first, inverse = np.unique(roots, return_index=True, return_inverse=True)
    total = np.bincount(inverse, weights=weights, minlength=len(uniq))
    order = np.lexsort((first, -total))
    rank = np.empty(len(uniq), dtype=np.int32)
    rank[order] = np.arange(len(uniq), dtype=np.int32)
    return rank[inverse]
