"""Clustering stage: exact Ward reference, scalable approximate Ward, cuts, concept tables, quality.

The cores (``exact``, ``micro``, ``ward``, ``cut``, ``quality``, ``concepts``) take and return arrays;
``stage`` reads the run store, orchestrates (optionally over Ray) and writes results.
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
