"""Labels for concepts: an async, rate-limited, cached pool over an OpenAI-compatible endpoint, and an
offline baseline labeller (not an LLM) for runs without a key or a network, behind one ``Labeller``
interface (``labeller``).

Entry points for other stages and readers: ``cluster_service.annotate.stage.annotate_run(store, layer,
k, cfg)`` writes ``labels/layer_{L}_k{K}/<annotator>.parquet``; ``cluster_service.annotate.labels.
concepts_with_labels(store, layer, k)`` is the one way to read a concept table with its labels.
"""

from .config import AnnotateConfig

__all__ = ["AnnotateConfig"]
