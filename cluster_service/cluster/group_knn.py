"""Exact brute-force kNN on a GPU whose selection costs a fraction of its matmul: group minima.

Selecting the k smallest of 5M distances per query costs far more than computing them (on an H200,
a top-k over an [8192, 65536] tile took ~14× the tile's fp16 matmul), so the distances are never
selected from directly. A fused kernel (``triton_group_min``; ``torch_group_min`` is the same
arithmetic as plain torch ops, for CPUs and tests) computes each query's distances to a block of
columns and keeps only the minimum of every group of ``GROUP`` consecutive columns: the [R, N]
matrix never exists, only its [R, N/GROUP] group minima. Selection then runs two levels down:

1. the minima of super-groups (``SUPER`` groups) and the kc smallest of those;
2. the kc smallest group minima inside the chosen super-groups;
3. the exact fp32 distances ‖x − y‖² to the members of the chosen groups, ranked (ties by index).

Each level is exact: a group holding one of the row's kc smallest entries e has a minimum ≤ e, and
every group with a smaller minimum holds a distinct entry smaller than e, of which there are fewer
than kc; the same holds for super-groups. The kernel's fp16 operands (fp32 accumulation) only
reorder groups whose minima agree to ~1e-3 of ‖x‖², and the ``RERANK_EXTRA`` extra groups absorb
that, so the result is the exact neighbours up to such near ties (recall against float64 brute
force is measured by ``bench_cluster_scale.py knn``). Everything is a fixed sequence of kernels with
fixed shapes and no atomics, so one input gives the same neighbours on one device.
"""

from __future__ import annotations

import math

import numpy as np
import torch

#: Columns whose distance minimum the kernel keeps (the [R, N] distances shrink 16× as they are made).
GROUP = 16
#: Groups per super-group of the first selection level: the kernel's tile is one super-group wide,
#: so it writes the super-group minima too (``BLOCK_N`` = GROUP · SUPER).
SUPER = 16
#: Groups kept beyond k per query for the exact re-rank (absorb fp16's reordering of near ties).
RERANK_EXTRA = 16
#: Query rows per block: the [rows, N/GROUP] fp32 group minima (5.1 GB at 4096 × 5M).
QUERY_ROWS = 4096
#: Query rows per exact re-rank chunk (the gathered [rows, kc·GROUP, D] fp32 rows: 1.7 GB at D = 768).
RERANK_ROWS = 1024
#: Columns per torch matmul of ``torch_group_min`` (a multiple of GROUP).
TORCH_COLS = 65536
#: The kernel's tile and its K step, the fastest of six on an H200 (probe_knn_tiles.py --configs: 561
#: TFLOP/s against cuBLAS's 668 for the bare fp16 matmul); D is zero-padded to a multiple of BLOCK_K.
BLOCK_M, BLOCK_N, BLOCK_K, WARPS, STAGES = 128, 256, 64, 8, 3


def triton_available(device: torch.device) -> bool:
    """The fused kernel runs on CUDA devices when Triton is importable (torch's CUDA builds ship it)."""
    if device.type != "cuda":
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def knn_groups(points: np.ndarray, neighbors: int, device: torch.device, *, fused: bool | None = None,
               rows: int = QUERY_ROWS) -> np.ndarray:
    """Indices [n, min(neighbors + 1, n)] of each point's nearest points (itself usually first).

    On a GPU the operands are float16, scaled so that every ‖x‖² ≤ 1 (no overflow); on the CPU
    they stay fp32. ``fused``: the Triton kernel (default: where ``triton_available``).
    """
    x = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32)).to(device)
    n, d = x.shape
    kk = min(neighbors + 1, n)
    kc = min(kk + RERANK_EXTRA, n)
    if fused is None:
        fused = triton_available(device)
    norms = (x * x).sum(dim=1)
    scale = 1.0 / float(norms.max().clamp(min=1e-30).sqrt())
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    pad = (-d) % BLOCK_K if fused else 0
    xm = torch.nn.functional.pad(x * scale, (0, pad)).to(dtype)
    xn = (xm.float() ** 2).sum(dim=1)  # the norms of the operands the kernel multiplies
    groups = math.ceil(n / GROUP)
    supers = math.ceil(groups / SUPER)
    minima = torch.full((min(rows, n), supers * SUPER), float("inf"), device=device)
    super_minima = torch.empty((min(rows, n), supers), device=device)
    out = torch.empty((n, kk), dtype=torch.int64, device=device)
    produce = triton_group_min if fused else torch_group_min
    for lo in range(0, n, rows):
        r = min(rows, n - lo)
        gm, sm = minima[:r], super_minima[:r]
        produce(xm[lo:lo + r], xm, xn, gm, sm)
        top_super = torch.topk(sm, min(kc, supers), dim=1, largest=False, sorted=False).indices
        cand = (top_super[:, :, None] * SUPER + torch.arange(SUPER, device=device)).reshape(r, -1)
        pick = torch.topk(torch.gather(gm, 1, cand), min(kc, cand.shape[1]), dim=1, largest=False,
                          sorted=False).indices
        top_groups = torch.gather(cand, 1, pick)
        members = (top_groups[:, :, None] * GROUP + torch.arange(GROUP, device=device)).reshape(r, -1)
        out[lo:lo + r] = _rerank(x, norms, lo, members, kk)
    return out.cpu().numpy()


