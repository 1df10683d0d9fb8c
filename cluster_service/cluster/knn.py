"""Nearest neighbours for the kNN graph of kNN-graph Ward, past what an exact N²·D search affords.

Every token a leaf needs each token's ~16 nearest tokens. Exact flat search costs N²·D: minutes at
100K × 384 on 2 cores, hours at 1M. ``cell_knn`` is an inverted-file search laid out for BLAS: a
seeded k-means cuts the points into cells of ~``cell_size`` points; the queries of one cell are
searched, as one matrix product, against the points of the ``probes`` cells whose centroids lie
nearest that cell's centroid. Work is N · probes · cell_size · D, linear in N, and every step is a
fixed sequence of dense products and sorts, so the same input gives the same neighbours (HNSW's
multi-threaded build does not: its graph depends on thread timing).

A true neighbour lying in a cell outside the probed ones is missed; ``recall`` measures how often on
a sample of queries against exact search (the graph tolerates a few missing edges: a missing edge
only delays a merge to a later round or to the dense Ward at the top).
"""

from __future__ import annotations

import numpy as np

from .micro import nearest, train_kmeans


def exact_knn(x: np.ndarray, kk: int) -> np.ndarray:
    """Indices [n, kk] of each row's kk nearest rows (itself usually first), by flat FAISS search."""
    import faiss

    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    return index.search(x, kk)[1]


