"""The scorer's calls, through the annotation pool (the same reply cache, rate limits, retries and cost
accounting as annotate): the scorer fields of ``AnalyzeConfig`` become an ``AnnotateConfig`` for the
openai backend, and each scoring prompt is one pool ``Task``. A reply that is not a list of the right
length is asked once more with a reminder (a different request, so the cache does not answer it), then
recorded as unparsable."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from ..annotate.config import AnnotateConfig
from ..annotate.llm import open_cache
from ..annotate.pool import AnnotationPool, PoolSettings, Task
from ..annotate.ratelimit import RateLimiter
from ..annotate.usage import Usage, model_price
from ..errors import UserError
from ..store import RunStore
from .config import AnalyzeConfig
from .score import parse_answer


@dataclass
class Answer:
    """What became of one scoring prompt."""

    answers: list[int] | None  # None: unparsable (or the call failed)
    raw: str | None
    calls: int
    prompt_tokens: int
    retried: bool
    error: str | None = None


def scorer_config(cfg: AnalyzeConfig) -> AnnotateConfig:
    """Annotate's backend settings from the ``scorer_*`` fields (one cache and one pool for both)."""
    return AnnotateConfig(backend="openai", base_url=cfg.scorer_base_url, model=cfg.scorer_model,
                          api_key_env=cfg.scorer_api_key_env, max_tokens=cfg.scorer_max_tokens, temperature=0.0,
                          seed=cfg.seed, rpm=cfg.scorer_rpm, tpm=cfg.scorer_tpm,
                          rate_window_s=cfg.scorer_rate_window_s, concurrency=cfg.scorer_concurrency,
                          timeout_s=cfg.scorer_timeout_s, max_retries=cfg.scorer_max_retries,
                          backoff_base_s=cfg.scorer_backoff_base_s, cache_path=cfg.scorer_cache_path,
                          price_table=cfg.scorer_price_table, progress=cfg.progress)


def price(cfg: AnalyzeConfig) -> tuple[float, float] | None:
    return model_price(cfg.scorer_model, cfg.scorer_price_table, None, None)


def request(acfg: AnnotateConfig, messages: list[dict[str, str]]) -> dict[str, Any]:
    return {"messages": messages, "temperature": acfg.temperature, "max_tokens": acfg.max_tokens}


def run_scorer(store: RunStore, cfg: AnalyzeConfig,
               prompts: list[tuple[list[dict[str, str]], list[dict[str, str]], int]]) -> tuple[list[Answer], Usage]:
    """Send every prompt (its messages, its retry messages, the answer length); one ``Answer`` each."""
    return asyncio.run(_run(store, scorer_config(cfg), prompts))


async def _run(store: RunStore, acfg: AnnotateConfig,
               prompts: list[tuple[list[dict[str, str]], list[dict[str, str]], int]]) -> tuple[list[Answer], Usage]:
    from ..annotate.backends import OpenAIBackend

    backend = OpenAIBackend(acfg.base_url, acfg.model, acfg.api_key_env, acfg.timeout_s)
    cache = open_cache(store, acfg)
    limiter = RateLimiter(acfg.rpm, acfg.tpm, acfg.rate_window_s, acfg.burst_s)
    settings = PoolSettings("paper", acfg.max_retries, acfg.backoff_base_s, acfg.backoff_max_s, acfg.concurrency,
                            acfg.max_tokens, acfg.progress, acfg.seed)
    pool = AnnotationPool(backend, cache, limiter, settings)
    try:
        answers = await _pass(pool, acfg, [(i, p[0]) for i, p in enumerate(prompts)], prompts, {})
        again = [(i, prompts[i][1]) for i, a in answers.items() if a.answers is None and pool.fatal is None]
        answers = await _pass(pool, acfg, again, prompts, answers)
    finally:
        cache.close()
        await backend.close()
    if pool.fatal is not None:
        raise UserError(f"analyze score stopped: {pool.fatal.reason}")
    return [answers[i] for i in range(len(prompts))], pool.usage


async def _pass(pool: AnnotationPool, acfg: AnnotateConfig, todo: list[tuple[int, list[dict[str, str]]]],
                prompts: list, answers: dict[int, Answer]) -> dict[int, Answer]:
    if not todo:
        return answers
    tasks = []
    for i, messages in todo:
        req = request(acfg, messages)
        tasks.append(Task(i, req, lambda req=req: req))
    for out in await pool.run(tasks):
        before = answers.get(out.concept)
        parsed = parse_answer(out.raw, prompts[out.concept][2]) if out.status != "failed" else None
        error = None if parsed is not None else (out.error or f"unparsable answer: {(out.raw or '')[:80]!r}")
        answers[out.concept] = Answer(parsed, out.raw, out.calls + (before.calls if before else 0),
                                      out.prompt_tokens + (before.prompt_tokens if before else 0),
                                      before is not None, error)
    return answers
