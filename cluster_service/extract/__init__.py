"""Activation extraction: a transformer over the corpus, one vector per word at every requested layer."""

from ..stage import Stage
from .config import ExtractConfig

STAGE = Stage(
    name="extract", config=ExtractConfig, section="extract",
    reads=("tokens.parquet", "sentences.parquet", "run.json: tokens"),
    writes=("activations.zarr/layer_{L}", "extract_done/shard_{i}",
            "run.json: config.extract, model, layers, shards, stages.extract.forward"),
    entry="cluster_service.extract.stage:extract_run",
    check="cluster_service.extract.stage:extract_check",
)

__all__ = ["STAGE", "ExtractConfig"]
