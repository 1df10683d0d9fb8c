"""The annotate stage's one config: every field is also a ``cluster-service annotate`` flag."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import UserError


@dataclass
class AnnotateConfig:
    """Label concepts with an LLM (or the offline baseline labeller)."""

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
    context_sentences: int = 3
    """Example sentences per concept in the 'context' prompt."""
    max_prompt_tokens: int = 1500
    """Prompt budget in LLM tokens: larger concepts are cut by seeded sampling that keeps type proportions."""
    max_tokens: int = 100
    """Completion cap per call in LLM tokens (also what the --tpm bucket reserves until usage is known); a
    reply cut off there is kept with label status 'truncated'."""
    temperature: float = 0.0
    """Sampling temperature (the paper used 0)."""
    json_mode: bool = True
    """With --prompt json, ask the endpoint for a JSON object (response_format); turn off for servers
    that reject response_format."""
    seed: int = 0
    """Seed of the sampling that cuts large concepts to the prompt budget."""
    rpm: float = 500.0
    """Requests per rate window (per minute with the default window), counting retries."""
    tpm: float = 200_000.0
    """LLM tokens (prompt + completion) per rate window."""
    rate_window_s: float = 60.0
    """Length of the window the rpm/tpm limits apply to, in seconds (tests shrink it)."""
    burst_s: float = 1.0
    """Token-bucket burst: how many seconds' worth of the rate may be sent at once."""
    concurrency: int = 16
    """Most requests in flight at once."""
    timeout_s: float = 60.0
    """Per-request timeout in seconds."""
    max_retries: int = 8
    """Retries per concept after 429, 5xx, timeouts and malformed replies, before it is marked failed."""
    backoff_base_s: float = 1.0
    """First backoff delay; doubles per retry, with jitter; Retry-After headers take precedence."""
    backoff_max_s: float = 60.0
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

    def __post_init__(self) -> None:
        positive = ("rpm", "tpm", "rate_window_s", "timeout_s", "backoff_base_s", "backoff_max_s")
        for name in positive:
            if getattr(self, name) <= 0:
                raise UserError(f"annotate: --{name.replace('_', '-')} must be > 0")
        for name in ("concurrency", "max_prompt_tokens", "max_tokens"):
            if getattr(self, name) < 1:
                raise UserError(f"annotate: --{name.replace('_', '-')} must be >= 1")
        if self.max_retries < 0 or self.context_sentences < 0 or self.burst_s < 0:
            raise UserError("annotate: --max-retries, --context-sentences and --burst-s must be >= 0")
