"""Where the heavy steps of the approximate Ward run: k-means, nearest-centroid assignment, kNN search.

``FaissBackend`` is FAISS/NumPy on the CPU (assignment optionally as Ray tasks, one per shard);
``TorchBackend`` is torch matmuls on one device (a GPU, or the CPU to test the GPU code; see
``torch_ops``). The tree code takes a backend instead of branching on a device, and the backend's
``name`` goes into the resume keys because the two paths can differ on near ties.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ..errors import UserError
from ..logs import log_event
from .knn import cell_knn, exact_knn
from .micro import Accumulator, train_kmeans
from .parallel import assign_all
from .params import CPU_GRAPH_MAX, GPU_EXACT_MAX, GPU_GRAPH_MAX
from .source import Source

if TYPE_CHECKING:
    import torch

log = logging.getLogger("cluster_service.cluster")


class ClusterBackend(Protocol):
    """The three operations whose implementation differs between FAISS and torch."""

    #: Name of the path in resume keys and summaries ("faiss", "torch-cpu", "torch-cuda").
    name: str
    #: Whether the assignment runs as Ray tasks.
    uses_ray: bool

    def kmeans(self, sample: np.ndarray, m: int, seed: int, iters: int) -> np.ndarray:
        """Centroids [m, D] float32 of Lloyd k-means on ``sample`` (m distinct seeded initial points)."""
        ...

    def assign(self, source: Source, centroids: np.ndarray, *, where: str, progress: bool = True) -> Accumulator:
        """Every row of ``source`` to its nearest centroid, with per-centroid sums, counts and Σ‖x‖²."""
        ...

    #: Torch device the kNN-graph rounds run on (where the cluster sums live).
    device: torch.device
    #: Every token a leaf up to this many tokens when the config leaves ``graph_max`` at 0.
    graph_max: int
    #: Above that, at most this many k-means leaves by default (assignment costs N·M·D).
    micro_cap: int

    def knn(self, points: np.ndarray, neighbors: int, search: dict[str, int] | None = None) -> np.ndarray:
        """Indices [n, min(neighbors+1, n)] of each point's nearest points (itself usually first);
        ``search`` (``ApproxParams.knn_search_for``) allows the cell search (``knn.cell_knn``) where
        exact search is too dear; a backend whose exact search is affordable ignores it."""
        ...

    #: ``--method exact`` refuses more tokens than this when the config leaves ``exact_max`` at 0.
    exact_max: int

    def exact_ward(self, x: np.ndarray) -> np.ndarray:
        """The exact Ward linkage (scipy format) of the rows of ``x``."""
        ...


class FaissBackend:
    """FAISS k-means and flat L2 search, NumPy assignment in this process or as Ray tasks."""

    name = "faiss"
    graph_max = CPU_GRAPH_MAX
    micro_cap = 8192
    #: fastcluster's N²/2 float64 matrix: 14 GB at 60K tokens.
    exact_max = 60_000

    def __init__(self, use_ray: bool = False, workers: int = 0):
        import torch

        self.uses_ray = use_ray
        self.workers = workers
        self.device = torch.device("cpu")

    def kmeans(self, sample: np.ndarray, m: int, seed: int, iters: int) -> np.ndarray:
        return train_kmeans(sample, m, seed, iters)

    def assign(self, source: Source, centroids: np.ndarray, *, where: str, progress: bool = True) -> Accumulator:
        return assign_all(source, centroids, where=where, use_ray=self.uses_ray, workers=self.workers,
                          progress=progress)

    def knn(self, points: np.ndarray, neighbors: int, search: dict[str, int] | None = None) -> np.ndarray:
        x = np.ascontiguousarray(points, dtype=np.float32)
        kk = min(neighbors + 1, len(x))
        return cell_knn(x, kk, **search) if search else exact_knn(x, kk)

    def exact_ward(self, x: np.ndarray) -> np.ndarray:
        """fastcluster (the reference implementation; the matrix path where it fits in memory)."""
        from .exact import exact_ward

        return exact_ward(x)


class TorchBackend:
    """Torch matmuls on ``device``; assignment in this process, shard by shard (the GPU is this process's)."""

    uses_ray = False

    def __init__(self, device: torch.device):
        self.device = device
        self.name = f"torch-{device.type}"
        # 5M × 768 every token a leaf: the tiled brute-force kNN and the rounds take minutes on one GPU
        self.graph_max = GPU_GRAPH_MAX if device.type == "cuda" else FaissBackend.graph_max
        self.micro_cap = 131_072 if device.type == "cuda" else FaissBackend.micro_cap
        # exact Ward by RNN rounds: 1M tokens took 85 s (× 384) and 209 s (× 768) on one H200
        self.exact_max = GPU_EXACT_MAX if device.type == "cuda" else FaissBackend.exact_max

    def kmeans(self, sample: np.ndarray, m: int, seed: int, iters: int) -> np.ndarray:
        from .torch_ops import train_kmeans_torch

        return train_kmeans_torch(sample, m, seed, iters, self.device)

    def assign(self, source: Source, centroids: np.ndarray, *, where: str, progress: bool = True) -> Accumulator:
        from .torch_ops import assign_all_torch

        return assign_all_torch(source, centroids, where=where, device=self.device, progress=progress)

    def knn(self, points: np.ndarray, neighbors: int, search: dict[str, int] | None = None) -> np.ndarray:
        """Always exact (tiled brute force): on a GPU that is affordable to 5M points."""
        from .group_knn import knn_groups

        return knn_groups(points, neighbors, self.device)

    def exact_ward(self, x: np.ndarray) -> np.ndarray:
        """Reciprocal-nearest-neighbour rounds with float64 brute-force neighbours on the device
        (``rnn_ward``): O(N·D) memory, where fastcluster needs N²/2 doubles (4 TB at 1M)."""
        from .rnn_ward import rnn_ward

        return rnn_ward(x, self.device)


def resolve_backend(name: str, *, use_ray: bool = False, workers: int = 0) -> ClusterBackend:
    """The backend of the config's ``device`` value ('auto', 'cpu', 'cuda', 'torch-cpu').

    ``use_ray`` (Ray is initialised) spreads the FAISS path's assignment over Ray tasks; a torch
    device assigns in this process whatever Ray is doing (one GPU beats many CPU tasks here).
    """
    import torch

    if name == "cpu":
        return FaissBackend(use_ray, workers)
    if name == "torch-cpu":
        device = torch.device("cpu")
    elif name == "auto":
        if not torch.cuda.is_available():
            return FaissBackend(use_ray, workers)
        device = torch.device("cuda")
    elif name == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda: torch sees no CUDA device here; use --device auto or cpu")
        device = torch.device("cuda")
    else:
        raise UserError(f"--device {name}: expected auto, cpu, cuda or torch-cpu")
    if use_ray:
        log_event(log, "assignment on the torch device in this process, not as Ray tasks", device=str(device))
    return TorchBackend(device)
