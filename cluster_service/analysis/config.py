"""The analyze stage's one config (``[analyze]`` section): every field is also a ``cluster-service analyze``
flag (and ``--analyze-<field>`` on ``run``). The scorer LLM takes annotate's backend fields prefixed
``scorer_``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from ..configs import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Range

#: every step, in the order they run (probe and neurons share one read of the layer; neurons ranks by the
#: probe's weights too, so it comes second)
STEPS = ("probe", "neurons", "align", "layers", "stability", "score")

Fraction = Annotated[float, Range(min=0.0, max=1.0)]
OpenFraction = Annotated[float, Range(above=0.0, max=1.0)]


@dataclass
class AnalyzeConfig:
    """Interpret the concepts: neuron ranking, probes with selectivity, tagger alignment, concepts across
    layers, stability, and label scoring by an LLM."""

    layers: list[NonNegativeInt] = field(default_factory=list)
    """Layers to analyze (comma-separated); empty or 'all' means every layer that has a concept table."""
    k: list[PositiveInt] = field(default_factory=list)
    """Numbers of concepts (K) to analyze; empty means the largest K clustered in each layer."""
    steps: list[str] = field(default_factory=lambda: list(STEPS))
    """Steps to run (comma-separated): probe, neurons, align, layers, stability, score."""
    seed: NonNegativeInt = 0
    """Seed of every sample, split, control task and bootstrap: same input + config + seed, same tables."""
    progress: bool = True
    """Show progress bars on a terminal."""

    top_neurons: PositiveInt = 10
    """Neurons listed per concept (by Probeless and by probe weight mass); the super/sub-concept overlap
    is over this many."""

    probe_epochs: PositiveInt = 10
    """Training epochs of every probe (NeuroX's default)."""
    probe_batch: PositiveInt = 32
    """Mini-batch size per probe (NeuroX's default, 32: with 512 a concept of a few hundred tokens gets one
    update per epoch and its probe stays near chance)."""
    probe_lr: PositiveFloat = 0.01
    """Adam learning rate of the probes (NeuroX's 0.001 leaves probes of concepts under ~1,000 tokens
    under-trained in 10 epochs)."""
    probe_l1: NonNegativeFloat = 0.0
    """Elastic-net L1 weight of the probes (0: off)."""
    probe_l2: NonNegativeFloat = 0.0
    """Elastic-net L2 weight of the probes (0: off)."""
    probe_max_members: PositiveInt = 5000
    """Members sampled per concept for its probe (seeded; with as many non-members): bounds the work of
    very large concepts."""

    align_threshold: OpenFraction = 0.9
    """A concept aligns with a tag when at least this share of its tokens carry it (ConceptX's rule)."""
    tag_processes: NonNegativeInt = 0
    """spaCy processes tagging the sentences (0: one per core)."""

    next_layer: NonNegativeInt | None = None
    """Layer to compare each analyzed layer with (default: the next layer with a concept table at K)."""
    persist_share: OpenFraction = 0.5
    """A concept persists when its best match holds more than this share of it and it more than this share
    of the match; it merges when only the first holds."""
    split_share: OpenFraction = 0.2
    """A concept splits when at least two next-layer concepts each take this share of it (and none takes
    the persist share)."""

    stability_tokens: PositiveInt = 50_000
    """Seeded sample of tokens the bootstrap reclusters (capped at the layer's tokens)."""
    stability_replicates: PositiveInt = 5
    """Bootstrap replicates."""
    stability_fraction: OpenFraction = 0.9
    """Share of the sample each replicate reclusters."""

    annotator: str | None = None
    """Score only this annotator's labels (default: every annotator's)."""
    score_members: PositiveInt = 20
    """Member occurrences shown per concept (all of them when the concept is smaller)."""
    score_nonmembers: PositiveInt = 20
    """Non-member occurrences shown per concept: half random, half hard (sibling and nearest concepts)."""
    score_per_prompt: PositiveInt = 5
    """Occurrences per scoring prompt; the scorer answers a list of this many 0/1."""
    score_max_concepts: NonNegativeInt = 0
    """Score at most this many concepts per layer (seeded choice; 0: all)."""

    scorer_backend: Literal["baseline", "openai"] = "baseline"
    """'openai': score labels with any OpenAI-compatible chat endpoint; 'baseline': there is no scorer, and
    the score step is skipped."""
    scorer_base_url: str | None = None
    """Base URL of the scorer's OpenAI-compatible endpoint (default: OpenAI's)."""
    scorer_model: str = "gpt-4o-mini"
    """Chat model name of the scorer."""
    scorer_api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the scorer's API key (never logged or stored)."""
    scorer_max_tokens: PositiveInt = 30
    """Completion cap per scoring call in LLM tokens."""
    scorer_rpm: PositiveFloat = 500.0
    """Scorer requests per rate window."""
    scorer_tpm: PositiveFloat = 200_000.0
    """Scorer LLM tokens per rate window."""
    scorer_rate_window_s: PositiveFloat = 60.0
    """Length of the scorer's rate window in seconds."""
    scorer_concurrency: PositiveInt = 16
    """Most scoring requests in flight at once."""
    scorer_timeout_s: PositiveFloat = 60.0
    """Per-request timeout in seconds."""
    scorer_max_retries: NonNegativeInt = 8
    """Retries per call after 429, 5xx and timeouts (an unreadable answer is asked again once)."""
    scorer_backoff_base_s: PositiveFloat = 1.0
    """First backoff delay of the scorer's retries."""
    scorer_cache_path: str | None = None
    """Reply cache of the scorer (default: the annotate stage's, RUN/annotations.sqlite)."""
    scorer_price_table: str | None = None
    """JSON or TOML file of model prices (as annotate's --price-table)."""