def cell_knn(x: np.ndarray, kk: int, *, cell_size: int = 1000, probes: int = 4, partitions: int = 4,
             refine: int = 1, seed: int = 0, kmeans_iters: int = 10) -> np.ndarray:
    """Indices [n, kk] of each row's kk nearest rows found in its probed cells (itself first), over
    ``partitions`` independent cell layouts, then ``refine`` rounds of ``refine_knn``.

    One layout misses the neighbours across its cell boundaries, and probing more of its cells finds
    them slowly: on 280K real MiniLM vectors, 16 probes reached recall@16 0.91, while layouts drawn
    with other seeds put their boundaries elsewhere (4 layouts × 4 probes: 0.954 for about the same
    work; one refinement round then 0.968). The layouts' candidates are merged by exact distance.
    ``x``: float32 [n, D], best centred (‖x‖² + ‖y‖² − 2·x·y loses precision far from the origin).
    Rows whose candidates hold fewer than kk points get −1 in the missing places.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    found = None
    for layout in range(partitions):
        nb = _cell_search(x, kk, cell_size, probes, seed + layout, kmeans_iters)
        found = nb if found is None else _merge(found, nb, kk)
    return refine_knn(x, found[0], refine) if refine else found[0]


def _merge(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], kk: int,
           rows: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """The kk nearest distinct entries of two (indices, distances) tables of the same rows.

    By the distances the searches returned: re-computing them from the vectors (a gather of every
    candidate's row) took 49 s per merge at 1M × 384 on 2 cores, this takes ~1 s. The same pair
    found by two layouts carries the distance of the first; ties go to the lower index.
    """
    import torch

    idx = torch.from_numpy(np.concatenate([a[0], b[0]], axis=1))
    dist = torch.from_numpy(np.concatenate([a[1], b[1]], axis=1))
    out_i = np.empty((len(idx), kk), dtype=np.int64)
    out_d = np.empty((len(idx), kk), dtype=np.float32)
    for lo in range(0, len(idx), rows):
        c, perm = torch.sort(idx[lo:lo + rows], dim=1, stable=True)
        d = torch.gather(dist[lo:lo + rows], 1, perm)
        dup = torch.zeros(c.shape, dtype=torch.bool)
        dup[:, 1:] = c[:, 1:] == c[:, :-1]
        d = torch.where(dup | (c < 0), float("inf"), d)
        best, pick = torch.sort(d, dim=1, stable=True)
        out_i[lo:lo + rows] = torch.where(torch.isinf(best[:, :kk]), -1, torch.gather(c, 1, pick[:, :kk])).numpy()
        out_d[lo:lo + rows] = best[:, :kk].numpy()
    return out_i, out_d


def _cell_search(x: np.ndarray, kk: int, cell_size: int, probes: int, seed: int,
                 kmeans_iters: int) -> tuple[np.ndarray, np.ndarray]:
    """One cell layout: seeded k-means cells, each cell's queries against its ``probes`` nearest cells;
    the neighbours' indices [n, kk] (−1 where missing) and squared distances (inf there)."""
    n = len(x)
    cells = max(1, min(n // max(kk, 1), round(n / cell_size)))
    probes = min(probes, cells)
    rng = np.random.default_rng(seed)
    sample = x[np.sort(rng.choice(n, size=min(n, 64 * cells), replace=False))]
    cents = train_kmeans(sample, cells, seed, kmeans_iters)
    cnorm = np.einsum("ij,ij->i", cents, cents)
    cell = nearest(x, cents, cnorm, 4096)
    order = np.argsort(cell, kind="stable")
    bounds = np.searchsorted(cell[order], np.arange(cells + 1))
    # each cell's probe list: the cells of the `probes` nearest centroids (itself first)
    cdist = cnorm[:, None] + cnorm[None, :] - 2.0 * (cents @ cents.T)
    np.fill_diagonal(cdist, -np.inf)
    probe = np.argsort(cdist, axis=1, kind="stable")[:, :probes]
    out = np.full((n, kk), -1, dtype=np.int64)
    dist = np.full((n, kk), np.inf, dtype=np.float32)
    for c in range(cells):
        queries = order[bounds[c]:bounds[c + 1]]
        if not len(queries):
            continue
        cand = np.concatenate([order[bounds[p]:bounds[p + 1]] for p in probe[c]])
        out[queries], dist[queries] = _block_topk(x, queries, cand, kk)
    return out, dist


def _block_topk(x: np.ndarray, queries: np.ndarray, cand: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
    """The kk nearest of ``cand`` for each of ``queries`` and their squared distances: FAISS's blocked
    BLAS search with its heap selection (6× faster than a NumPy argpartition over the same matrix here)."""
    import faiss

    take = min(kk, len(cand))
    out = np.full((len(queries), kk), -1, dtype=np.int64)
    dist = np.full((len(queries), kk), np.inf, dtype=np.float32)
    d, found = faiss.knn(x[queries], x[cand], take)
    out[:, :take] = np.where(found >= 0, cand[np.maximum(found, 0)], -1)
    dist[:, :take] = np.where(found >= 0, d, np.inf)
    return out, dist


def recall(x: np.ndarray, found: np.ndarray, k: int, queries: int = 2000, seed: int = 0) -> float:
    """Share of the true k nearest neighbours (self excluded) that ``found`` holds, on a seeded sample
    of query rows, against exact brute-force search over all of ``x`` (float64 distances)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    rng = np.random.default_rng(seed)
    q = np.sort(rng.choice(len(x), size=min(queries, len(x)), replace=False))
    sq = np.einsum("ij,ij->i", x, x).astype(np.float64)
    hits = 0
    for lo in range(0, len(q), 128):
        rows = q[lo:lo + 128]
        d = sq[None, :] - 2.0 * (x[rows] @ x.T).astype(np.float64)
        d[np.arange(len(rows)), rows] = np.inf  # self excluded
        truth = np.argpartition(d, k, axis=1)[:, :k]
        hits += sum(len(set(t.tolist()) & set(found[r].tolist())) for t, r in zip(truth, rows, strict=True))
    return hits / (len(q) * k)


#: Neighbours of each neighbour searched per refinement round (all 17 cost 2.7× for +0.005 recall).
REFINE_FANOUT = 6
#: Rows per block of a refinement round.
REFINE_ROWS = 65536


def refine_knn(x: np.ndarray, nbr: np.ndarray, rounds: int = 1, fanout: int = REFINE_FANOUT) -> np.ndarray:
    """Neighbour-of-neighbour refinement (one step of NN-descent per round) of an approximate kNN table.

    A true neighbour missed by one search is often a neighbour of a neighbour it found, so each
    round searches every point's neighbours and the first ``fanout`` neighbours of each of them and
    keeps the nearest kk. Work is N·kk·(1 + fanout)·D per round. It helps once the misses are spread
    out (after several cell layouts: 0.954 → 0.968 on 280K real vectors), not after one layout, whose
    misses all lie across the same boundaries (0.79 → 0.81).
    """
    import torch

    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = (torch.from_numpy(x) ** 2).sum(dim=1)
    nb = np.ascontiguousarray(nbr, dtype=np.int64)
    n, kk = nb.shape
    fan = min(fanout, kk)
    for _ in range(rounds):
        own = np.where(nb < 0, np.arange(n)[:, None], nb)  # a missing entry: the point itself, a duplicate
        head = np.ascontiguousarray(own[:, :fan])
        out = np.empty_like(nb)
        for lo in range(0, n, REFINE_ROWS):  # blocks: the [rows, kk·(1 + fanout)] candidates stay small
            mine = own[lo:lo + REFINE_ROWS]
            cand = np.concatenate([mine, head[mine].reshape(len(mine), -1)], axis=1)
            out[lo:lo + len(mine)] = _nearest_of(x, cand, kk, row0=lo, norms=norms)
        nb = out
    return nb


def _nearest_of(x: np.ndarray, cand: np.ndarray, kk: int, row0: int = 0, norms=None, block: int = 4096) -> np.ndarray:
    """The kk nearest distinct candidates of rows row0.. of ``x`` (fp32 ‖y‖² − 2·x·y, ties by index),
    −1 where a row has fewer; a gather and a batched product per block of rows (torch: multi-threaded)."""
    import torch

    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if norms is None:
        norms = (xt * xt).sum(dim=1)
    cand_t = torch.from_numpy(np.ascontiguousarray(cand, dtype=np.int64))
    out = torch.empty((len(cand_t), kk), dtype=torch.int64)
    for lo in range(0, len(cand_t), block):
        c = torch.sort(cand_t[lo:lo + block], dim=1).values  # index order: ties keep it
        rows = torch.arange(row0 + lo, row0 + lo + len(c))
        dup = torch.zeros(c.shape, dtype=torch.bool)
        dup[:, 1:] = c[:, 1:] == c[:, :-1]
        safe = c.clamp(min=0)
        dist = norms[safe] - 2.0 * torch.bmm(xt[safe], xt[rows, :, None])[:, :, 0]
        dist = torch.where(dup | (c < 0), float("inf"), dist)
        best, pick = torch.sort(dist, dim=1, stable=True)
        out[lo:lo + len(c)] = torch.where(torch.isinf(best[:, :kk]), -1, torch.gather(c, 1, pick[:, :kk]))
    return out.numpy()
