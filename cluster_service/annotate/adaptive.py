"""Adaptive concurrency: find how many requests the server really serves at once, from latency alone.

A self-hosted server (llama.cpp, vLLM, Ollama on one box) has a few slots and a queue in front of them;
what it cannot serve at once waits. A client that sends more than the slots only makes requests wait in
the queue, where a timeout cuts them off and re-sends them while the server still works on them. So
the pool starts at one request in flight and moves the limit as TCP Vegas does (Brakmo & Peterson
1995; Netflix's concurrency-limits ``VegasLimit``): latency that stays at its no-load value means the
server had room, latency that grows with the number in flight means a queue.

- Each limit is judged on the median of max(``samples_per_step``, limit / 2) completions (in slow
  start, below: max(2, limit / 2)) sent under it with every slot in use (``in_flight_at_send ==
  limit``: the last slot was really tried), so one slow reply decides little.
  ``no_load`` is the median latency of requests sent with nothing else of ours in flight (no queue
  of ours can be in front of them; the last 100): a median, not the smallest latency ever seen,
  which noise alone would push down until every level looked queued, and never from loaded levels,
  whose small queues would creep into it. (The pool leaves out its first request, which pays for
  the connection.)
- **Raise** when that median is within ``threshold × no_load``. The threshold is ``flat`` or the
  latency's own spread (the 90th percentile over the median, of those no-load samples and, typically,
  within each judged level), whichever is larger, so that an API whose latency is noisy by itself is
  not mistaken for a queue.
  The limit doubles until the first queue or drop (TCP's slow start; doubling at most doubles a
  queued request's wait, which the pool's first-token timeout of 3 × the slowest seen allows), then
  grows by one. Re-probing a level that showed a queue takes ``2^failures`` passed judgements at
  the level below, so the limit settles instead of oscillating.
- **Lower** when the median is above it: to ``limit × no_load / median``, what the server seems to serve
  at once (Vegas's estimate), but not below half. **Halve** on a timeout, 429 or 503 of a request sent
  under the current limit (once per limit: the others in flight met the same overload); a drop does
  not bar re-probing (additive increase, multiplicative decrease, as TCP).

Latencies are compared per LLM token (``latency / (prompt LLM tokens + FIXED_LLM_TOKENS)``), because a
self-hosted server's time is mostly prompt processing, roughly proportional to the prompt, and concept
prompts differ in size by 10×. The class is pure (no clock, no I/O): the pool feeds it completions and
applies its limit.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field


def _spread(samples: Sequence[float]) -> float:
    """90th percentile over median: how far latency strays by itself."""
    deciles = statistics.quantiles(samples, n=10, method="inclusive")
    return deciles[8] / statistics.median(samples)


#: Fewest samples a spread is estimated from (two or three say little about a 90th percentile).
SPREAD_SAMPLES = 4
#: A request's fixed cost in LLM-token equivalents (HTTP, scheduling, the first decode step): keeps
#: tiny prompts from looking slow per token.
FIXED_LLM_TOKENS = 50


@dataclass
class AdaptiveLimit:
    """The concurrency limit, between 1 and ``ceiling`` (``--concurrency``)."""

    ceiling: int
    start: int = 1
    flat: float = 1.2
    """A level whose median latency is at most this many times the no-load latency added no queue."""
    samples_per_step: int = 3
    """Fewest completions per judgement of a level after slow start (half the level above 6)."""
    limit: int = field(init=False)
    epoch: int = field(init=False, default=0)
    """Bumped on every change; a request records it when sent, so stale completions decide nothing."""
    history: list[tuple[int, int]] = field(init=False, default_factory=list)
    """(completions seen, limit) at the start and at each change."""

    def __post_init__(self) -> None:
        self.limit = max(1, min(self.start, self.ceiling))
        self.samples = 0
        self.no_load: float | None = None
        self._reference: deque[float] = deque(maxlen=100)  # samples sent alone: no queue of ours
        self._spreads: deque[float] = deque(maxlen=20)  # within each judged level: 90th pct / median
        self._level: list[float] = []  # this level's samples, sent with every slot in use
        self._failures: dict[int, int] = {}  # level -> judgements that found a queue there
        self._passed = 0  # judgements passed at the current level
        self._slow_start = True  # doubling until the first queue or drop
        self.history.append((0, self.limit))

    @staticmethod
    def per_token(latency_s: float, prompt_llm_tokens: int) -> float:
        return latency_s / (max(0, prompt_llm_tokens) + FIXED_LLM_TOKENS)

    def samples_needed(self) -> int:
        """Completions per judgement: half the limit, at least ``samples_per_step`` (in slow start at
        least two: the ramp must be short, for short runs; a wrong call there is undone later)."""
        if self._slow_start:
            return max(2, self.limit // 2)
        return max(self.samples_per_step, self.limit // 2)

    def threshold(self) -> float:
        """How much slower than no-load a level's median may be and still count as no queue: ``flat``, or
        the latency's own spread (90th percentile over median, of the no-load samples and within the
        levels judged, typically) if that is larger."""
        spreads = [self.flat]
        if len(self._reference) >= SPREAD_SAMPLES:
            spreads.append(_spread(self._reference))
        if self._spreads:
            spreads.append(statistics.median(self._spreads))
        return max(spreads)

    def _set(self, limit: int) -> int | None:
        limit = max(1, min(self.ceiling, limit))
        self._level = []
        self._passed = 0
        if limit == self.limit:
            return None
        self.limit = limit
        self.epoch += 1
        self.history.append((self.samples, limit))
        return limit

    def completed(self, latency_s: float, prompt_llm_tokens: int, in_flight_at_send: int,
                  epoch_at_send: int) -> int | None:
        """A request completed; returns the new limit if it changed. ``in_flight_at_send`` counts the
        request itself."""
        self.samples += 1
        if latency_s <= 0:
            return None
        sample = self.per_token(latency_s, prompt_llm_tokens)
        if in_flight_at_send == 1:
            self._reference.append(sample)
            self.no_load = statistics.median(self._reference)
        if epoch_at_send != self.epoch or in_flight_at_send < self.limit:
            return None
        self._level.append(sample)
        if len(self._level) < self.samples_needed():
            return None
        median = statistics.median(self._level)
        if len(self._level) >= SPREAD_SAMPLES:
            self._spreads.append(_spread(self._level))
        if self.no_load is None:  # judged above 1 from the start: this level is the reference
            self._reference.extend(self._level)
            self.no_load = median
        if median <= self.threshold() * self.no_load:
            self._level = []
            self._passed += 1
            if self._passed >= 2 ** self._failures.get(self.limit + 1, 0):
                return self._set(2 * self.limit if self._slow_start else self.limit + 1)
            return None
        self._slow_start = False
        self._failures[self.limit] = self._failures.get(self.limit, 0) + 1
        estimate = math.floor(self.limit * self.no_load / median)
        return self._set(min(self.limit - 1, max(self.limit // 2, estimate)))

    def dropped(self, epoch_at_send: int) -> int | None:
        """A request timed out or the server refused it for load (429/503): halve the limit."""
        self.samples += 1
        if epoch_at_send != self.epoch:
            return None
        self._slow_start = False  # not a queue: the level is not barred from re-probing (AIMD, as TCP)
        return self._set(self.limit // 2)

    def settled(self) -> int:
        """The limit that held for the most completions over the second half of the run (ties: the lower)."""
        ends = [*(n for n, _ in self.history[1:]), self.samples]
        half = self.samples / 2
        held: dict[int, float] = {}
        for (start, limit), end in zip(self.history, ends, strict=True):
            held[limit] = held.get(limit, 0.0) + max(0.0, end - max(start, half))
        if not any(held.values()):
            return self.limit
        return min(held, key=lambda level: (-held[level], level))
