"""Configuration of the cluster stage (field docstrings become ``--help``)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal

from ..configs import NonNegativeInt, PositiveInt
from .params import ApproxParams

#: The one place the tree's defaults are written; the fields below take theirs from it.
APPROX = ApproxParams()


@dataclass
class ClusterConfig:
    """Cluster each layer's word vectors with (approximate) Ward and cut the tree at each K."""

    layers: list[NonNegativeInt] = field(default_factory=list)
    """Layers to cluster (comma-separated); empty or 'all' means every stored layer."""
    k: list[PositiveInt] = field(default_factory=lambda: [50])
    """Numbers of concepts to cut the tree at (comma-separated, e.g. 600,200,50); one tree serves all."""
    method: Literal["approx", "exact"] = "approx"
    """'approx': kNN-graph Ward over the tokens, or k-means micro-clusters + size-weighted Ward
    (scales to millions of tokens); 'exact': Ward on every token, no approximation (on the CPU
    fastcluster, up to ~60K tokens; with --device cuda reciprocal-nearest-neighbour rounds with
    brute-force neighbours: 1M tokens × 768 in 3.5 min on one H200)."""
    micro: NonNegativeInt = APPROX.micro
    """Leaves of the tree: M k-means micro-clusters; 0 picks M = N (every token a leaf) up to
    --graph-max tokens, else min(N, max(10·K_max, 8192 on the CPU or 131072 on a GPU)); M = N
    means no k-means."""
    graph_max: NonNegativeInt = APPROX.graph_max
    """The default M rule makes every token a leaf up to this many tokens; 0 = 1,000,000 on the CPU
    (15.9 min and 5.3 GiB on 2 cores at 1M real tokens × 384), 5,000,000 with --device cuda (exact
    brute-force kNN on the GPU: 4.8 min at 5M × 768 on one H200)."""
    dense_max: PositiveInt = APPROX.dense_max
    """Ward runs on a dense M² float64 matrix at most this wide; with more leaves, kNN-graph Ward
    (reciprocal nearest neighbours on a kNN graph) builds the bottom of the tree first."""
    neighbors: PositiveInt = APPROX.neighbors
    """Neighbours per leaf in the kNN graph of kNN-graph Ward (more: closer to exact, slower)."""
    knn_exact_max: PositiveInt = APPROX.knn_exact_max
    """On the CPU the kNN search is exact up to this many leaves (N²·D), the cell search above (N·D):
    they cost the same near 160K on 2 cores."""
    knn_probes: PositiveInt = APPROX.knn_probes
    """Cells of ~1000 leaves each query reads in each cell layout of the CPU's kNN search (time grows
    linearly with it)."""
    knn_partitions: PositiveInt = APPROX.knn_partitions
    """Independent cell layouts the CPU's kNN search merges (recall@16 on 280K real MiniLM vectors:
    0.954 with 4 layouts of 4 probes, against 0.91 for one layout of 16; time grows linearly)."""
    knn_refine: NonNegativeInt = APPROX.knn_refine
    """Neighbour-of-neighbour refinement rounds after the cell layouts (0.954 → 0.968 there)."""
    sample_per_micro: PositiveInt = APPROX.sample_per_micro
    """k-means trains on a seeded sample of this many tokens per micro-cluster (capped at N)."""
    kmeans_iters: PositiveInt = APPROX.kmeans_iters
    """Lloyd iterations of the micro-cluster k-means."""
    seed: NonNegativeInt = APPROX.seed
    """Seed of every random choice (sample, k-means, examples): same input + config + seed → same output."""
    examples: NonNegativeInt = 5
    """Example occurrences (with their sentence) stored per concept."""
    evaluate: NonNegativeInt = 0
    """If > 0: quality report on a seeded sample of this many tokens (exact Ward vs approximate, k-means
    baseline, exact Ward's stability on a 90 percent subsample) at every K; exact Ward's memory bounds it (~30K)."""
    exact_max: NonNegativeInt = 0
    """Refuse exact Ward above this many tokens; 0 = the device's: 60,000 on the CPU (fastcluster's
    N²/2 float64 matrix, 14 GB there), 1,000,000 with --device cuda (time grows as N²·D)."""
    address: str = ""
    """Ray cluster for the assignment step and the layer tasks: '' = this process (or the Ray already
    initialised in it), 'local' = start a local Ray, anything else = ray.init(address=...)."""
    workers: NonNegativeInt = 0
    """Ray tasks in flight at once (0: the cluster's CPU count); each holds one shard in memory."""
    layer_tasks: NonNegativeInt = 0
    """Layers clustered at once, on Ray actors that take one layer after another (with Ray: --address, or
    the Ray a job runs in): 0 = one actor per GPU Ray sees, each holding one GPU (without GPUs, or with
    --device cpu, the layers go one after another in this process); 1 = always one after another here;
    N > 1 = N actors, each holding a GPU when Ray has them, else the CPUs divided by N."""
    device: Literal["auto", "cpu", "cuda", "torch-cpu"] = "auto"
    """Where k-means, assignment and the kNN search run: 'auto' = 'cuda' when torch sees a GPU, else
    'cpu'; 'cpu' = FAISS/NumPy on the CPU (assignment as Ray tasks with --address); 'cuda' = torch
    matmuls on the GPU, assignment in this process shard by shard (Ray is not used for it);
    'torch-cpu' = the GPU code on the CPU (to check it without a GPU; slower than 'cpu'). With
    --address and a GPU in this process, 'auto' picks the GPU (one GPU beats many CPU tasks here);
    pass 'cpu' to spread the assignment over Ray's CPUs. Results can differ between devices on near
    ties; on one device they are reproducible."""

    def approx_params(self) -> ApproxParams:
        """The tree-building parameters of this config."""
        return ApproxParams(**{f.name: getattr(self, f.name) for f in fields(ApproxParams)})
