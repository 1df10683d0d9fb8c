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
The kNN search of kNN-graph Ward is in ``group_knn``.
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
