"""What ``cluster-service export`` is asked for: every field is also a flag."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..configs import NonNegativeInt, PositiveInt


@dataclass
class ExportConfig:
    """Publish a run's concepts as a dataset: the paper's TCN layout, or Parquet / JSONL tables."""

    format: Literal["tcn", "parquet", "jsonl"] = "tcn"
    """'tcn': the layout of the paper's Transformers ConceptNet (sentences.json, layer{L}/clusters-{K}.txt,
    annotations.json), readable by its viewer; 'parquet' / 'jsonl': one row per concept and one per token
    occurrence, with a README.md data card."""
    out: str | None = None
    """Folder (or object-store URL) to write into; default RUN/export/<format>/."""
    layers: list[NonNegativeInt] = field(default_factory=list)
    """Layers to export (comma-separated); empty means every layer with a concept table. TCN always adds
    layer 0 when the run has it: the viewer opens there."""
    k: list[PositiveInt] = field(default_factory=list)
    """Numbers of concepts to export; empty means all (TCN: one K per layer, default the largest)."""
    annotator: str | None = None
    """Whose labels TCN's annotations.json carries (default: each table's default annotator)."""
