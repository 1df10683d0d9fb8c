"""The scalable approximate Ward. Leaves: the tokens themselves up to ``GRAPH_MAX`` tokens, else
M micro-clusters (seeded sample → FAISS k-means → every token assigned, shard by shard). Tree:
size-weighted Ward over the leaves, kNN-graph Ward at the bottom while there are more than
``dense_max`` clusters, dense (exact) Ward above. Then cut at each K.

These step functions are shared by the stage (which persists each step to resume) and by the
quality report (which runs them on an in-memory sample).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .cut import cut
from .graph import hybrid_ward
from .micro import (
    MicroPartition,
    compact,
    default_micro,
    default_sample,
    identity_partition,
    sample_indices,
    train_kmeans,
)
from .parallel import assign_all
from .source import ArraySource, Source, read_rows

if TYPE_CHECKING:
    import torch


def micro_centroids(source: Source, m: int, *, seed: int, iters: int, per_micro: int,
                    where: str, device: torch.device | None = None) -> np.ndarray:
    """k-means centroids [M, D] from a seeded sample of the layer (FAISS, or torch on ``device``)."""
    rows = sample_indices(source.n, default_sample(source.n, m, per_micro), seed)
    sample = read_rows(source, rows, where)
    if device is None:
        return train_kmeans(sample, m, seed, iters)
    from .torch_ops import train_kmeans_torch

    return train_kmeans_torch(sample, m, seed, iters, device)


@dataclass
class ApproxResult:
    partition: MicroPartition
    linkage: np.ndarray
    labels: dict[int, np.ndarray]  # K → concept id per token


def fit_approx(x: np.ndarray, ks: list[int], *, micro: int = 0, seed: int = 0, iters: int = 10,
               per_micro: int = 32, shard: int = 16384, dense_max: int = 8192,
               neighbors: int = 16, device: torch.device | None = None) -> ApproxResult:
    """Approximate Ward of the rows of an in-memory array (the same steps the stage runs);
    ``device``: the torch path there (None: FAISS/NumPy on the CPU)."""
    source = ArraySource(x, shard)
    m = micro or default_micro(source.n, max(ks))
    if m >= source.n:
        part = identity_partition(read_rows(source, np.arange(source.n), "sample"))
    else:
        cents = micro_centroids(source, m, seed=seed, iters=iters, per_micro=per_micro, where="sample",
                                device=device)
        part = compact(assign_all(source, cents, where="sample", progress=False, device=device))
    z = hybrid_ward(part.centroids, part.sizes, dense_max=dense_max, k=neighbors, device=device)
    micro_labels = cut(z, ks, part.sizes)
    return ApproxResult(part, z, {k: lab[part.token_micro] for k, lab in micro_labels.items()})
