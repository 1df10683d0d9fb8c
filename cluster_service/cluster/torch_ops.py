"""The micro-cluster steps as torch matmuls, for a GPU (FAISS GPU wheels do not fit the GPU machines).

Written device-agnostic: the same code runs on CPU torch (``--device torch-cpu``), which is how it is
tested without a GPU. Everything is fp32 matmuls with precomputed norms (TF32 and bf16 are not used:
at 5M×768 and M=8192 the fp32 GPU work takes seconds, and reading the layer dominates), the per-cluster
sums of the assignment are fp64 (one-hot matmuls, the same contract as the FAISS path), and every
reduction runs in a fixed order with fixed shapes, so one input + config + seed gives identical bits
on one device. No atomics: per-cluster sums are one-hot matrix products, not ``index_add_``.

Assignment runs in the calling process, shard by shard in order, with the next shard read by a
background thread while the device works on the current one. Ray tasks are not used on this path:
one process per GPU is the simple layout for a one-GPU node (Ray tasks would need ``num_gpus``).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from tqdm import tqdm

from ..errors import UserError
from ..logs import log_event
from ..store import shard_ranges
from .micro import Accumulator, block_rows
from .source import Source, check_finite

log = logging.getLogger("cluster_service.cluster")

#: Rows per k-means block (the [block, M] fp32 score matrix: 256 MB at M=8192).
KMEANS_BLOCK = 8192
#: kNN tiles: query rows × candidate columns of one distance matmul ([8192, 65536] fp32: 2 GB).
KNN_ROWS = 8192
KNN_COLS = 65536
#: Columns per group of the tile selection's first pass (see ``_tile_topk``).
TOPK_GROUP = 16
#: Mean hits per query row up to which a tile is merged by threshold (else ``_tile_topk`` over it).
PRUNE_HITS = 8
#: Candidates kept beyond k per query for the exact re-rank (absorb TF32's reordering of near ties).
RERANK_EXTRA = 16
#: Query rows per exact re-rank block (the gathered [rows, k + extra, D] fp32 differences).
RERANK_ROWS = 1024
#: FAISS's relative perturbation when an empty cluster takes half of the largest one.
SPLIT_EPS = 1.0 / 1024.0


def _nearest(x: torch.Tensor, cents: torch.Tensor, cnorm: torch.Tensor) -> torch.Tensor:
    """argmin_j ‖x − c_j‖² = argmin_j (‖c_j‖² − 2·x·c_j); ties go to the lowest j (like NumPy)."""
    scores = torch.addmm(cnorm[None, :], x, cents.T, beta=1.0, alpha=-2.0)
    return torch.argmin(scores, dim=1)


def _onehot_sums(x: torch.Tensor, labels: torch.Tensor, m: int) -> torch.Tensor:
    """Σ of the rows of ``x`` per label, [m, D] in x's dtype: a one-hot matmul (fixed order, no atomics)."""
    onehot = torch.zeros((m, len(labels)), dtype=x.dtype, device=x.device)
    onehot[labels, torch.arange(len(labels), device=x.device)] = 1.0
    return onehot @ x


def train_kmeans_torch(sample: np.ndarray, m: int, seed: int, iters: int, device: torch.device,
                       block: int = KMEANS_BLOCK) -> np.ndarray:
    """Lloyd k-means centroids [m, d] float32 on ``device``.

    As FAISS: the initial centroids are m distinct sample points drawn with ``seed``; each iteration
    assigns every point and moves each centroid to its points' mean; an empty cluster takes half of
    the largest one (its centroid copied and both nudged apart by ±1/1024 per dimension, FAISS's
    split; FAISS picks the donor at random by size, here the largest, lowest index first).
    """
    if not 1 <= m <= len(sample):
        raise UserError(f"k-means: {m} centroids need at least as many sample points (have {len(sample)})")
    x = torch.from_numpy(np.ascontiguousarray(sample, dtype=np.float32)).to(device)
    n, d = x.shape
    init = np.random.default_rng(seed).choice(n, size=m, replace=False)
    cents = x[torch.from_numpy(init).to(device)].clone()
    sign = torch.where(torch.arange(d, device=device) % 2 == 0, 1.0, -1.0) * SPLIT_EPS
    for _ in range(iters):
        cnorm = (cents * cents).sum(dim=1)
        sums = torch.zeros((m, d), dtype=torch.float64, device=device)
        counts = torch.zeros(m, dtype=torch.int64, device=device)
        for lo in range(0, n, block):
            xb = x[lo:lo + block]
            lab = _nearest(xb, cents, cnorm)
            sums += _onehot_sums(xb, lab, m).double()
            counts += torch.bincount(lab, minlength=m)
        filled = counts > 0
        cents = torch.where(filled[:, None], (sums / counts.clamp(min=1)[:, None]).float(), cents)
        for ci in torch.nonzero(~filled).flatten().tolist():
            cj = int(torch.argmax(counts))
            cents[ci] = cents[cj] * (1.0 + sign)
            cents[cj] = cents[cj] * (1.0 - sign)
            counts[ci] = counts[cj] // 2
            counts[cj] -= counts[ci]
    return np.ascontiguousarray(cents.cpu().numpy(), dtype=np.float32)


