"""Where the time of the GPU's exact kNN goes (issue 18): the fused group-minimum kernel against the
same selection fed by torch matmuls (the baseline, measured in the same run) and against the bare
fp16 matmul over the same pairs (the chip's practical rate for this work).

    PYTHONPATH=$PWD python3 benchmarks/probe_knn_tiles.py [--n 1000000] [--d 768] [--configs]
                                                          [--results cluster_scale.json]

Prints a table; with ``--results`` appends a ``knn_group_min_probe`` row. ``--configs`` first times
a few kernel tiles on one query block (the chosen one is written in ``group_knn``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import merge_rows  # noqa: E402

from cluster_service.cluster import group_knn  # noqa: E402
from cluster_service.cluster.knn import recall  # noqa: E402

DEV = torch.device("cuda")


def timed(f) -> float:
    torch.cuda.synchronize()
    t = time.perf_counter()
    f()
    torch.cuda.synchronize()
    return time.perf_counter() - t


def matmul_only(xh: torch.Tensor, rows: int, cols: int = 65536) -> None:
    """The fp16 products of every query row with every point, nothing kept: the floor."""
    out = torch.empty((rows, cols), dtype=torch.float16, device=DEV)
    for lo in range(0, len(xh), rows):
        q = xh[lo:lo + rows]
        for c in range(0, len(xh), cols):
            torch.mm(q, xh[c:c + cols].T, out=out[:len(q), :min(cols, len(xh) - c)])


def configs(n: int, d: int) -> None:
    x = (torch.randn(n, d, device=DEV) / d ** 0.5).half()
    xn = (x.float() ** 2).sum(1)
    supers = -(-n // (group_knn.GROUP * group_knn.SUPER))
    out = torch.full((group_knn.QUERY_ROWS, supers * group_knn.SUPER), float("inf"), device=DEV)
    s_out = torch.empty((group_knn.QUERY_ROWS, supers), device=DEV)
    q = x[:group_knn.QUERY_ROWS]
    flops = 2.0 * len(q) * n * d
    t = timed(lambda: torch.mm(q, x[:65536].T))
    t = timed(lambda: [torch.mm(q, x[c:c + 65536].T) for c in range(0, n, 65536)])
    chosen = (group_knn.BLOCK_M, group_knn.BLOCK_N, group_knn.BLOCK_K, group_knn.WARPS, group_knn.STAGES)
    print(f"one block, cuBLAS fp16 matmul: {t * 1e3:.1f} ms ({flops / t / 1e12:.0f} TFLOP/s)", flush=True)
    for bm, bn, bk, warps, stages in [(128, 256, 64, 8, 3), (128, 256, 64, 8, 4), (64, 256, 64, 8, 3),
                                      (128, 256, 32, 8, 4)]:
        group_knn.BLOCK_M, group_knn.BLOCK_N, group_knn.BLOCK_K = bm, bn, bk
        group_knn.WARPS, group_knn.STAGES = warps, stages
        group_knn._KERNEL = None
        try:
            group_knn.triton_group_min(q, x, xn, out, s_out)
            t = min(timed(lambda: group_knn.triton_group_min(q, x, xn, out, s_out)) for _ in range(3))
            print(f"kernel BM={bm} BN={bn} BK={bk} warps={warps} stages={stages}: {t * 1e3:.1f} ms "
                  f"({flops / t / 1e12:.0f} TFLOP/s)", flush=True)
        except Exception as exc:  # a tile the chip cannot hold (shared memory): report and go on
            print(f"kernel BM={bm} BN={bn} BK={bk} warps={warps} stages={stages}: failed: {str(exc)[:120]}")
    group_knn.BLOCK_M, group_knn.BLOCK_N, group_knn.BLOCK_K, group_knn.WARPS, group_knn.STAGES = chosen
    group_knn._KERNEL = None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="points of the whole search (Gaussian)")
    ap.add_argument("--d", type=int, default=768, help="dimensions")
    ap.add_argument("--configs", action="store_true", help="time kernel tiles on one query block first")
    ap.add_argument("--profile", action="store_true", help="torch profiler table of one 1M search first")
    ap.add_argument("--results", type=Path, help="cluster_scale.json to append the row to")
    args = ap.parse_args()
    if args.configs:
        configs(args.n, args.d)
    if args.profile:
        pts = torch.randn(args.n, args.d, device=DEV).cpu().numpy()
        group_knn.knn_groups(pts[:100_000], 16, DEV)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                torch.profiler.ProfilerActivity.CUDA]) as prof:
            group_knn.knn_groups(pts, 16, DEV)
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18), flush=True)
        del pts
    small = torch.randn(200_000, args.d, device=DEV).cpu().numpy()
    got = group_knn.knn_groups(small, 16, DEV)
    base = group_knn.knn_groups(small, 16, DEV, fused=False)
    print(f"200K: recall@16 {recall(small, got, 16, 500):.4f}, rows equal to the unfused search "
          f"{(got == base).all(axis=1).mean():.6f}", flush=True)
    big = torch.randn(args.n, args.d, device=DEV)
    xh = (big / big.norm(dim=1).max()).half()
    host = big.cpu().numpy()
    del big
    t_mm = timed(lambda: matmul_only(xh, group_knn.QUERY_ROWS))
    xh = None  # free the GPU copy before the searches
    found = {}
    t_fused = timed(lambda: found.setdefault("fused", group_knn.knn_groups(host, 16, DEV)))
    t_torch = timed(lambda: found.setdefault("torch", group_knn.knn_groups(host, 16, DEV, fused=False)))
    same = float((found["fused"] == found["torch"]).all(axis=1).mean())
    rec = recall(host, found["fused"], 16, 500)
    print(f"| search {args.n} x {args.d} | seconds | vs fp16 matmul alone |\n|---|---|---|\n"
          f"| fp16 matmul alone (cuBLAS) | {t_mm:.1f} | 1.00 |\n"
          f"| group minima by torch matmuls (baseline) | {t_torch:.1f} | {t_torch / t_mm:.2f} |\n"
          f"| fused Triton kernel | {t_fused:.1f} | {t_fused / t_mm:.2f} |\n"
          f"fused / baseline {t_fused / t_torch:.2f}; rows equal {same:.6f}; recall@16 {rec:.4f}", flush=True)
    if args.results:
        merge_rows("cluster_scale", [{
            "machine": f"1x {torch.cuda.get_device_name()}",
            "n": args.n, "d": args.d, "k": 16, "method": "knn_group_min_probe", "data": "gaussian",
            "device": "cuda", "seconds": round(t_fused, 2), "baseline_seconds": round(t_torch, 2),
            "ratio_vs_baseline": round(t_fused / t_torch, 3), "matmul_only_seconds": round(t_mm, 2),
            "ratio_vs_matmul_only": round(t_fused / t_mm, 3), "rows_equal_baseline": same,
            "recall_at_16": rec,
            "note": "probe_knn_tiles.py: fused Triton distance + group-minimum kernel vs the same "
                    "selection over torch fp16 matmuls (baseline) and the bare fp16 matmuls, same run"}],
            ("n", "d", "k", "method", "data", "device"), args.results)


if __name__ == "__main__":
    main()
