"""Quality of the approximate tree against exact Ward on the same tokens.

Real activations have no crisp clusters, so even exact Ward disagrees with itself on a 90%
subsample; that stability is the ceiling ARI is judged against. We also report the Ward objective
(within-cluster SSE) ratio and a plain FAISS k-means at K as the baseline to beat.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from .approx import approx_ward
from .backend import FaissBackend
from .cut import check_k, cut
from .exact import exact_ward
from .micro import nearest
from .params import ApproxParams


def within_sse(x: np.ndarray, assignments: np.ndarray) -> float:
    """Σ over clusters of Σ‖x − c‖² (float64, centred for accuracy)."""
    x64 = x.astype(np.float64)
    x64 -= x64.mean(axis=0)
    k = int(assignments.max()) + 1
    counts = np.bincount(assignments, minlength=k).astype(np.float64)
    sums = np.zeros((k, x64.shape[1]))
    np.add.at(sums, assignments, x64)
    nz = counts > 0
    between = (np.einsum("ij,ij->i", sums[nz], sums[nz]) / counts[nz]).sum()
    return float(np.einsum("ij,ij->", x64, x64) - between)


def kmeans_assignments(x: np.ndarray, k: int, seed: int, iters: int = 20) -> np.ndarray:
    import faiss  # here, not at import: the torch path runs where FAISS is not installed

    x32 = np.ascontiguousarray(x, dtype=np.float32)
    km = faiss.Kmeans(x32.shape[1], k, niter=iters, seed=seed, verbose=False,
                      max_points_per_centroid=len(x32))
    km.train(x32)
    c = np.ascontiguousarray(km.centroids)
    return nearest(x32, c, np.einsum("ij,ij->i", c, c), 4096)


def _scores(ref: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    return float(adjusted_rand_score(ref, other)), float(normalized_mutual_info_score(ref, other))


#: The reference recipe also scored by --evaluate: k-means to N/4 micro-clusters + weighted Ward,
#: the leaves the budget allows at 1M tokens relative to their N (see ApproxParams.leaves).
RECIPE_TOKENS_PER_MICRO = 4


def evaluate(x: np.ndarray, ks: list[int], params: ApproxParams | None = None) -> list[dict]:
    """One row per K: approximate (with ``params``, on FAISS), k-means micro + Ward (N/4 leaves) and
    plain k-means at K vs exact Ward (ARI, NMI, SSE ratio), and exact Ward's 90%-subsample stability."""
    params = params or ApproxParams()
    seed = params.seed
    ks = check_k(ks, len(x))
    t0 = time.perf_counter()
    exact = cut(exact_ward(x), ks)
    t_exact = time.perf_counter() - t0
    micro = params.leaves(len(x), max(ks), FaissBackend.graph_max)
    t0 = time.perf_counter()
    approx = approx_ward(x, ks, replace(params, micro=micro))
    t_approx = time.perf_counter() - t0
    m_recipe = max(max(ks), len(x) // RECIPE_TOKENS_PER_MICRO)
    t0 = time.perf_counter()
    recipe = approx_ward(x, ks, replace(params, micro=m_recipe))
    t_recipe = time.perf_counter() - t0
    rng = np.random.default_rng(seed + 1)
    keep = np.sort(rng.choice(len(x), size=int(0.9 * len(x)), replace=False))
    sub = cut(exact_ward(x[keep]), [k for k in ks if k <= len(keep)])
    rows = []
    for k in ks:
        a_k, r_k = approx.assignments(k), recipe.assignments(k)
        e_sse = within_sse(x, exact[k])
        a_ari, a_nmi = _scores(exact[k], a_k)
        t0 = time.perf_counter()
        km = kmeans_assignments(x, k, seed)
        t_km = time.perf_counter() - t0
        k_ari, k_nmi = _scores(exact[k], km)
        r_ari, r_nmi = _scores(exact[k], r_k)
        s_ari, s_nmi = _scores(exact[k][keep], sub[k]) if k in sub else (float("nan"), float("nan"))
        rows.append({
            "k": k, "n": len(x), "m": int(micro),
            "m_nonempty": len(approx.partition.sizes),
            "ari_vs_exact": a_ari, "nmi_vs_exact": a_nmi,
            "exact_sse": e_sse,
            "sse_ratio_vs_exact": within_sse(x, a_k) / e_sse,
            "kmeans_ari_vs_exact": k_ari, "kmeans_nmi_vs_exact": k_nmi,
            "kmeans_sse_ratio_vs_exact": within_sse(x, km) / e_sse,
            "ari_exact_subsample": s_ari, "nmi_exact_subsample": s_nmi,
            "ari_ratio_to_stability": a_ari / s_ari if s_ari == s_ari and s_ari > 0 else float("nan"),
            "kmeans_micro_ari_vs_exact": r_ari, "kmeans_micro_nmi_vs_exact": r_nmi,
            "kmeans_micro_sse_ratio_vs_exact": within_sse(x, r_k) / e_sse,
            "kmeans_micro_m": m_recipe, "extra_methods": ["kmeans_micro"],
            "exact_seconds": t_exact, "seconds": t_approx, "kmeans_micro_seconds": t_recipe,
            "kmeans_seconds": t_km,
        })
    return rows
