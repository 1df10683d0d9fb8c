"""The LLM labeller: concept rows become chat requests, sent through the annotation pool.

Requests are cut to the prompt budget deterministically (seeded sampling), so a rerun or a resume
rebuilds the same requests and the reply cache answers every one that succeeded: only concepts that
failed cost a call again. For a run on an object store the cache is a local file mirrored to the
store (see ``mirror``).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..store import ANNOTATIONS, RunStore
from .budget import cut_to_budget, estimate_llm_tokens, proportional_sample, unique_types
from .cache import ReplyCache, request_key
from .config import AnnotateConfig
from .hierarchy import COPIED
from .labeller import OK, Labelling, Outcome
from .labels import annotator_name
from .mirror import MirroredCache, default_path, store_copy
from .pool import AnnotationPool, PoolSettings, Task
from .prompts import Messages, build_messages, hierarchy_messages
from .ratelimit import RateLimiter
from .usage import Usage, model_price


def build_request(cfg: AnnotateConfig, words: Sequence[str], examples: Sequence[dict[str, Any]],
                  render: Callable[[Sequence[str]], Messages] | None = None) -> dict[str, Any]:
    """One chat request: the ``render``ed messages (default: the configured prompt over ``words``)."""
    messages = render(words) if render is not None else build_messages(cfg.prompt, words, examples,
                                                                         cfg.context_sentences)
    request: dict[str, Any] = {
        "messages": messages,
        "temperature": cfg.temperature,
        "max_tokens": cfg.max_tokens,
    }
    if cfg.prompt == "json" and cfg.json_mode:
        request["response_format"] = {"type": "json_object"}
    return request


def build_tasks(cfg: AnnotateConfig, rows: Sequence[dict[str, Any]]) -> list[Task]:
    """One request per concept, its words cut to the prompt budget by seeded proportional sampling. A
    row with ``child_labels`` (``--hierarchy``) gets the short prompt: a sample of ``hierarchy_words``
    of its words and its children's labels."""
    tasks = []
    for row in rows:
        examples = row["examples"] or []
        key = f"{cfg.seed}:{row['concept']}"
        words = row["words"] or [t["word"] for t in row["top_types"] or []]
        child_labels = row.get("child_labels")
        variant = None
        if child_labels:
            render = partial(hierarchy_messages, cfg.prompt, child_labels=child_labels, examples=examples,
                             n_context=cfg.context_sentences)
            words = proportional_sample(words, cfg.hierarchy_words, key)
            variant = cfg.prompt + "+hierarchy"
        else:
            render = partial(build_messages, cfg.prompt, examples=examples, n_context=cfg.context_sentences)
        kept = cut_to_budget(words, cfg.max_prompt_tokens, key, render)

        def fallback(words: Sequence[str] = words, examples: Sequence[dict[str, Any]] = examples,
                     render=render) -> dict[str, Any]:
            return build_request(cfg, unique_types(words, cfg.max_prompt_tokens, render), examples, render)

        tasks.append(Task(int(row["concept"]), build_request(cfg, kept, examples, render), fallback, variant))
    return tasks


def copied_outcomes(rows: Sequence[dict[str, Any]]) -> tuple[list[Outcome], list[dict[str, Any]]]:
    """Concepts with a single labelled child are that child (``--hierarchy``): its label, no call.
    Returns those outcomes and the rows left to ask about."""
    copied, rest = [], []
    for row in rows:
        child = row.get("child_labels")
        if child is not None and len(child) == 1:
            copied.append(Outcome(int(row["concept"]), OK, label=child[0], prompt_variant="copied_from_child",
                                  raw=f"{COPIED}: {child[0]}"))
        else:
            rest.append(row)
    return copied, rest


def cache_path(store: RunStore, cfg: AnnotateConfig) -> Path:
    if cfg.cache_path:
        return Path(cfg.cache_path)
    return store.local_path(ANNOTATIONS) or default_path(store.where())


def open_cache(store: RunStore, cfg: AnnotateConfig) -> ReplyCache:
    """The reply cache: the store's own file on a local run, a mirrored local file on an object store."""
    path = cache_path(store, cfg)
    return ReplyCache(path) if store.local_path() else MirroredCache(path, store)