def _rerank(x: torch.Tensor, norms: torch.Tensor, lo: int, members: torch.Tensor, kk: int) -> torch.Tensor:
    """The kk of ``members`` nearest rows lo.. of ``x`` by fp32 ‖x‖² + ‖y‖² − 2·x·y (FAISS's form:
    one gather and one batched product, a third of the memory traffic of ‖x − y‖²), ties by index;
    columns past the last point, in a final partial group, are never chosen."""
    n = len(x)
    members = torch.sort(members, dim=1).values  # index order first: the stable sort keeps it in ties
    exact = torch.empty(members.shape, device=x.device)
    for a in range(0, len(members), RERANK_ROWS):
        m = members[a:a + RERANK_ROWS]
        q = lo + a
        mc = m.clamp(max=n - 1)
        dot = torch.bmm(x[mc], x[q:q + len(m), :, None])[:, :, 0]
        dist = norms[mc] + norms[q:q + len(m), None] - 2.0 * dot
        exact[a:a + len(m)] = torch.where(m < n, dist, float("inf"))
    order = torch.sort(exact, dim=1, stable=True).indices[:, :kk]
    return torch.gather(members, 1, order)


def torch_group_min(q: torch.Tensor, x: torch.Tensor, xn: torch.Tensor, out: torch.Tensor,
                    super_out: torch.Tensor, cols: int = TORCH_COLS) -> None:
    """out[:, g] = min over the columns j of group g of (‖x_j‖² − 2·q·x_j), as torch matmuls, and
    super_out[:, s] = the minimum of super-group s's groups.

    The query's own ‖q‖² is left out: it shifts a row's distances alike, so ranks and minima keep
    their order. Padding columns of ``out`` (past the last group) are left as they are (+inf).
    """
    n = len(x)
    xn = xn.to(q.dtype)
    for c in range(0, n, cols):
        e = min(c + cols, n)
        dist = torch.addmm(xn[None, c:e], q, x[c:e].T, beta=1.0, alpha=-2.0)
        if (e - c) % GROUP:
            dist = torch.nn.functional.pad(dist, (0, GROUP - (e - c) % GROUP), value=float("inf"))
        out[:, c // GROUP:c // GROUP + dist.shape[1] // GROUP] = dist.view(len(q), -1, GROUP).amin(dim=2)
    super_out[:] = out.view(len(q), -1, SUPER).amin(dim=2)


def triton_group_min(q: torch.Tensor, x: torch.Tensor, xn: torch.Tensor, out: torch.Tensor,
                     super_out: torch.Tensor) -> None:
    """``torch_group_min`` as one Triton kernel: the distance tile never leaves the chip."""
    import triton

    if BLOCK_N != GROUP * SUPER:
        raise ValueError(f"the kernel's tile ({BLOCK_N} columns) must be one super-group ({GROUP * SUPER})")
    kernel = _kernel()
    nq, d = q.shape
    n = len(x)
    groups = math.ceil(n / GROUP)
    grid = (triton.cdiv(nq, BLOCK_M), triton.cdiv(n, BLOCK_N))
    kernel[grid](q, x, xn, out, super_out, nq, n, groups, d, q.stride(0), x.stride(0), out.stride(0),
                 super_out.stride(0), BM=BLOCK_M, BN=BLOCK_N, BK=BLOCK_K, G=GROUP, num_warps=WARPS,
                 num_stages=STAGES)


_KERNEL = None


def _kernel():
    """The Triton kernel, compiled on first use (importing this module needs no Triton)."""
    global _KERNEL
    if _KERNEL is not None:
        return _KERNEL
    import triton
    import triton.language as tl

    @triton.jit
    def group_min(Q, X, XN, OUT, SOUT, nq, n, groups, d, stride_q, stride_x, stride_o, stride_s,
                  BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, G: tl.constexpr):
        rm = tl.program_id(0) * BM + tl.arange(0, BM)
        rn = tl.program_id(1) * BN + tl.arange(0, BN)
        rk = tl.arange(0, BK)
        q_ptr = Q + rm[:, None].to(tl.int64) * stride_q + rk[None, :]
        x_ptr = X + rn[:, None].to(tl.int64) * stride_x + rk[None, :]
        q_ok = rm[:, None] < nq
        x_ok = rn[:, None] < n
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for _ in range(0, d, BK):
            a = tl.load(q_ptr, mask=q_ok, other=0.0)
            b = tl.load(x_ptr, mask=x_ok, other=0.0)
            acc = tl.dot(a, tl.trans(b), acc)
            q_ptr += BK
            x_ptr += BK
        xn = tl.load(XN + rn, mask=rn < n, other=float("inf"))
        dist = xn[None, :] - 2.0 * acc
        gmin = tl.min(tl.reshape(dist, (BM, BN // G, G)), axis=2)
        ro = tl.program_id(1) * (BN // G) + tl.arange(0, BN // G)
        o_ptr = OUT + rm[:, None].to(tl.int64) * stride_o + ro[None, :]
        tl.store(o_ptr, gmin, mask=(rm[:, None] < nq) & (ro[None, :] < groups))
        tl.store(SOUT + rm.to(tl.int64) * stride_s + tl.program_id(1), tl.min(gmin, axis=1), mask=rm < nq)

    _KERNEL = group_min
    return _KERNEL
