"""The async annotation pool: every concept ends labelled or failed with a reason, none silently lost.

One coroutine per concept; a ``Gate`` bounds the requests in flight at the ``AdaptiveLimit`` (which
finds the server's real capacity from latency, up to ``concurrency``; see ``adaptive``), the
``RateLimiter`` paces them (rpm/tpm stay hard ceilings), the ``ReplyCache`` answers anything already
paid for. A request's first-token timeout is max(``timeout_s``, 3 × the slowest time to first token
seen), so one that waits behind others in a server's queue is not cut off and sent again. The first
live call goes alone (a probe), so a wrong key or model name costs one request, not ``concurrency``
of them; any fatal answer afterwards stops every coroutine before its next send.

Per concept (``_one``): get a reply (``_reply``: the cache, a concept with the same prompt in flight, or
``_attempt`` with backoff between retries), ``_classify`` it into a label or a reason, and fall back to
each type once (``_variants``) when the content filter refuses the request.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from ..logs import log_event
from .adaptive import AdaptiveLimit
from .backends import FATAL, PERMANENT, REFUSED, CallError, OpenAIBackend
from .budget import estimate_llm_tokens
from .cache import Reply, ReplyCache, request_key
from .labeller import FAILED, OK, TRUNCATED, Outcome
from .prompts import ReplyError, parse_reply
from .ratelimit import RateLimiter
from .usage import Usage

log = logging.getLogger("cluster_service.annotate")
#: The first-token timeout is at least this many times the slowest time to first token seen so far.
FIRST_TOKEN_MARGIN = 3.0


@dataclass
class Task:
    """One concept's request, and how to build the unique-types request if the first is refused."""

    concept: int
    request: dict[str, Any]
    fallback: Callable[[], dict[str, Any]]
    variant: str | None = None  # the prompt variant recorded with the label (default: the settings' prompt)


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
    adaptive: bool = True
    """Find the concurrency from latency, ``concurrency`` being the ceiling; False holds it at ``concurrency``."""


class Gate:
    """At most ``limit`` holders at once, with a limit that may change while others wait."""

    def __init__(self, limit: int):
        self.limit = limit
        self.held = 0
        self._changed = asyncio.Condition()

    async def __aenter__(self) -> Gate:
        async with self._changed:
            await self._changed.wait_for(lambda: self.held < self.limit)
            self.held += 1
        return self

    async def __aexit__(self, *exc: object) -> None:
        async with self._changed:
            self.held -= 1
            self._changed.notify_all()

    async def set_limit(self, limit: int) -> None:
        async with self._changed:
            self.limit = limit
            self._changed.notify_all()


class Refused(Exception):
    """The content filter refused the request (HTTP 400, or ``finish_reason: content_filter``)."""


