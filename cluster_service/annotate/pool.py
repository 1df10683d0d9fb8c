"""The async annotation pool: every concept ends labelled or failed with a reason, none silently lost.

One coroutine per concept; a semaphore bounds the requests in flight, the ``RateLimiter`` paces them,
the ``ReplyCache`` answers anything already paid for. The first live call goes alone (a probe), so a
wrong key or model name costs one request, not ``concurrency`` of them; any fatal answer afterwards
stops every coroutine before its next send.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from ..logs import log_event
from .backends import FATAL, PERMANENT, REFUSED, CallError, OpenAIBackend
from .budget import estimate_tokens
from .cache import Reply, ReplyCache, request_key
from .prompts import ReplyError, parse_reply
from .ratelimit import RateLimiter
from .usage import Usage

log = logging.getLogger("cluster_service.annotate")


@dataclass
class Task:
    """One concept's request, and how to build the unique-types request if the first is refused."""

    concept: int
    request: dict[str, Any]
    fallback: Callable[[], dict[str, Any]]


@dataclass
class Outcome:
    concept: int
    status: str  # "ok" / "failed"
    label: str | None = None
    description: str | None = None
    type: str | None = None
    raw: str | None = None
    error: str | None = None
    prompt_variant: str = ""
    model: str | None = None
    calls: int = 0
    cached: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0


@dataclass
class PoolSettings:
    prompt: str
    max_retries: int
    backoff_base_s: float
    backoff_max_s: float
    concurrency: int
    max_tokens: int
    progress: bool = True
    seed: int = 0


class FatalStop(Exception):
    """The endpoint said no for every request (401/403, unknown model, no quota)."""


