"""Micro-clusters: FAISS k-means on a seeded sample, then every token assigned to its nearest
micro-centroid, streaming the layer shard by shard.

Each shard's result (token → micro, per-micro sums, counts, Σ‖x‖²) depends only on that shard, and the
driver adds shard results in shard order, so one process and many Ray tasks give identical bits.
Assignment runs in fixed-size row blocks (the last one zero-padded) aligned to shard starts, so every
row goes through a matrix product of the same shape at the same position whichever path reads it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .source import Source, check_finite


def sample_indices(n: int, size: int, seed: int) -> np.ndarray:
    """Sorted seeded sample of row indices (sorted: read shard by shard)."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=size, replace=False)) if size < n else np.arange(n)


def train_kmeans(sample: np.ndarray, m: int, seed: int, iters: int) -> np.ndarray:
    """FAISS k-means centroids [m, d] float32 (FAISS's own subsampling off: we sampled already)."""
    import faiss  # here, not at import: the torch path runs where FAISS is not installed

    x = np.ascontiguousarray(sample, dtype=np.float32)
    km = faiss.Kmeans(x.shape[1], m, niter=iters, seed=seed, verbose=False,
                      max_points_per_centroid=max(1, math.ceil(len(x) / m)) + 1,
                      min_points_per_centroid=1)
    km.train(x)
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


def block_rows(shard: int, cap: int = 4096) -> int:
    """Largest divisor of the shard size ≤ cap: blocks then tile every shard exactly."""
    for b in range(min(shard, cap), 0, -1):
        if shard % b == 0:
            return b
    return 1


def nearest(x: np.ndarray, centroids: np.ndarray, cnorm: np.ndarray, block: int) -> np.ndarray:
    """Index of the nearest centroid for every row, in zero-padded blocks of ``block`` rows."""
    out = np.empty(len(x), dtype=np.int32)
    buf = np.zeros((block, x.shape[1]), dtype=np.float32)
    for lo in range(0, len(x), block):
        hi = min(lo + block, len(x))
        buf[: hi - lo] = x[lo:hi]
        buf[hi - lo:] = 0.0
        scores = buf @ centroids.T
        scores *= -2.0
        scores += cnorm
        out[lo:hi] = np.argmin(scores[: hi - lo], axis=1)
    return out


@dataclass
class ShardStats:
    """What one shard contributes: the micro-cluster of each of its rows and per-micro sufficient statistics."""

    token_micro: np.ndarray  # int32 [rows]: nearest centroid of each row
    sums: np.ndarray  # float64 [M, D]
    counts: np.ndarray  # int64 [M]
    sq_norm: float  # Σ‖x‖² over the shard's rows (for SSE)


def shard_stats(x: np.ndarray, token_micro: np.ndarray, m: int) -> ShardStats:
    x64 = x.astype(np.float64)
    rows = np.arange(len(token_micro))
    onehot = sp.csr_matrix((np.ones(len(rows)), (token_micro, rows)), shape=(m, len(rows)))
    sums = np.asarray(onehot @ x64)
    counts = np.bincount(token_micro, minlength=m).astype(np.int64)
    return ShardStats(token_micro, sums, counts, float(np.einsum("ij,ij->", x64, x64)))


def assign_shard(source: Source, lo: int, hi: int, centroids: np.ndarray, where: str) -> ShardStats:
    """Assign rows [lo, hi) of ``source``; memory is one shard plus one block of scores."""
    x = source.read(lo, hi)
    check_finite(x, lo, where)
    cnorm = np.einsum("ij,ij->i", centroids, centroids)
    token_micro = nearest(x, centroids, cnorm, block_rows(source.shard))
    return shard_stats(x, token_micro, len(centroids))


class Accumulator:
    """Adds shard results strictly in shard order (deterministic float sums)."""

    def __init__(self, n: int, m: int, d: int):
        self.token_micro = np.empty(n, dtype=np.int32)
        self.sums = np.zeros((m, d), dtype=np.float64)
        self.counts = np.zeros(m, dtype=np.int64)
        self.sq_norm = 0.0

    def add(self, lo: int, stats: ShardStats) -> None:
        self.token_micro[lo: lo + len(stats.token_micro)] = stats.token_micro
        self.sums += stats.sums
        self.counts += stats.counts
        self.sq_norm += stats.sq_norm


@dataclass
class MicroPartition:
    """Token → micro map with micro sizes and centroids (empty micro-clusters dropped)."""

    token_micro: np.ndarray  # int32 [N]
    centroids: np.ndarray  # float64 [M, D]: mean of the assigned tokens (the tokens, as read, if M = N)
    sizes: np.ndarray  # int64 [M]
    sums: np.ndarray  # float64 [M, D]
    sq_norm: float  # Σ‖x‖² over all tokens


def compact(acc: Accumulator) -> MicroPartition:
    """Drop micro-clusters no token chose and renumber the rest in order."""
    keep = acc.counts > 0
    remap = np.cumsum(keep, dtype=np.int64) - 1
    sums = acc.sums[keep]
    sizes = acc.counts[keep]
    return MicroPartition(remap[acc.token_micro].astype(np.int32), sums / sizes[:, None], sizes, sums,
                          acc.sq_norm)


def identity_partition(x: np.ndarray) -> MicroPartition:
    """Every token its own micro-cluster (exact Ward): duplicates stay separate leaves.

    The tokens themselves are centroids and sums (no float64 copy: at 1M × 384 that copy alone is
    3 GB, and the tree builds its own float64 sums); Σ‖x‖² is accumulated in float64 in blocks.
    """
    sq = 0.0
    for lo in range(0, len(x), 1 << 16):
        b = x[lo:lo + (1 << 16)].astype(np.float64)
        sq += float(np.einsum("ij,ij->", b, b))
    return MicroPartition(np.arange(len(x), dtype=np.int32), x, np.ones(len(x), dtype=np.int64), x, sq)