def assign_all_torch(source: Source, centroids: np.ndarray, *, where: str, device: torch.device,
                     progress: bool = True) -> Accumulator:
    """Assign every row of ``source`` on ``device``, shard by shard in order (one read ahead); rows
    travel as stored (float16: half the host→device bytes, no CPU conversion) and become fp32 there.

    Blocks are shard-aligned and zero-padded to one shape, as on the CPU path, so streaming from Zarr
    and an in-memory source of the same shard size give the same bits.
    """
    m, d = centroids.shape
    cents = torch.from_numpy(np.ascontiguousarray(centroids, dtype=np.float32)).to(device)
    cnorm = (cents * cents).sum(dim=1)
    block = block_rows(source.shard)
    sums = torch.zeros((m, d), dtype=torch.float64, device=device)
    counts = torch.zeros(m, dtype=torch.int64, device=device)
    sq_norm = torch.zeros((), dtype=torch.float64, device=device)
    acc = Accumulator(source.n, m, d)
    ranges = shard_ranges(source.n, source.shard)
    pad = torch.zeros((block, d), dtype=torch.float32, device=device)
    bar = tqdm(total=len(ranges), desc=f"assign {where} ({device.type})", unit="shard", disable=not progress)
    with ThreadPoolExecutor(max_workers=1) as reader:
        ahead = reader.submit(source.read, *ranges[0], None) if ranges else None
        for i, (lo, hi) in enumerate(ranges):
            x = ahead.result()
            if i + 1 < len(ranges):
                ahead = reader.submit(source.read, *ranges[i + 1], None)
            xt = torch.from_numpy(x).to(device).float()  # as stored (float16) over the bus, fp32 here
            if not bool(torch.isfinite(xt).all()):
                check_finite(x, lo, where)
            out = torch.empty(hi - lo, dtype=torch.int64, device=device)
            for b in range(0, hi - lo, block):
                e = min(b + block, hi - lo)
                pad[: e - b] = xt[b:e]
                pad[e - b:] = 0.0
                lab = _nearest(pad, cents, cnorm)[: e - b]
                out[b:e] = lab
                x64 = xt[b:e].double()
                sums += _onehot_sums(x64, lab, m)
                counts += torch.bincount(lab, minlength=m)
                sq_norm += (x64 * x64).sum()
            acc.token_micro[lo:hi] = out.cpu().numpy()
            bar.update()
    bar.close()
    acc.sums[:] = sums.cpu().numpy()
    acc.counts[:] = counts.cpu().numpy()
    acc.sq_norm = float(sq_norm)
    log_event(log, "assigned on torch device", layer=where, device=str(device), shards=len(ranges))
    return acc


def knn_torch(points: np.ndarray, neighbors: int, device: torch.device, *, rows: int = KNN_ROWS,
              cols: int = KNN_COLS) -> np.ndarray:
    """Indices [n, min(neighbors+1, n)] of each point's nearest points (itself usually first): brute
    force over every pair, in [rows, cols] tiles, so 5M points never need an [n, n] matrix.

    Each tile's distances come from one matmul (‖y‖² − 2·x·y), on a GPU in float16 throughout
    (tensor cores; on an H200 the fp32 matmul, then converting its fp16 result to fp32, each cost
    more than the rest of the tile; the points are scaled so that every ‖x‖² ≤ 1). A running
    top-(k + ``RERANK_EXTRA``) per query keeps the candidates (``_Candidates``), which are then
    re-ranked by their exact fp32 distance ‖x − y‖² (ties by index). float16's rounding only
    reorders candidates whose distances agree to ~1e-3 of ‖x‖², and the extra candidates absorb that,
    so the result is the exact neighbours up to such near ties (recall against float64 brute force
    is measured on real MiniLM vectors by ``bench_cluster_scale.py knn``; on the CPU the tiles are
    fp32 and the result equals FAISS's exact search in the tests).
    """
    x = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32)).to(device)
    n = len(x)
    kk = min(neighbors + 1, n)
    kc = min(kk + RERANK_EXTRA, n)
    norms = (x * x).sum(dim=1)
    if device.type == "cuda":  # float16 operands and distances, scaled so every ‖x‖² ≤ 1 (no overflow)
        scale = 1.0 / float(norms.max().clamp(min=1e-30).sqrt())
        xm, nm = (x * scale).half(), (norms * scale * scale).half()
    else:
        xm, nm = x, norms
    out = torch.empty((n, kk), dtype=torch.int64, device=device)
    for lo in range(0, n, rows):
        xb = xm[lo:lo + rows]
        best = _Candidates(len(xb), kc, xm.dtype, device)
        for c in range(0, n, cols):
            best.add(torch.addmm(nm[None, c:c + cols], xb, xm[c:c + cols].T, beta=1.0, alpha=-2.0), c)
        out[lo:lo + rows] = _rerank(x, x[lo:lo + rows], best.index, kk)
    return out.cpu().numpy()


