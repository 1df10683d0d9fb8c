"""Labels for concepts: an async, rate-limited, cached pool over an OpenAI-compatible endpoint, and an
offline baseline labeller (not an LLM) for runs without a key or a network.

Entry point for other stages: ``cluster_service.annotate.stage.annotate_run(store, layer, k, cfg)``.
"""

from .config import AnnotateConfig

__all__ = ["AnnotateConfig"]
