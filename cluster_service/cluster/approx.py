"""The one assembly of the Ward tree: sample, k-means, assign, link, cut.

Leaves: the tokens themselves up to ``graph_max`` tokens (1M on the CPU, 5M on a GPU by default; always
for exact Ward), else M
micro-clusters (seeded sample → k-means → every token assigned, shard by shard). Tree: size-weighted
Ward over the leaves, kNN-graph Ward at the bottom while there are more than ``dense_max`` clusters,
dense (exact) Ward above; exact Ward is the backend's on the tokens (fastcluster on the CPU,
reciprocal-nearest-neighbour rounds with brute-force neighbours on a GPU). Then cut at each K.

The stage runs it on a layer of the run store with the store as checkpoint (a rerun skips every
step whose settings key is unchanged); the quality report and the tests run it on an array in memory
with a checkpoint that keeps nothing. Both get the same bits for the same input, settings and backend.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from ..logs import log_event
from .backend import ClusterBackend, FaissBackend
from .checkpoint import Checkpoint, NoCheckpoint
from .cut import check_k, cut
from .graph import hybrid_ward
from .micro import MicroPartition, compact, identity_partition, sample_indices
from .params import ApproxParams
from .source import ArraySource, Source, read_rows

log = logging.getLogger("cluster_service.cluster")

#: The arrays of the leaf partition, in MicroPartition order (sums and centroids only when M < N).
PARTITION_FILES = ("token_micro.npy", "micro_sizes.npy", "micro_sums.npy", "micro_centroids.npy")


@dataclass
class WardTree:
    """A Ward tree over leaves of the tokens, cut at each requested K."""

    partition: MicroPartition
    linkage: np.ndarray  # float64 [M−1, 4], scipy format over the leaves
    key: dict  # the settings the linkage was built with: what every cut of this tree depends on
    leaf_concepts: dict[int, np.ndarray]  # K → concept id of every leaf (int32 [M])

    def assignments(self, k: int) -> np.ndarray:
        """Concept id of every token at K (int32 [N])."""
        return self.leaf_concepts[k][self.partition.token_micro]


def input_key(identity: dict, params: ApproxParams, backend: ClusterBackend) -> dict:
    """Settings every step depends on: the input's identity, the seed and (off FAISS) the backend.

    The FAISS path's keys carry no backend entry, as before backends existed, so existing stores resume.
    """
    key = {**identity, "seed": params.seed}
    if backend.name != FaissBackend.name:
        key["backend"] = backend.name
    return key


def leaf_count(n: int, ks: list[int], params: ApproxParams, exact: bool, backend: ClusterBackend) -> int:
    """M, the number of leaves: N for exact Ward, else ``params.leaves`` (checked against K and N)."""
    if exact:
        return n
    m = params.leaves(n, max(ks), backend.graph_max, backend.micro_cap)
    if not max(ks) <= m <= n:
        raise UserError(f"--micro {m}: must lie between the largest K ({max(ks)}) and the number of "
                        f"tokens ({n})")
    return m


def ward_tree(source: Source, ks: list[int], params: ApproxParams, backend: ClusterBackend,
              checkpoint: Checkpoint, *, exact: bool = False, identity: dict | None = None,
              where: str = "sample", progress: bool = False) -> WardTree:
    """Build (or resume from ``checkpoint``) the tree over the rows of ``source`` and cut it at ``ks``.

    ``identity``: what names the input in the checkpoint keys (the stage: a fingerprint of the layer);
    ``where``: the input's name in errors and logs.
    """
    ks = check_k(ks, source.n)
    m = leaf_count(source.n, ks, params, exact, backend)
    key = {**input_key(identity or {}, params, backend), "m": m, "method": "exact" if exact else "approx"}
    part, key = _leaves(source, params, m, exact, backend, checkpoint, key, where, progress)
    z, key = _link(part, params, exact, backend, checkpoint, key, where)
    return WardTree(part, z, key, cut(z, ks, part.sizes))


def approx_ward(x: np.ndarray, ks: list[int], params: ApproxParams | None = None,
                backend: ClusterBackend | None = None, *, shard: int = ArraySource.shard) -> WardTree:
    """The approximate Ward tree of the rows of an in-memory array, cut at ``ks`` (nothing kept)."""
    return ward_tree(ArraySource(x, shard), ks, params or ApproxParams(), backend or FaissBackend(),
                     NoCheckpoint())


def _leaves(source: Source, params: ApproxParams, m: int, exact: bool, backend: ClusterBackend,
            ckpt: Checkpoint, key: dict, where: str, progress: bool) -> tuple[MicroPartition, dict]:
    """The leaf partition: every token a leaf (M = N), or k-means micro-clusters with every token assigned."""
    n = source.n
    if not exact and m < n:
        key |= {"sample_per_micro": params.sample_per_micro, "kmeans_iters": params.kmeans_iters}
    sq_norm = ckpt.value("sq_norm", key)
    if sq_norm is not None and all(ckpt.have(name, key) for name in PARTITION_FILES):
        log_event(log, "micro partition reused", layer=where)
        token_micro, sizes, sums, cents = (ckpt.load(name) for name in PARTITION_FILES)
        return MicroPartition(token_micro, cents, sizes, sums, sq_norm), key
    if exact or m >= n:  # the tokens are the leaves: only the identity map and unit sizes are stored
        part = identity_partition(read_rows(source, np.arange(n), where))
        for name, arr in zip(PARTITION_FILES[:2], (part.token_micro, part.sizes), strict=True):
            if not ckpt.have(name, key):
                ckpt.save(name, arr, key)
        return part, key
    if ckpt.have("kmeans_centroids.npy", key):
        cents = ckpt.load("kmeans_centroids.npy")
    else:
        t0 = time.perf_counter()
        sample = read_rows(source, sample_indices(n, params.sample_size(n, m), params.seed), where)
        cents = backend.kmeans(sample, m, params.seed, params.kmeans_iters)
        ckpt.save("kmeans_centroids.npy", cents, key)
        log_event(log, "k-means done", layer=where, m=m, seconds=time.perf_counter() - t0)
    t0 = time.perf_counter()
    part = compact(backend.assign(source, cents, where=where, progress=progress))
    log_event(log, "assignment done", layer=where, micro=len(part.sizes), ray=backend.uses_ray,
              seconds=time.perf_counter() - t0)
    for name, arr in zip(PARTITION_FILES, (part.token_micro, part.sizes, part.sums, part.centroids), strict=True):
        ckpt.save(name, arr, key)
    ckpt.save_value("sq_norm", part.sq_norm, key)
    return part, key


def _link(part: MicroPartition, params: ApproxParams, exact: bool, backend: ClusterBackend,
          ckpt: Checkpoint, key: dict, where: str) -> tuple[np.ndarray, dict]:
    """The linkage over the leaves: the backend's exact Ward (fastcluster on the CPU, RNN rounds on a
    GPU), else hybrid (kNN-graph + dense) Ward."""
    if not exact:
        key = {**key, "dense_max": params.dense_max, "neighbors": params.neighbors}
        if len(part.sizes) > max(params.dense_max, params.knn_exact_max):  # smaller: exact kNN, keys as before
            key["knn"] = {"exact_max": params.knn_exact_max, "probes": params.knn_probes,
                          "partitions": params.knn_partitions, "refine": params.knn_refine}
    if ckpt.have("linkage.npy", key):
        return ckpt.load("linkage.npy"), key
    t0 = time.perf_counter()
    if exact:
        z = backend.exact_ward(part.centroids)
    else:
        z = hybrid_ward(part.centroids, part.sizes, params, backend=backend)
    ckpt.save("linkage.npy", z, key)
    log_event(log, "ward done", layer=where, leaves=len(part.sizes), seconds=time.perf_counter() - t0)
    return z, key
