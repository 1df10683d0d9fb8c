"""The one interface every labeller has, LLM or not: ``label(rows)`` gives one ``Outcome`` per concept.

The stage (``stage.annotate_run``) does not know which labeller it drives: the offline baseline
(``baseline.BaselineLabeller``) and the pool over an OpenAI-compatible endpoint (``llm.LLMLabeller``)
both estimate a run without doing it (``estimate``, for ``--dry-run``) and label concept rows
(``label``), and say under which annotator name their labels are filed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .usage import Usage

OK = "ok"
TRUNCATED = "truncated"  # a label, but the reply was cut off at the completion limit (finish_reason length)
FAILED = "failed"


@dataclass
class Outcome:
    """What became of one concept: a label (``ok`` or ``truncated``) or ``failed`` with the reason in
    ``error``; ``truncated`` also says why in ``error``."""

    concept: int
    status: str
    label: str | None = None
    description: str | None = None
    type: str | None = None
    raw: str | None = None
    error: str | None = None
    prompt_variant: str = ""
    model: str | None = None
    calls: int = 0
    cached: bool = False
    prompt_tokens: int = 0  # LLM tokens, as the endpoint counted them
    completion_tokens: int = 0
    seconds: float = 0.0


@dataclass
class Labelling:
    """One labeller's run over a concept table: the outcomes and what they cost."""

    outcomes: list[Outcome]
    model: str | None
    usage: Usage = field(default_factory=Usage)
    price: tuple[float, float] | None = (0.0, 0.0)  # USD per million LLM tokens; None when unknown
    latencies: list[float] = field(default_factory=list)
    fatal: str | None = None  # why the endpoint stopped the whole run (bad key, unknown model)
    concurrency: dict[str, Any] | None = None  # the adaptive limit: settled value, ceiling, changes


class Labeller(Protocol):
    backend: str
    annotator: str  # the labels file's name: labels/layer_{L}_k{K}/<annotator>.parquet
    prompt: str
    is_baseline: bool

    def estimate(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """The dry-run summary: calls to make, LLM tokens and cost, sending and writing nothing."""
        ...

    def label(self, rows: Sequence[dict[str, Any]]) -> Labelling:
        """Label every concept row (CONCEPT_SCHEMA dicts), one outcome per row, in any order."""
        ...
