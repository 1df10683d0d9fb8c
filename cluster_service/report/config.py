"""The report stage's one config: every field is also a ``cluster-service report`` flag."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from ..configs import NonNegativeInt, PositiveInt, Range


@dataclass
class ReportConfig:
    """A static HTML concept browser of the run, written under RUN/report/ (open index.html from disk)."""

    layers: list[NonNegativeInt] = field(default_factory=list)
    """Layers to show (comma-separated); empty means every layer with a concept table."""
    k: list[PositiveInt] = field(default_factory=list)
    """Numbers of concepts (K) to show; empty means every K clustered."""
    top_words: Annotated[int, Range(min=1, max=50)] = 8
    """Word types per concept in the concept list (the concept page shows up to 50)."""
    chunk: PositiveInt = 100
    """Concepts per concept-page data file: the page loads only the file holding the concept it shows."""
