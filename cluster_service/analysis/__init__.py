"""Interpretation with the concepts (the paper's second half): neuron ranking, probes with selectivity,
alignment with a real tagger, concepts across layers, stability, and label scoring by an LLM.

Entry point: ``stage.analyze_run(store, cfg)``; per layer and K ``stage.analyze_table``. Each step has a
pure array module (``neurons``, ``probe``, ``align``, ``layers``, ``stability``, ``score``); ``steps``
feeds them from the run store (``inputs.LayerInputs``) and ``stage`` writes their tables under
``analysis/``.
"""

from ..stage import Stage
from .config import AnalyzeConfig

STAGE = Stage(
    name="analyze", config=AnalyzeConfig, section="analyze",
    reads=("activations.zarr/layer_{L}", "tokens.parquet", "sentences.parquet", "concepts/layer_{L}_k{K}.parquet",
           "clusters/layer_{L}/assignments_k{K}.npy", "labels/layer_{L}_k{K}/<annotator>.parquet",
           "annotations.sqlite"),
    writes=("analysis/tags.parquet", "analysis/layer_{L}_k{K}/<step>.parquet", "analysis/layer_{L}_k{K}/summary.json",
            "analysis/layers_{L}_{N}_k{K}/matches.parquet", "analysis/layers_{L}_{N}_k{K}/contingency.parquet"),
    entry="cluster_service.analysis.stage:analyze_run",
    check="cluster_service.analysis.stage:check",
)

__all__ = ["STAGE", "AnalyzeConfig"]
