"""The annotate stage's one config: every field is also a ``cluster-service annotate`` flag."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..configs import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt


@dataclass
class AnnotateConfig:
    """Label concepts with an LLM (or the offline baseline labeller)."""

    layers: list[NonNegativeInt] = field(default_factory=list)
    """Layers whose concept tables to label (comma-separated); empty or 'all' means every layer that has one."""
    k: list[PositiveInt] = field(default_factory=list)
    """Numbers of concepts (K) whose concept tables to label; empty or 'all' means every K clustered."""

    hierarchy: bool = False
    """Label each layer's tables from the largest K down, and a concept at a smaller K whose children (at
    the next larger K) all have labels from its children's labels and a sample of its words (a shorter,
    cheaper prompt); a concept with one child takes its label without a call. LLM backends only."""
    hierarchy_words: PositiveInt = 30
    """Words sampled (seeded, type proportions kept) into a --hierarchy prompt."""

    backend: Literal["baseline", "openai"] = "baseline"
    """'baseline' labels offline from the tokens and spaCy (not an LLM, marked as such); 'openai' calls
    any OpenAI-compatible chat endpoint (OpenAI, Azure, vLLM, llama.cpp server, Ollama)."""
    base_url: str | None = None
    """Base URL of the OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 (default: OpenAI's)."""
    model: str = "gpt-4o-mini"
    """Chat model name sent to the endpoint."""
    api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable that holds the API key; the key itself is never logged or stored."""
    prompt: Literal["paper", "context", "lexical", "json"] = "paper"
    """'paper': the prompt of Mousi et al. (2023) verbatim; 'context': adds example sentences with the
    word marked; 'lexical': asks for lexical/POS properties; 'json': label, description and type as JSON."""
    context_sentences: NonNegativeInt = 3
    """Example sentences per concept in the 'context' prompt."""
    max_prompt_tokens: PositiveInt = 1500
    """Prompt budget in LLM tokens: larger concepts are cut by seeded sampling that keeps type proportions."""
    max_tokens: PositiveInt = 100
    """Completion cap per call in LLM tokens (also what the --tpm bucket reserves until usage is known); a
    reply cut off there is kept with label status 'truncated'."""
    temperature: NonNegativeFloat = 0.0
    """Sampling temperature (the paper used 0)."""
    json_mode: bool = True
    """With --prompt json, ask the endpoint for a JSON object (response_format); turn off for servers
    that reject response_format."""
    seed: NonNegativeInt = 0
    """Seed of the sampling that cuts large concepts to the prompt budget."""
    rpm: PositiveFloat = 500.0
    """Requests per rate window (per minute with the default window), counting retries."""
    tpm: PositiveFloat = 200_000.0
    """LLM tokens (prompt + completion) per rate window."""
    rate_window_s: PositiveFloat = 60.0
    """Length of the window the rpm/tpm limits apply to, in seconds (tests shrink it)."""
    burst_s: NonNegativeFloat = 1.0
    """Token-bucket burst: how many seconds' worth of the rate may be sent at once."""
    concurrency: PositiveInt = 16
    """Most requests in flight at once: the ceiling of the adaptive concurrency (or the fixed value with
    --no-adaptive-concurrency)."""
    adaptive_concurrency: bool = True
    """Start at one request in flight and find the server's real capacity from latency (raised while the
    median time to the first token stays flat, lowered when it grows with the number in flight, halved
    on timeouts, 503s and 429s that carry no rate-limit headers; a rate-limit 429 pauses instead)."""
    timeout_s: PositiveFloat = 60.0
    """Time to the first token in seconds; it grows to 3 x the slowest time to first token seen, so
    requests waiting in a self-hosted server's queue are not cut off (without streaming: the whole
    request)."""
    chunk_timeout_s: PositiveFloat = 15.0
    """Longest silence between two chunks of a streamed reply before the server counts as stalled and
    the request is retried."""
    stream: bool = True
    """Stream replies (with usage in the last chunk); turn off for servers that cannot stream."""
    max_retries: NonNegativeInt = 8
    """Retries per concept after 429, 5xx, timeouts and malformed replies, before it is marked failed."""
    backoff_base_s: PositiveFloat = 1.0
    """First backoff delay; doubles per retry, with jitter; Retry-After headers take precedence."""
    backoff_max_s: PositiveFloat = 60.0
    """Longest backoff delay."""
    cache_path: str | None = None
    """SQLite reply cache; default RUN/annotations.sqlite. For a RUN on an object store the cache is a local
    file (default ~/.cache/cluster_service/annotations/<hash of RUN>.sqlite) merged from and uploaded to
    RUN/annotations.sqlite every 30 s of work and at the end."""
    price_table: str | None = None
    """JSON or TOML file mapping model -> {input_per_mtok, output_per_mtok} in USD, merged over the built-in
    table."""
    input_price_per_mtok: float | None = None
    """USD per million prompt LLM tokens for --model, overriding the price table."""
    output_price_per_mtok: float | None = None
    """USD per million completion LLM tokens for --model, overriding the price table."""
    dry_run: bool = False
    """Only print the number of calls, estimated LLM tokens and cost; call nothing, write nothing."""
    progress: bool = True
    """Show a progress bar on a terminal."""
