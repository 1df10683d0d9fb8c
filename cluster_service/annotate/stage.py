"""The annotate stage: read a concept table, label every concept, write the table back with labels.

Rerunning is cheap and safe: the reply cache answers every call that already succeeded, the table is
rewritten atomically with fresh label columns, and failures are retried (they are not cached). For a
run on an object store the cache is a local file mirrored to the store (see ``mirror``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sqlite3
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..cluster.concepts import CONCEPT_SCHEMA
from ..errors import UserError
from ..logs import log_event
from ..store import RunStore
from .budget import cut_to_budget, estimate_tokens, unique_types
from .cache import ReplyCache, request_key
from .config import AnnotateConfig
from .mirror import MirroredCache, default_path, store_copy
from .pool import AnnotationPool, Outcome, PoolSettings, Task
from .prompts import build_messages
from .ratelimit import RateLimiter
from .usage import Usage, model_price

log = logging.getLogger("cluster_service.annotate")

LABEL_FIELDS = [
    ("label", pa.string()),
    ("label_status", pa.string()),
    ("label_error", pa.string()),
    ("label_backend", pa.string()),
    ("label_model", pa.string()),
    ("label_prompt", pa.string()),
    ("label_raw", pa.string()),
    ("label_description", pa.string()),
    ("label_type", pa.string()),
    ("label_is_baseline", pa.bool_()),
    ("label_calls", pa.int32()),
    ("label_cached", pa.bool_()),
    ("label_prompt_tokens", pa.int64()),
    ("label_completion_tokens", pa.int64()),
]


def stage_name(layer: int, k: int) -> str:
    return f"annotate:layer_{layer}_k{k}"


def read_concept_rows(store: RunStore, layer: int, k: int) -> tuple[pa.Table, list[dict[str, Any]]]:
    table = store.read_concepts(layer, k)
    missing = [f.name for f in CONCEPT_SCHEMA if f.name not in table.column_names]
    if missing:
        raise UserError(f"{store.concepts_path(layer, k)}: concept table lacks columns {', '.join(missing)}")
    rows = table.select(["concept", "size", "words", "top_types", "examples"]).to_pylist()
    return table, rows


def build_request(cfg: AnnotateConfig, words: Sequence[str],
                  examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    request: dict[str, Any] = {
        "messages": build_messages(cfg.prompt, words, examples, cfg.context_sentences),
        "temperature": cfg.temperature,
        "max_tokens": cfg.max_tokens,
    }
    if cfg.prompt == "json" and cfg.json_mode:
        request["response_format"] = {"type": "json_object"}
    return request


def build_tasks(cfg: AnnotateConfig, rows: Sequence[dict[str, Any]]) -> list[Task]:
    """One request per concept, its words cut to the prompt budget by seeded proportional sampling."""
    tasks = []
    for row in rows:
        examples = row["examples"] or []
        render = partial(build_messages, cfg.prompt, examples=examples, n_context=cfg.context_sentences)
        words = row["words"] or [t["word"] for t in row["top_types"] or []]
        kept = cut_to_budget(words, cfg.max_prompt_tokens, f"{cfg.seed}:{row['concept']}", render)

        def fallback(words: Sequence[str] = words, examples: Sequence[dict[str, Any]] = examples,
                     render=render) -> dict[str, Any]:
            return build_request(cfg, unique_types(words, cfg.max_prompt_tokens, render), examples)

        tasks.append(Task(int(row["concept"]), build_request(cfg, kept, examples), fallback))
    return tasks


def cache_path(store: RunStore, cfg: AnnotateConfig) -> Path:
    if cfg.cache_path:
        return Path(cfg.cache_path)
    return store.annotations_db if store.is_local else default_path(store.where())


def open_cache(store: RunStore, cfg: AnnotateConfig) -> ReplyCache:
    """The reply cache: the store's own file on a local run, a mirrored local file on an object store."""
    path = cache_path(store, cfg)
    return ReplyCache(path) if store.is_local else MirroredCache(path, store)


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


def with_labels(table: pa.Table, outcomes: Sequence[Outcome], backend: str, is_baseline: bool) -> pa.Table:
    """The concept table with fresh label columns, rows in the table's own order."""
    by_id = {o.concept: o for o in outcomes}
    ordered = [by_id[int(c)] for c in table.column("concept").to_pylist()]
    table = table.drop_columns([n for n in table.column_names if n == "label" or n.startswith("label_")])
    values = {
        "label": [o.label for o in ordered],
        "label_status": [o.status for o in ordered],
        "label_error": [o.error for o in ordered],
        "label_backend": [backend] * len(ordered),
        "label_model": [o.model for o in ordered],
        "label_prompt": [o.prompt_variant for o in ordered],
        "label_raw": [o.raw for o in ordered],
        "label_description": [o.description for o in ordered],
        "label_type": [o.type for o in ordered],
        "label_is_baseline": [is_baseline] * len(ordered),
        "label_calls": [o.calls for o in ordered],
        "label_cached": [o.cached for o in ordered],
        "label_prompt_tokens": [o.prompt_tokens for o in ordered],
        "label_completion_tokens": [o.completion_tokens for o in ordered],
    }
    for name, typ in LABEL_FIELDS:
        table = table.append_column(pa.field(name, typ), pa.array(values[name], type=typ))
    return table


