"""Clustering stage: exact Ward reference, scalable approximate Ward, cuts, concept tables, quality.

Where the clustering happens: ``approx.ward_tree`` (sample, k-means, assign, link, cut), with its
parameters in ``params.ApproxParams``, its heavy steps on a ``backend`` (FAISS or torch) and its
intermediate results in a ``checkpoint`` (the run store, or nothing). The cores (``exact``, ``micro``,
``graph``, ``ward``, ``cut``, ``quality``, ``concepts``) take and return arrays; ``stage`` reads the
run store, orchestrates (optionally over Ray) and writes the assignments and concept tables, whose
schema (``concepts.CONCEPT_SCHEMA``) this package owns.
"""

from ..stage import Stage
from .config import ClusterConfig

STAGE = Stage(
    name="cluster", config=ClusterConfig, section="cluster",
    reads=("activations.zarr/layer_{L}", "tokens.parquet", "sentences.parquet"),
    writes=("clusters/layer_{L}/", "concepts/layer_{L}_k{K}.parquet"),
    entry="cluster_service.cluster.stage:cluster_run",
)

__all__ = ["STAGE", "ClusterConfig"]
