"""Labels for concepts: an async, rate-limited, cached pool over an OpenAI-compatible endpoint, and an
offline baseline labeller (not an LLM) for runs without a key or a network, behind one ``Labeller``
interface (``labeller``).

Entry points: ``stage.annotate_run(store, cfg)`` labels every concept table (or ``cfg.layers`` /
``cfg.k``), ``stage.annotate_table(store, layer, k, cfg)`` one of them, into
``labels/layer_{L}_k{K}/<annotator>.parquet``; ``labels.concepts_with_labels(store, layer, k)`` is the
one way to read a concept table with its labels.
"""

from ..stage import Stage
from .config import AnnotateConfig

STAGE = Stage(
    name="annotate", config=AnnotateConfig, section="annotate",
    reads=("concepts/layer_{L}_k{K}.parquet",),
    writes=("labels/layer_{L}_k{K}/<annotator>.parquet", "labels/layer_{L}_k{K}/default.json",
            "annotations.sqlite"),
    entry="cluster_service.annotate.stage:annotate_run",
)

__all__ = ["STAGE", "AnnotateConfig"]