def _dry_run(cfg: AnnotateConfig, store: RunStore, tasks: Sequence[Task]) -> dict[str, Any]:
    keys = [request_key("openai", cfg.model, t.request) for t in tasks]
    hits = cached_keys(cache_path(store, cfg), keys)
    if not store.is_local:
        with store_copy(store) as copy:
            if copy is not None:
                hits |= cached_keys(copy, keys)
    todo = [t for t, key in zip(tasks, keys, strict=True) if key not in hits]
    prompt_tokens = sum(estimate_tokens(t.request["messages"]) for t in todo)
    completion_tokens = cfg.max_tokens * len(todo)
    price = model_price(cfg.model, cfg.price_table, cfg.input_price_per_mtok, cfg.output_price_per_mtok)
    cost = Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens).cost(price)
    minutes = max(len(todo) / cfg.rpm, (prompt_tokens + completion_tokens) / cfg.tpm) * cfg.rate_window_s / 60
    return {"dry_run": True, "backend": cfg.backend, "model": cfg.model, "concepts": len(tasks),
            "calls": len(todo), "cached": len(tasks) - len(todo), "est_prompt_tokens": prompt_tokens,
            "max_completion_tokens": completion_tokens, "est_tokens": prompt_tokens + completion_tokens,
            "est_cost_usd": cost, "est_minutes_at_limits": round(minutes, 2)}


async def _run_pool(cfg: AnnotateConfig, store: RunStore,
                    tasks: list[Task]) -> tuple[list[Outcome], AnnotationPool]:
    from .backends import OpenAIBackend

    backend = OpenAIBackend(cfg.base_url, cfg.model, cfg.api_key_env, cfg.timeout_s)
    cache = open_cache(store, cfg)
    limiter = RateLimiter(cfg.rpm, cfg.tpm, cfg.rate_window_s, cfg.burst_s)
    settings = PoolSettings(cfg.prompt, cfg.max_retries, cfg.backoff_base_s, cfg.backoff_max_s,
                            cfg.concurrency, cfg.max_tokens, cfg.progress, cfg.seed)
    pool = AnnotationPool(backend, cache, limiter, settings)
    try:
        return await pool.run(tasks), pool
    finally:
        cache.close()
        await backend.close()


def _quantile(values: Sequence[float], q: float) -> float | None:
    return round(float(np.quantile(values, q)), 4) if len(values) else None


def annotate_run(store: RunStore, layer: int, k: int, cfg: AnnotateConfig) -> dict[str, Any]:
    """Label every concept of ``layer``/``k``; returns a summary (labelled, failed, calls, cached, tokens,
    cost). Raises ``UserError`` with one clear line when the endpoint refuses the key or the model,
    after recording every concept's state in the table."""
    table, rows = read_concept_rows(store, layer, k)
    start = time.monotonic()
    if cfg.backend == "baseline":
        if cfg.dry_run:
            return {"dry_run": True, "backend": "baseline", "concepts": len(rows), "calls": 0, "cached": 0,
                    "est_tokens": 0, "est_cost_usd": 0.0, "note": "baseline (not an LLM): no calls"}
        from .baseline import BaselineLabeller

        outcomes = BaselineLabeller().label_concepts(rows)
        usage, price, model = Usage(), (0.0, 0.0), outcomes[0].model if outcomes else None
        fatal, latencies = None, []
    else:
        tasks = build_tasks(cfg, rows)
        largest = max((estimate_tokens(t.request["messages"]) for t in tasks), default=0) + cfg.max_tokens
        if largest > cfg.tpm:
            raise UserError(f"annotate: one request needs about {largest} tokens, more than "
                            f"--tpm {cfg.tpm:g}; raise --tpm or lower --max-prompt-tokens/--max-tokens")
        if cfg.dry_run:
            return _dry_run(cfg, store, tasks)
        store.set_stage(stage_name(layer, k), "running", backend=cfg.backend, model=cfg.model,
                        prompt=cfg.prompt)
        outcomes, pool = asyncio.run(_run_pool(cfg, store, tasks))
        usage, model, fatal, latencies = pool.usage, cfg.model, pool.fatal, pool.latencies
        price = model_price(cfg.model, cfg.price_table, cfg.input_price_per_mtok, cfg.output_price_per_mtok)
    is_baseline = cfg.backend == "baseline"
    store.record_config("annotate", dataclasses.asdict(cfg))
    store.write_concepts(layer, k, with_labels(table, outcomes, cfg.backend, is_baseline))
    labelled = sum(o.status == "ok" for o in outcomes)
    summary = {
        "backend": cfg.backend, "model": model, "prompt": "baseline" if is_baseline else cfg.prompt,
        "is_baseline": is_baseline, "concepts": len(outcomes), "labelled": labelled,
        "failed": len(outcomes) - labelled, "calls": usage.calls, "cached": usage.cached,
        "retries": usage.retries, "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens, "tokens": usage.prompt_tokens + usage.completion_tokens,
        "cost_usd": usage.cost(price), "seconds": round(time.monotonic() - start, 3),
        "call_p50_s": _quantile(latencies, 0.5), "call_p99_s": _quantile(latencies, 0.99),
    }
    if is_baseline:
        summary["note"] = "baseline labels (not an LLM): spaCy tags and token statistics"
    status = "failed" if fatal is not None else "done"
    store.set_stage(stage_name(layer, k), status, **summary, **({"error": fatal.reason} if fatal else {}))
    log_event(log, "annotate finished", layer=layer, k=k, status=status,
              **{key: summary[key] for key in ("backend", "labelled", "failed", "calls", "cached", "tokens")})
    if fatal is not None:
        raise UserError(f"annotate stopped: {fatal.reason}")
    return summary
