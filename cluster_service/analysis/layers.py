"""Concepts across layers: the token overlap of every concept pair of two layers (a sparse K×K
contingency) and what becomes of each concept: it persists, merges into a larger concept, splits, or
scatters. Pure array code over two assignment vectors of the same tokens."""

from __future__ import annotations

import numpy as np

PERSISTS, MERGES, SPLITS, SCATTERS = "persists", "merges", "splits", "scatters"


def contingency(a: np.ndarray, b: np.ndarray, k_b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The non-zero cells of the contingency of two assignments: (concept in a, concept in b, tokens)."""
    codes, counts = np.unique(a.astype(np.int64) * k_b + b.astype(np.int64), return_counts=True)
    return (codes // k_b).astype(np.int32), (codes % k_b).astype(np.int32), counts.astype(np.int64)


def matches(a: np.ndarray, b: np.ndarray, k_a: int, k_b: int, persist_share: float = 0.5,
            split_share: float = 0.2) -> dict[str, np.ndarray]:
    """Per concept of ``a``: its best match in ``b`` (most shared tokens), the share of it the match holds
    (``forward``), the share of the match it makes up (``backward``), their Jaccard, how many ``b`` concepts
    take at least ``split_share`` of it, and its fate:

    - persists: forward > persist_share and backward > persist_share
    - merges: forward > persist_share, but it is at most persist_share of its match
    - splits: no match holds more than persist_share of it, but two or more hold split_share each
    - scatters: anything else
    """
    ia, ib, n = contingency(a, b, k_b)
    size_a = np.bincount(a, minlength=k_a)
    size_b = np.bincount(b, minlength=k_b)
    order = np.lexsort((-n, ia))  # per concept of a, the largest cell first
    first = np.r_[True, ia[order][1:] != ia[order][:-1]]
    best_cells = order[first]
    best = np.full(k_a, -1, dtype=np.int32)
    shared = np.zeros(k_a, dtype=np.int64)
    best[ia[best_cells]], shared[ia[best_cells]] = ib[best_cells], n[best_cells]
    with np.errstate(invalid="ignore", divide="ignore"):
        forward = np.where(size_a > 0, shared / np.maximum(size_a, 1), np.nan)
        back = np.where(best >= 0, shared / np.maximum(size_b[np.maximum(best, 0)], 1), np.nan)
        jaccard = np.where(best >= 0, shared / (size_a + size_b[np.maximum(best, 0)] - shared), np.nan)
    parts = np.bincount(ia[n >= split_share * size_a[ia]], minlength=k_a)
    fate = np.full(k_a, SCATTERS, dtype=object)
    fate[(forward <= persist_share) & (parts >= 2)] = SPLITS
    fate[(forward > persist_share) & (back <= persist_share)] = MERGES
    fate[(forward > persist_share) & (back > persist_share)] = PERSISTS
    return {"best_match": best, "shared": shared, "forward": forward, "backward": back, "jaccard": jaccard,
            "parts": parts.astype(np.int32), "fate": fate.astype(str), "size": size_a.astype(np.int64)}
