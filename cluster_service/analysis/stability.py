"""Which concepts are robust: recluster seeded bootstrap subsamples with the run's own method and
settings, and give each concept the mean Jaccard of its best match in each replicate, over the sampled
tokens (a concept that comes back whole in every replicate scores 1)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def best_jaccard(reference: np.ndarray, replicate: np.ndarray, k: int) -> np.ndarray:
    """Per reference concept, the best Jaccard with any replicate cluster over the same tokens (NaN for a
    concept with no token among them)."""
    k_rep = int(replicate.max(initial=-1)) + 1
    codes, shared = np.unique(reference.astype(np.int64) * k_rep + replicate, return_counts=True)
    ref, rep = codes // k_rep, codes % k_rep
    size_ref = np.bincount(reference, minlength=k)
    size_rep = np.bincount(replicate, minlength=k_rep)
    jac = shared / (size_ref[ref] + size_rep[rep] - shared)
    out = np.full(k, np.nan)
    order = np.lexsort((-jac, ref))
    first = np.r_[True, ref[order][1:] != ref[order][:-1]]
    out[ref[order][first]] = jac[order][first]
    return out


def bootstrap(x: np.ndarray, reference: np.ndarray, k: int, cluster: Callable[[np.ndarray, int], np.ndarray],
              replicates: int, fraction: float, seed: int, progress=None) -> np.ndarray:
    """Jaccard of every concept's best match in each replicate ([replicates, K]); ``cluster(x, k)`` must
    return the assignment of every row of ``x`` into ``k`` clusters (the run's method)."""
    rng = np.random.default_rng(seed)
    n = len(x)
    size = max(k, int(round(fraction * n)))
    out = np.full((replicates, k), np.nan)
    for r in range(replicates):
        rows = np.sort(rng.choice(n, min(size, n), replace=False))
        out[r] = best_jaccard(reference[rows], cluster(x[rows], k), k)
        if progress is not None:
            progress.update(1)
    return out