class _Candidates:
    """The kc smallest distances seen so far per query row, and their column indices.

    Selecting over a whole tile costs more than the tile's matmul (on an H200, ~14× for 8192 × 65536),
    so once every row holds kc candidates a tile is only compared with each row's current kc-th
    distance: the few entries at or under it (about kc·C/columns-seen per row, so a handful after the
    first tiles) are merged by one sort of the candidates. A tile with more hits than
    ``PRUNE_HITS`` per row on average falls back to ``_tile_topk``. Both paths keep the kc smallest
    (the merge breaks ties by column; a tie at the kc-th place may keep either), and the exact re-rank
    orders what they keep.
    """

    def __init__(self, r: int, kc: int, dtype: torch.dtype, device: torch.device):
        self.r, self.kc = r, kc
        self.dist = torch.empty((r, 0), dtype=dtype, device=device)
        self.index = torch.empty((r, 0), dtype=torch.int64, device=device)

    def add(self, d: torch.Tensor, col0: int) -> None:
        if self.dist.shape[1] == self.kc:
            hit = d <= self.dist.amax(dim=1, keepdim=True)
            rr, cc = hit.nonzero(as_tuple=True)
            if len(rr) <= PRUNE_HITS * self.r:
                self._merge(rr, d[rr, cc], cc + col0)
                return
        td, ti = _tile_topk(d, min(self.kc, d.shape[1]))
        dist, pick = torch.topk(torch.cat([self.dist, td], 1), min(self.kc, self.dist.shape[1] + td.shape[1]),
                                dim=1, largest=False, sorted=False)
        self.index = torch.gather(torch.cat([self.index, ti + col0], 1), 1, pick)
        self.dist = dist

    def _merge(self, rr: torch.Tensor, dd: torch.Tensor, ii: torch.Tensor) -> None:
        if not len(rr):
            return
        r, kc, dev = self.r, self.kc, self.dist.device
        row = torch.cat([torch.arange(r, device=dev).repeat_interleave(kc), rr])
        dist = torch.cat([self.dist.reshape(-1), dd])
        index = torch.cat([self.index.reshape(-1), ii])
        order = torch.sort(dist, stable=True).indices
        order = order[torch.sort(row[order], stable=True).indices]  # by row, then distance
        counts = torch.bincount(rr, minlength=r) + kc
        start = torch.cumsum(counts, 0) - counts
        rank = torch.arange(len(order), device=dev) - start.repeat_interleave(counts)
        keep = order[rank < kc]  # row-major: the kc smallest of each row, rows in order
        self.dist = dist[keep].view(r, kc)
        self.index = index[keep].view(r, kc)


def _tile_topk(d: torch.Tensor, kc: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The kc smallest entries of each row of the tile ``d`` [R, C] (values, column indices).

    Selection over C columns costs more than the tile's matmul, so it runs on group minima first:
    the columns are cut into groups of ``TOPK_GROUP``, the kc groups with the smallest minima are
    kept and only their members are ranked. That is exact: a group holding one of the row's kc
    smallest entries e has a minimum ≤ e, and every group with a smaller minimum holds a distinct
    entry smaller than e, of which there are fewer than kc.
    """
    r, c = d.shape
    g = TOPK_GROUP
    if c <= kc * g:
        return torch.topk(d, min(kc, c), dim=1, largest=False, sorted=False)
    if c % g:
        d = torch.cat([d, torch.full((r, g - c % g), float("inf"), dtype=d.dtype, device=d.device)], 1)
    groups = d.view(r, -1, g).amin(dim=2)
    top_groups = torch.topk(groups, kc, dim=1, largest=False, sorted=False).indices
    members = (top_groups[:, :, None] * g + torch.arange(g, device=d.device)).reshape(r, -1)
    vals, pick = torch.topk(torch.gather(d, 1, members), kc, dim=1, largest=False, sorted=False)
    return vals, torch.gather(members, 1, pick)


def _rerank(x: torch.Tensor, xb: torch.Tensor, cand: torch.Tensor, kk: int) -> torch.Tensor:
    """The kk of ``cand`` nearest each row of ``xb`` by exact fp32 ‖x − y‖², ties by index."""
    cand = torch.sort(cand, dim=1).values  # index order first, so the stable sort breaks ties by index
    exact = torch.empty(cand.shape, device=x.device)
    for lo in range(0, len(xb), RERANK_ROWS):
        diff = x[cand[lo:lo + RERANK_ROWS]] - xb[lo:lo + RERANK_ROWS, None, :]
        exact[lo:lo + RERANK_ROWS] = (diff * diff).sum(dim=2)
    order = torch.sort(exact, dim=1, stable=True).indices[:, :kk]
    return torch.gather(cand, 1, order)
