"""Where the time of one row block of the GPU's tiled kNN goes (issue 18): matmul in fp32 / fp16,
the fp32 conversion, plain top-k vs the group-minimum selection; then the whole search at 200K
(recall against float64 brute force), and 1M × 768 with every tile selected in full against the
threshold merge (``PRUNE_HITS``: same neighbours, measured in the same run).

    PYTHONPATH=$PWD python3 benchmarks/probe_knn_tiles.py     # on a GPU machine

Measured on 1x H200 (2026-12-02), per 8192-row block over 1M × 384 columns: fp32 matmul 0.13 s,
fp16 0.01 s, + fp32 conversion and axpy 0.07 s, + top-k 0.16 s, + group top-k 0.14 s; the fp16
search over 2M × 768 took 55 s (so ~6 min for 5M: the selection, not the matmul, bounds it), which
is why tiles after the first are compared with the running kc-th distance and only the hits merged.
"""

from __future__ import annotations

import time

import torch

from cluster_service.cluster import torch_ops
from cluster_service.cluster.knn import recall

DEV = torch.device("cuda")
N, D, ROWS, COLS = 1_000_000, 384, 8192, 65536


def timed(name: str, f) -> None:
    torch.cuda.synchronize()
    t = time.perf_counter()
    f()
    torch.cuda.synchronize()
    print(f"{name}: {time.perf_counter() - t:.2f} s", flush=True)


def main() -> None:
    x = torch.randn(N, D, device=DEV)
    xh = x.half()
    norms = (x * x).sum(1)

    def block(kind: str) -> None:
        for c in range(0, N, COLS):
            if kind == "mm32":
                x[:ROWS] @ x[c:c + COLS].T
                continue
            d = xh[:ROWS] @ xh[c:c + COLS].T
            if kind == "mm16":
                continue
            d = d.float().mul_(-2.0).add_(norms[None, c:c + COLS])
            if kind == "topk":
                torch.topk(d, 33, dim=1, largest=False, sorted=False)
            elif kind == "group":
                torch_ops._tile_topk(d, 33)

    for kind in ("mm32", "mm16", "convert", "topk", "group"):
        block(kind)
        timed(f"one row block: {kind}", lambda kind=kind: block(kind))
    small = x[:200_000].cpu().numpy()
    got = torch_ops.knn_torch(small, 16, DEV)
    print("recall@16 of the tiled search on 200K Gaussian points:", recall(small, got, 16, 500), flush=True)
    big = torch.randn(1_000_000, 768, device=DEV).cpu().numpy()
    found = {}
    for prune in (0, torch_ops.PRUNE_HITS):
        torch_ops.PRUNE_HITS = prune
        timed(f"tiled search, 1M x 768, PRUNE_HITS={prune}",
              lambda prune=prune: found.setdefault(prune, torch_ops.knn_torch(big, 16, DEV)))
    same = (found[0] == found[prune]).all(axis=1).mean()
    print(f"rows with the same neighbours, full selection vs threshold merge: {same:.6f}", flush=True)


if __name__ == "__main__":
    main()
