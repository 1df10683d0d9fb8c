"""The parameters of the approximate Ward, with their defaults written once.

The stage (``ClusterConfig`` takes its defaults from here), the quality report and the tests all build
the tree from one ``ApproxParams``, so a default changed here changes it everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Above ``graph_max`` tokens, k-means micro-clusters: assignment costs N·M·D and k-means training
#: sample·M·D per iteration, so M is capped to keep it within minutes on 2 cores.
MICRO_CAP = 8192
#: Lower bound of micro-clusters per requested concept: ARI against exact Ward collapses as K nears M.
MICRO_PER_K = 10
#: Every token a leaf up to this many tokens on the CPU: 1M real MiniLM tokens × 384 took 15.9 min and
#: 5.3 GiB on the 2-core box (400K: the k-means-leaf tree took 1.8 min against 9.1, at ARI 0.37 / 0.44 /
#: 0.61 to it); above, k-means leaves unless ``--graph-max`` asks for more.
CPU_GRAPH_MAX = 1_000_000
#: And on a GPU (tiled brute-force kNN, rounds on the device).
GPU_GRAPH_MAX = 5_000_000
#: Exact Ward (RNN rounds, float64 brute force) on a GPU up to this many tokens by default: its
#: time grows as ~N²·D (1M × 768 took 209 s on one H200, so 2M would take ~14 min).
GPU_EXACT_MAX = 1_000_000


@dataclass(frozen=True)
class ApproxParams:
    """How the approximate Ward tree is built: leaves, k-means, kNN graph, dense Ward (see ``approx``)."""

    micro: int = 0
    """Leaves M of the tree; 0 picks them by ``leaves``."""
    graph_max: int = 0
    """Up to this many tokens every token is a leaf (kNN-graph Ward over the tokens); 0 = the
    backend's: ``CPU_GRAPH_MAX`` on the CPU (cell-probed kNN, O(N·D) memory), ``GPU_GRAPH_MAX`` on a
    GPU (tiled brute-force kNN)."""
    dense_max: int = 8192
    """Dense weighted Ward (an M² float64 matrix) at most this wide; kNN-graph Ward below."""
    neighbors: int = 16
    """Neighbours per leaf in the kNN graph of kNN-graph Ward."""
    knn_exact_max: int = 150_000
    """The CPU's kNN search is exact (FAISS flat, N²·D) up to this many points, the cell search above:
    on 2 cores exact search over 280K real MiniLM vectors would take 370 s and the cell search takes
    188 s, so they cross near 140–160K (exact is also recall 1.0)."""
    knn_probes: int = 4
    """Cells of ~1000 points probed per query in each cell layout of the CPU's kNN search (work grows
    linearly with it)."""
    knn_partitions: int = 4
    """Independent cell layouts (seeds) whose candidates the CPU's kNN search merges: each puts its
    cell boundaries elsewhere (recall@16 on 280K real MiniLM vectors: 1 × 16 probes 0.91, 4 × 4
    probes 0.954)."""
    knn_refine: int = 1
    """Neighbour-of-neighbour refinement rounds after the cell layouts (0.954 → 0.968 there)."""
    sample_per_micro: int = 32
    """k-means trains on a seeded sample of this many tokens per micro-cluster (capped at N)."""
    kmeans_iters: int = 10
    """Lloyd iterations of the micro-cluster k-means."""
    seed: int = 0
    """Seed of the sample and the k-means initialisation."""

    def leaves(self, n: int, k_max: int, graph_max: int = CPU_GRAPH_MAX, micro_cap: int = MICRO_CAP) -> int:
        """M: ``micro`` when set, else N up to ``graph_max`` tokens (the field, or the backend's
        ``graph_max`` when the field is 0), else min(N, max(10·K_max, ``micro_cap``)) (the backend's:
        8192 on the CPU, 131,072 on a GPU, where more leaves track every-token Ward better: ARI vs the
        every-token tree at 1.1M real tokens 0.41 / 0.44 / 0.47 at K=600 for M = 8K / 32K / 128K).

        Quality against exact Ward is set by how Ward-like the leaves are: k-means micro-clusters of
        even 1.25–4 tokens lose 15–30% of the ARI that exact Ward reaches against itself, while
        kNN-graph Ward over the tokens themselves matches exact Ward as well as exact Ward matches its
        own 90% subsample. So tokens are the leaves while the kNN search is affordable; above that,
        as many micro-clusters as the N·M·D assignment budget allows (8192), never fewer than 10·K_max
        so every cut stays far from M.
        """
        if self.micro:
            return int(self.micro)
        if n <= (self.graph_max or graph_max):
            return int(n)
        return int(min(n, max(MICRO_PER_K * k_max, micro_cap)))

    def knn_search_for(self, n: int) -> dict[str, int] | None:
        """How the CPU searches the kNN graph over n points: None (exact) up to ``knn_exact_max``,
        else the cell search's probes, layouts, refinement rounds and seed."""
        if n <= self.knn_exact_max:
            return None
        return {"probes": self.knn_probes, "partitions": self.knn_partitions, "refine": self.knn_refine,
                "seed": self.seed}

    def sample_size(self, n: int, m: int) -> int:
        """Tokens the k-means trains on: ``sample_per_micro`` per micro-cluster, at least M, at most N."""
        return int(min(n, max(m, self.sample_per_micro * m)))