@dataclass
class AnnotationPool:
    backend: OpenAIBackend
    cache: ReplyCache
    limiter: RateLimiter
    settings: PoolSettings
    usage: Usage = field(default_factory=Usage)
    latencies: list[float] = field(default_factory=list)
    fatal: CallError | None = None

    def __post_init__(self) -> None:
        self._ratio = 1.0  # server-counted prompt tokens per estimated token, learned from usage
        self._first_usage = True
        self._rng = random.Random(self.settings.seed)

    async def run(self, tasks: list[Task]) -> list[Outcome]:
        self._sem = asyncio.Semaphore(self.settings.concurrency)
        self._inflight: dict[str, asyncio.Event] = {}  # concepts with identical prompts share one call
        self._verified = asyncio.Event()
        self._probe = asyncio.Lock()
        bar = tqdm(total=len(tasks), desc="annotate", unit="concept", file=sys.stderr, smoothing=0.05,
                   mininterval=0.5 if sys.stderr.isatty() else 10.0, disable=not self.settings.progress)

        async def tracked(task: Task) -> Outcome:
            outcome = await self._one(task)
            bar.update(1)
            bar.set_postfix(calls=self.usage.calls, cached=self.usage.cached, retries=self.usage.retries,
                            refresh=False)
            return outcome

        try:
            return list(await asyncio.gather(*(tracked(t) for t in tasks)))
        finally:
            bar.close()

    # ---- one concept ---------------------------------------------------------------------------
    async def _one(self, task: Task) -> Outcome:
        start = time.monotonic()
        request, variant = task.request, self.settings.prompt
        attempts, calls, last_error = 0, 0, "no attempt"
        out = Outcome(task.concept, "failed", prompt_variant=variant)
        while True:
            if self.fatal is not None:
                out.error = f"not labelled: run stopped: {self.fatal.reason}"
                break
            key = request_key(self.backend.name, self.backend.model, request)
            reply = self.cache.get(key)
            if reply is None and key in self._inflight:
                await self._inflight[key].wait()  # then the cache has it, or we try ourselves
                continue
            if reply is None:
                if attempts > self.settings.max_retries:
                    out.error = f"{last_error} (gave up after {attempts} attempts)"
                    break
                attempts += 1
                calls += 1
                self._inflight[key] = done = asyncio.Event()
                try:
                    reply = await self._send(request)
                    self.cache.put(key, self.backend.name, self.backend.model, request, reply)
                except CallError as exc:
                    if exc.action == FATAL:
                        if self.fatal is None:
                            log_event(log, "stopping: the endpoint refuses every request", logging.ERROR,
                                      reason=exc.reason)
                        self.fatal = self.fatal or exc
                        out.error = exc.reason
                        break
                    if exc.action == PERMANENT:
                        out.error = exc.reason
                        break
                    if exc.action == REFUSED:
                        if variant.endswith("+unique_types"):
                            out.error = f"refused by the content filter, also with unique types: {exc.reason}"
                            break
                        request, variant = task.fallback(), variant + "+unique_types"
                        continue
                    last_error = exc.reason
                    if attempts > self.settings.max_retries:
                        continue
                    self.usage.retries += 1
                    delay = self._backoff(attempts, exc.retry_after)
                    log_event(log, "retry", logging.DEBUG, concept=task.concept, attempt=attempts,
                              reason=exc.reason, delay_s=delay)
                    await asyncio.sleep(delay)
                    continue
                finally:
                    del self._inflight[key]
                    done.set()
                out.prompt_tokens += reply.prompt_tokens
                out.completion_tokens += reply.completion_tokens
            else:
                self.usage.cached += 1
                out.cached = True
            if reply.finish_reason == "content_filter":
                if variant.endswith("+unique_types"):
                    out.error = "refused by the content filter (finish_reason), also with unique types"
                    break
                request, variant = task.fallback(), variant + "+unique_types"
                continue
            out.raw, out.model = reply.content, reply.response_model or self.backend.model
            try:
                parsed = parse_reply(self.settings.prompt, reply.content or "")
            except ReplyError as exc:
                out.error = f"unusable reply: {exc}"
                break
            out.status, out.label = "ok", parsed.label
            out.description, out.type = parsed.description, parsed.type
            break
        out.prompt_variant, out.calls, out.seconds = variant, calls, time.monotonic() - start
        return out

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after * (1 + 0.1 * self._rng.random())
        cap = min(self.settings.backoff_max_s, self.settings.backoff_base_s * 2 ** (attempt - 1))
        return cap / 2 + self._rng.uniform(0, cap / 2)

    # ---- one HTTP call --------------------------------------------------------------------------
    async def _send(self, request: dict[str, Any]) -> Reply:
        if not self._verified.is_set():
            async with self._probe:
                if not self._verified.is_set():
                    return await self._call(request)
        return await self._call(request)

    async def _call(self, request: dict[str, Any]) -> Reply:
        raw_estimate = estimate_tokens(request["messages"])
        prompt_estimate = math.ceil(raw_estimate * self._ratio)
        async with self._sem:
            grant = await self.limiter.acquire(prompt_estimate + self.settings.max_tokens)
            if self.fatal is not None:
                self.limiter.settle(grant, 0)
                raise CallError(FATAL, self.fatal.reason)
            self.usage.calls += 1
            try:
                reply, limits = await self.backend.complete(request)
            except CallError as exc:
                # what the server counted for a failed call is unknown: the reservation stands
                self.limiter.observe(exc.limits)
                if exc.status is not None and exc.action != FATAL:
                    self._verified.set()
                raise
        self._verified.set()
        self.limiter.settle(grant, reply.prompt_tokens + reply.completion_tokens)
        self.limiter.observe(limits)
        if reply.prompt_tokens:
            observed = reply.prompt_tokens / raw_estimate
            self._ratio = observed if self._first_usage else 0.8 * self._ratio + 0.2 * observed
            self._first_usage = False
        self.usage.prompt_tokens += reply.prompt_tokens
        self.usage.completion_tokens += reply.completion_tokens
        self.latencies.append(reply.latency_s)
        return reply