def cached_keys(path: Path, keys: Sequence[str]) -> set[str]:
    """Which keys the cache holds, read-only (a dry run writes nothing)."""
    if not path.is_file():
        return set()
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        found: set[str] = set()
        for i in range(0, len(keys), 500):
            chunk = list(keys[i: i + 500])
            marks = ",".join("?" * len(chunk))
            found.update(r[0] for r in db.execute(f"SELECT key FROM replies WHERE key IN ({marks})", chunk))
        return found
    finally:
        db.close()


class LLMLabeller:
    """The ``Labeller`` over an OpenAI-compatible endpoint: an ``AnnotationPool`` per ``label`` call."""

    backend = "openai"
    is_baseline = False

    def __init__(self, store: RunStore, cfg: AnnotateConfig):
        self.store, self.cfg = store, cfg
        self.prompt = cfg.prompt
        self.annotator = annotator_name(self.backend, cfg.model, cfg.prompt)
        self.price = model_price(cfg.model, cfg.price_table, cfg.input_price_per_mtok, cfg.output_price_per_mtok)

    def tasks(self, rows: Sequence[dict[str, Any]]) -> list[Task]:
        """The requests, refused in one line if one of them could never pass the --tpm limit."""
        cfg = self.cfg
        tasks = build_tasks(cfg, rows)
        largest = max((estimate_llm_tokens(t.request["messages"]) for t in tasks), default=0) + cfg.max_tokens
        if largest > cfg.tpm:
            raise UserError(f"annotate: one request needs about {largest} LLM tokens, more than "
                            f"--tpm {cfg.tpm:g}; raise --tpm or lower --max-prompt-tokens/--max-tokens")
        return tasks

    def estimate(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        copied, rows = copied_outcomes(rows)
        cfg, store, tasks = self.cfg, self.store, self.tasks(rows)
        keys = [request_key(self.backend, cfg.model, t.request) for t in tasks]
        hits = cached_keys(cache_path(store, cfg), keys)
        if store.local_path() is None:
            with store_copy(store) as copy:
                if copy is not None:
                    hits |= cached_keys(copy, keys)
        todo = [t for t, key in zip(tasks, keys, strict=True) if key not in hits]
        prompt_tokens = sum(estimate_llm_tokens(t.request["messages"]) for t in todo)
        completion_tokens = cfg.max_tokens * len(todo)
        cost = Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens).cost(self.price)
        minutes = max(len(todo) / cfg.rpm, (prompt_tokens + completion_tokens) / cfg.tpm) * cfg.rate_window_s / 60
        return {"dry_run": True, "backend": self.backend, "model": cfg.model,
                "concepts": len(tasks) + len(copied), "copied_from_child": len(copied),
                "hierarchy_prompts": sum(t.variant is not None for t in todo),
                "calls": len(todo), "cached": len(tasks) - len(todo), "est_prompt_tokens": prompt_tokens,
                "max_completion_tokens": completion_tokens, "est_llm_tokens": prompt_tokens + completion_tokens,
                "est_cost_usd": cost, "est_minutes_at_limits": round(minutes, 2)}

    def label(self, rows: Sequence[dict[str, Any]]) -> Labelling:
        copied, rows = copied_outcomes(rows)
        outcomes, pool = asyncio.run(self._run_pool(self.tasks(rows)))
        return Labelling(copied + outcomes, self.cfg.model, pool.usage, self.price, pool.latencies,
                         pool.fatal.reason if pool.fatal is not None else None, pool.concurrency_summary())

    async def _run_pool(self, tasks: list[Task]) -> tuple[list[Outcome], AnnotationPool]:
        from .backends import OpenAIBackend

        cfg = self.cfg
        backend = OpenAIBackend(cfg.base_url, cfg.model, cfg.api_key_env, cfg.timeout_s, cfg.chunk_timeout_s,
                                cfg.stream)
        cache = open_cache(self.store, cfg)
        limiter = RateLimiter(cfg.rpm, cfg.tpm, cfg.rate_window_s, cfg.burst_s)
        settings = PoolSettings(cfg.prompt, cfg.max_retries, cfg.backoff_base_s, cfg.backoff_max_s,
                                cfg.concurrency, cfg.max_tokens, cfg.progress, cfg.seed, cfg.adaptive_concurrency)
        pool = AnnotationPool(backend, cache, limiter, settings)
        try:
            return await pool.run(tasks), pool
        finally:
            cache.close()
            await backend.close()