class Stop(Exception):
    """This concept fails with the message as its reason (the others go on unless the run stopped)."""


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
        self._ratio = 1.0  # server-counted prompt LLM tokens per estimated one, learned from usage
        self._first_usage = True
        self._rng = random.Random(self.settings.seed)
        ceiling = self.settings.concurrency
        self.concurrency = AdaptiveLimit(ceiling, start=1 if self.settings.adaptive else ceiling)
        self.slowest_first_token_s = 0.0
        self._sending = 0

    def first_token_timeout(self) -> float:
        """max(--timeout-s, 3 × the slowest time to first token seen so far)."""
        return max(self.backend.timeout_s, FIRST_TOKEN_MARGIN * self.slowest_first_token_s)

    def concurrency_summary(self) -> dict[str, Any]:
        limit = self.concurrency
        return {"adaptive": self.settings.adaptive, "ceiling": limit.ceiling, "final": limit.limit,
                "settled": limit.settled(), "changes": len(limit.history) - 1,
                **limit.describe(), "judgements": [list(j) for j in limit.judgements[-40:]]}

    async def run(self, tasks: list[Task]) -> list[Outcome]:
        self._gate = Gate(self.concurrency.limit)
        self._inflight: dict[str, asyncio.Event] = {}  # concepts with identical prompts share one call
        self._verified = asyncio.Event()
        self._probe = asyncio.Lock()
        bar = tqdm(total=len(tasks), desc="annotate", unit="concept", file=sys.stderr, smoothing=0.05,
                   mininterval=0.5 if sys.stderr.isatty() else 10.0, disable=not self.settings.progress)

        async def tracked(task: Task) -> Outcome:
            outcome = await self._one(task)
            bar.update(1)
            bar.set_postfix(in_flight_limit=self.concurrency.limit, calls=self.usage.calls,
                            cached=self.usage.cached, retries=self.usage.retries, refresh=False)
            return outcome

        try:
            return list(await asyncio.gather(*(tracked(t) for t in tasks)))
        finally:
            bar.close()

    # ---- one concept: the request, then the unique-types fallback if the content filter refuses it --
    async def _one(self, task: Task) -> Outcome:
        start = time.monotonic()
        out = Outcome(task.concept, FAILED, prompt_variant=self.settings.prompt)
        for request, variant in self._variants(task):
            out.prompt_variant = variant
            try:
                self._classify(await self._reply(request, out), out)
                break
            except Refused as exc:
                out.error = f"refused by the content filter, also with unique types: {exc}"
            except Stop as exc:
                out.error = str(exc)
                break
        out.seconds = time.monotonic() - start
        return out

    def _variants(self, task: Task) -> Iterator[tuple[dict[str, Any], str]]:
        """The request, then (built only if the first was refused) each type once: the paper's fallback."""
        variant = task.variant or self.settings.prompt
        yield task.request, variant
        yield task.fallback(), variant + "+unique_types"

    def _classify(self, reply: Reply, out: Outcome) -> None:
        """Fill ``out`` from a reply: a label (clean, or cut off at the completion limit) or why not."""
        if reply.finish_reason == "content_filter":
            raise Refused("content filter (finish_reason content_filter)")
        out.raw, out.model = reply.content, reply.response_model or self.backend.model
        cut_off = reply.finish_reason == "length"
        try:
            parsed = parse_reply(self.settings.prompt, reply.content or "")
        except ReplyError as exc:
            out.error = f"unusable reply: {exc}" + (f" ({self._cut_off()})" if cut_off else "")
            return
        out.status, out.label = (TRUNCATED if cut_off else OK), parsed.label
        out.description, out.type = parsed.description, parsed.type
        out.error = f"label may be incomplete: {self._cut_off()}" if cut_off else None

    def _cut_off(self) -> str:
        return f"cut off at --max-tokens {self.settings.max_tokens} (finish_reason length)"

    def _usable(self, reply: Reply) -> bool:
        """Whether a reply is worth keeping in the cache: a label, or the filter's refusal (which the
        fallback follows). An unusable reply is not cached, so that a rerun asks again."""
        if reply.finish_reason == "content_filter":
            return True
        try:
            parse_reply(self.settings.prompt, reply.content or "")
        except ReplyError:
            return False
        return True

    # ---- one request: from the cache, from a concept with the same prompt, or sent with retries ----
    async def _reply(self, request: dict[str, Any], out: Outcome) -> Reply:
        key = request_key(self.backend.name, self.backend.model, request)
        last_error = "no attempt"
        while True:
            if self.fatal is not None:
                raise Stop(f"not labelled: run stopped: {self.fatal.reason}")
            reply = self.cache.get(key)
            if reply is not None:
                self.usage.cached += 1
                out.cached = True
                return reply
            if key in self._inflight:
                await self._inflight[key].wait()  # then the cache has it, or we try ourselves
                continue
            if out.calls > self.settings.max_retries:
                raise Stop(f"{last_error} (gave up after {out.calls} attempts)")
            try:
                return await self._attempt(key, request, out)
            except CallError as exc:
                self._fail_unless_retryable(exc)
                last_error = exc.reason
                if out.calls <= self.settings.max_retries:
                    self.usage.retries += 1
                    delay = self._backoff(out.calls, exc.retry_after)
                    log_event(log, "retry", logging.DEBUG, concept=out.concept, attempt=out.calls,
                              reason=exc.reason, delay_s=delay)
                    await asyncio.sleep(delay)

    async def _attempt(self, key: str, request: dict[str, Any], out: Outcome) -> Reply:
        """Send once (concepts with the same prompt wait for this one); cache what can be used."""
        out.calls += 1
        self._inflight[key] = done = asyncio.Event()
        try:
            reply = await self._send(request)
            if self._usable(reply):
                self.cache.put(key, self.backend.name, self.backend.model, request, reply)
        finally:
            del self._inflight[key]
            done.set()
        out.prompt_tokens += reply.prompt_tokens
        out.completion_tokens += reply.completion_tokens
        return reply

    def _fail_unless_retryable(self, exc: CallError) -> None:
        """Raise what a failed call means for this concept; return if it is worth retrying."""
        if exc.action == FATAL:
            if self.fatal is None:
                log_event(log, "stopping: the endpoint refuses every request", logging.ERROR, reason=exc.reason)
                self.fatal = exc
            raise Stop(exc.reason)
        if exc.action == PERMANENT:
            raise Stop(exc.reason)
        if exc.action == REFUSED:
            raise Refused(exc.reason)

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
        raw_estimate = estimate_llm_tokens(request["messages"])
        prompt_estimate = math.ceil(raw_estimate * self._ratio)
        async with self._gate:
            grant = await self.limiter.acquire(prompt_estimate + self.settings.max_tokens)
            if self.fatal is not None:
                self.limiter.settle(grant, 0)
                raise CallError(FATAL, self.fatal.reason)
            self.usage.calls += 1
            # requests really at the server, this one included (not those the rate limiter still holds)
            self._sending += 1
            in_flight, epoch = self._sending, self.concurrency.epoch
            try:
                reply, limits = await self.backend.complete(request,
                                                            first_token_timeout_s=self.first_token_timeout())
            except CallError as exc:
                # what the server counted for a failed call is unknown: the reservation stands
                self.limiter.observe(exc.limits)
                if exc.status is not None and exc.action != FATAL:
                    self._verified.set()
                self.usage.timeouts += exc.timeout
                failed = exc
            else:
                failed = None
            finally:
                self._sending -= 1
        # the limit moves once this request's slot is free, so that the next request sent is counted
        # with what is really in flight
        if failed is not None:
            if failed.overload and self.settings.adaptive:
                await self._adapt(self.concurrency.dropped(epoch), failed.reason)
            raise failed
        first_token = reply.first_token_s if reply.first_token_s is not None else reply.latency_s
        self.slowest_first_token_s = max(self.slowest_first_token_s, first_token)
        if self.settings.adaptive and self._verified.is_set():  # not the probe: it pays for the connection
            changed = self.concurrency.completed(first_token, reply.prompt_tokens or prompt_estimate,
                                                 in_flight, epoch)
            if changed is not None:
                level, n, ratio, threshold = self.concurrency.judgements[-1]
                await self._adapt(changed, f"median time to the first token {ratio}× no-load over {n} completions "
                                           f"at {level} in flight (a queue above {threshold}×)")
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

    async def _adapt(self, new_limit: int | None, why: str) -> None:
        if new_limit is None:
            return
        old = self._gate.limit
        await self._gate.set_limit(new_limit)
        log_event(log, "concurrency " + ("raised" if new_limit > old else "lowered"), limit=new_limit,
                  was=old, ceiling=self.concurrency.ceiling, why=why,
                  first_token_timeout_s=round(self.first_token_timeout(), 3))
