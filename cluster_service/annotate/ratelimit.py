"""Client-side rate limits: token buckets that pace requests, and a sliding-window ledger that bounds them.

A token bucket alone lets ``capacity + rate * W`` through in any window of W seconds, more than the
limit; a sliding-window log alone sends the whole minute's allowance in one burst, which real
endpoints (token buckets themselves) answer with 429s. Both together pace smoothly and guarantee
that no window of ``window_s`` (plus a margin of 0.25 s, at most 10% of the window, for jitter between
send and arrival) contains more than ``rpm`` requests or ``tpm`` LLM tokens. LLM-token amounts are
estimates when sent and are corrected with the usage the reply reports (``settle``). ``observe`` honours the server's
``x-ratelimit-*`` headers: a pause while its bucket is empty (``remaining = 0``), and its limits where
they are tighter than ours.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

WINDOW_MARGIN_S = 0.25


@dataclass(frozen=True)
class ServerLimits:
    """What the server's ``x-ratelimit-*`` headers say: its limits per window, and how long its bucket
    stays empty (None when it has room)."""

    pause_s: float | None = None
    limit_requests: int | None = None
    limit_tokens: int | None = None


class TokenBucket:
    """Refills at ``rate``/s up to ``capacity``; may go into debt so that one large request still passes."""

    def __init__(self, rate: float, capacity: float, now: float):
        self.rate, self.capacity = rate, capacity
        self.level, self.stamp = capacity, now

    def _refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait(self, amount: float, now: float) -> float:
        self._refill(now)
        need = min(amount, self.capacity)
        return 0.0 if self.level >= need else (need - self.level) / self.rate

    def take(self, amount: float) -> None:
        self.level -= amount

    def give(self, amount: float) -> None:
        self.level = min(self.capacity, self.level + amount)


@dataclass
class Grant:
    """One sent request in the ledger; ``llm_tokens`` is the estimate until ``settle`` corrects it."""

    t: float
    llm_tokens: int
    live: bool = True


class RateLimiter:
    def __init__(self, rpm: float, tpm: float, window_s: float = 60.0, burst_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.max_requests = max(1, math.floor(rpm))
        self.max_llm_tokens = tpm
        self.horizon = window_s + min(WINDOW_MARGIN_S, 0.1 * window_s)
        self._burst_share = burst_s / self.horizon
        now = clock()
        r_rate, t_rate = rpm / self.horizon, tpm / self.horizon
        self.requests = TokenBucket(r_rate, max(1.0, r_rate * burst_s), now)
        self.llm_tokens = TokenBucket(t_rate, max(1.0, t_rate * burst_s), now)
        self.ledger: deque[Grant] = deque()
        self.ledger_llm_tokens = 0
        self.paused_until = 0.0
        self._lock = asyncio.Lock()

    def _expire(self, now: float) -> None:
        while self.ledger and self.ledger[0].t <= now - self.horizon:
            grant = self.ledger.popleft()
            grant.live = False
            self.ledger_llm_tokens -= grant.llm_tokens

    def _ledger_wait(self, tokens: int, now: float) -> float:
        waits = [0.0]
        over = len(self.ledger) + 1 - self.max_requests
        if over > 0:
            waits.append(self.ledger[over - 1].t + self.horizon - now)
        excess = self.ledger_llm_tokens + tokens - self.max_llm_tokens
        if excess > 0:
            freed = 0
            for grant in self.ledger:
                freed += grant.llm_tokens
                if freed >= excess:
                    waits.append(grant.t + self.horizon - now)
                    break
        return max(waits)

    def wait_time(self, tokens: int) -> float:
        now = self.clock()
        self._expire(now)
        return max(self.paused_until - now, self.requests.wait(1, now), self.llm_tokens.wait(tokens, now),
                   self._ledger_wait(tokens, now))

    async def acquire(self, tokens: int) -> Grant:
        """Wait until one request of ``tokens`` LLM tokens (estimated) may be sent now, and record it as sent.

        The caller must send immediately: the ledger's timestamp is the send time it bounds."""
        tokens = min(tokens, int(self.max_llm_tokens))  # larger requests are refused up front by the stage
        async with self._lock:
            while (delay := self.wait_time(tokens)) > 0:
                await asyncio.sleep(min(delay, 0.25) + 1e-4)
            grant = Grant(self.clock(), tokens)
            self.requests.take(1)
            self.llm_tokens.take(tokens)
            self.ledger.append(grant)
            self.ledger_llm_tokens += tokens
            return grant

    def settle(self, grant: Grant, actual_tokens: int) -> None:
        """Replace the estimate with what the server counted (refund or extra debit)."""
        delta = actual_tokens - grant.llm_tokens
        if delta > 0:
            self.llm_tokens.take(delta)
        else:
            self.llm_tokens.give(-delta)
        if grant.live:
            self.ledger_llm_tokens += delta
        grant.llm_tokens = actual_tokens

    def pause(self, seconds: float) -> None:
        """Send nothing for ``seconds`` (the server reported an empty bucket)."""
        self.paused_until = max(self.paused_until, self.clock() + seconds)

    def lower_limits(self, requests: int | None, tokens: int | None) -> None:
        """Adopt the server's limits where they are tighter than ours (assumed per the same window)."""
        now = self.clock()
        if requests is not None and 0 < requests < self.max_requests:
            self.max_requests = requests
            self.requests.wait(0, now)  # refill at the old rate up to now
            self.requests.rate = requests / self.horizon
            self.requests.capacity = min(self.requests.capacity, max(1.0, requests * self._burst_share))
        if tokens is not None and 0 < tokens < self.max_llm_tokens:
            self.max_llm_tokens = tokens
            self.llm_tokens.wait(0, now)
            self.llm_tokens.rate = tokens / self.horizon
            self.llm_tokens.capacity = min(self.llm_tokens.capacity, max(1.0, tokens * self._burst_share))

    def observe(self, limits: ServerLimits | None) -> None:
        """Honour what the server's x-ratelimit-* headers said."""
        if limits is None:
            return
        if limits.pause_s:
            self.pause(limits.pause_s)
        self.lower_limits(limits.limit_requests, limits.limit_tokens)
