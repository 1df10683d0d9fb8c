"""Exact Ward at a million points on one GPU: reciprocal-nearest-neighbour rounds, brute-force neighbours.

fastcluster and scipy keep the N²/2 distance matrix (4 TB at 1M points), and their vector variant
is serial. Ward is reducible (merging A and B never brings their union closer to any C than the
nearer of A and B was), so merging every reciprocal-nearest-neighbour pair at once, round after
round, gives exactly the greedy tree; and a cluster whose nearest neighbour did not merge keeps it.
Each round therefore searches only the clusters that merged and those whose neighbour merged, by
exact brute force under the Ward cost 2·|A||B|/(|A|+|B|)·‖c_A − c_B‖² (the squared fastcluster
height) in float64: one matrix product per block of queries against every live cluster, memory
O(N·D). No kNN graph, so nothing is approximated; once ``dense_max`` clusters remain, dense Ward
(exact from any partition) builds the rest.

On an H200 the float64 products run on the tensor cores (~60 TFLOP/s); on a CPU the same code
builds the exact tree for tests and small inputs.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from ..logs import log_event
from .graph import host_array
from .ward import finish_with_dense, weighted_ward

log = logging.getLogger("cluster_service.cluster")

#: Bytes of one block of the [queries, live clusters] float64 cost matrix (two live at once).
BLOCK_BYTES = 8 << 30
#: Dense Ward (an M² float64 matrix on the host) takes over at this many clusters.
DENSE_MAX = 8192


def rnn_ward(points: np.ndarray, device: torch.device, sizes: np.ndarray | None = None, *,
             dense_max: int = DENSE_MAX, block_bytes: int = BLOCK_BYTES) -> np.ndarray:
    """Exact Ward linkage (scipy format, heights √(2·ΔSSE)) of the rows of ``points`` [N, D].

    ``sizes``: weights of the rows when they are clusters' centroids (Ward above that partition);
    unit sizes by default. Computed on ``device``; the result is the tree fastcluster builds, up to
    the order of merges whose costs tie to float64 rounding.
    """
    n = len(points)
    leaf_sizes = np.ones(n) if sizes is None else np.asarray(sizes, dtype=np.float64)
    if n <= dense_max:
        return weighted_ward(np.asarray(points, dtype=np.float64), leaf_sizes)
    mean = np.asarray(points).mean(axis=0, dtype=np.float64)  # centred: the ‖a‖²+‖b‖²−2a·b stay accurate
    c = torch.as_tensor(np.asarray(points), device=device).to(torch.float64)
    c = c - torch.from_numpy(mean).to(device)
    size = torch.as_tensor(leaf_sizes, device=device).clone()
    rep = torch.arange(n, device=device)  # a leaf inside each live cluster: names it in the merges
    nn = torch.zeros(n, dtype=torch.int64, device=device)
    cost = torch.zeros(n, dtype=torch.float64, device=device)
    dirty = torch.arange(n, device=device)
    ma, mb, mh = [], [], []
    rounds, searched, t0 = 0, 0, time.perf_counter()
    while len(size) > dense_max:
        m = len(size)
        nn[dirty], cost[dirty] = _nearest(c, size, dirty, block_bytes)
        searched += len(dirty)
        idx = torch.arange(m, device=device)
        a = torch.nonzero((nn[nn] == idx) & (idx < nn)).flatten()
        if not len(a):  # a tie cycle, or a rounding asymmetry of two near-equal costs: merge the cheapest
            a = torch.argmin(cost).reshape(1)
            a = torch.minimum(a, nn[a])
        b = nn[a]
        sa, sb = size[a], size[b]
        diff = c[a] - c[b]  # the heights from the difference, not the expansion the search ranks by
        ma.append(rep[a])
        mb.append(rep[b])
        mh.append(2.0 * sa * sb / (sa + sb) * (diff * diff).sum(dim=1))
        c[a] = (sa[:, None] * c[a] + sb[:, None] * c[b]) / (sa + sb)[:, None]
        size[a] = sa + sb
        touched = torch.zeros(m, dtype=torch.bool, device=device)
        touched[a] = touched[b] = True
        redo = touched[nn]  # merged clusters, and those whose nearest neighbour merged
        keep = torch.ones(m, dtype=torch.bool, device=device)
        keep[b] = False
        new_index = torch.cumsum(keep, 0) - 1
        c, size, rep, cost, redo = c[keep], size[keep], rep[keep], cost[keep], redo[keep]
        nn = new_index[nn[keep]]  # valid where not redone: a kept neighbour that did not merge
        dirty = torch.nonzero(redo).flatten()
        rounds += 1
        if rounds == 1 or rounds % 20 == 0:
            log_event(log, "exact Ward round", round=rounds, clusters=len(size), merged=len(a),
                      searched=searched, seconds=round(time.perf_counter() - t0, 2))
    log_event(log, "exact Ward rounds done", rounds=rounds, clusters=len(size), searched=searched,
              seconds=round(time.perf_counter() - t0, 2))
    means = (c + torch.from_numpy(mean).to(device)).cpu().numpy()
    return finish_with_dense(rep.cpu().numpy(), means, size.cpu().numpy(), host_array(ma, np.int64),
                             host_array(mb, np.int64), host_array(mh, np.float64), leaf_sizes)


def _nearest(c: torch.Tensor, size: torch.Tensor, rows: torch.Tensor,
             block_bytes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's nearest other cluster under the Ward cost, and that cost (ties: the lowest index).

    Per block of query rows: one float64 product gives ‖c_j‖² − 2·q·c_j, then the row's ‖q‖², then
    the size weight 2/(1/|q| + 1/|j|), which is one constant per row while all sizes are equal (the
    first round over the tokens), so that pass is skipped there.
    """
    m = len(size)
    sq = (c * c).sum(dim=1)
    inv = 1.0 / size
    uniform = bool(size.min() == size.max())
    block = max(1, min(len(rows), block_bytes // (8 * m)))
    nn = torch.empty(len(rows), dtype=torch.int64, device=c.device)
    cost = torch.empty(len(rows), dtype=torch.float64, device=c.device)
    for lo in range(0, len(rows), block):
        q = rows[lo:lo + block]
        d = torch.addmm(sq[None, :], c[q], c.T, beta=1.0, alpha=-2.0)
        d += sq[q, None]
        d[torch.arange(len(q), device=c.device), q] = torch.inf
        if not uniform:
            d /= inv[q, None] + inv[None, :]
        best, j = torch.min(d, dim=1)
        nn[lo:lo + len(q)] = j
        best = best.clamp(min=0.0)
        cost[lo:lo + len(q)] = 2.0 * best if not uniform else 2.0 * best / (inv[q] + inv[0])
    return nn, cost

