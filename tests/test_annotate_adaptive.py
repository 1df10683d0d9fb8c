"""The adaptive concurrency limit on its own: a discrete-event simulation of a server with N slots and a
queue (service time proportional to the prompt), driven by ``AdaptiveLimit`` exactly as the pool
drives it. No clock, no sockets: deterministic and instant."""

from __future__ import annotations

import heapq
import random

import pytest

from cluster_service.annotate.adaptive import AdaptiveLimit


def simulate(slots: int, ceiling: int, n: int, per_token_s: float = 1e-3, noise: float = 0.0,
             seed: int = 0, sizes: tuple[int, int] = (150, 250),
             fixed: bool = False, per_request_s: float | None = None) -> tuple[AdaptiveLimit, float, int]:
    """Send ``n`` requests through the limit (held at ``ceiling`` if ``fixed``); returns it, the makespan
    and the most in flight at once. Service time is proportional to the prompt, or ``per_request_s``
    whatever the prompt (as an API's latency may be)."""
    rng = random.Random(seed)
    limit = AdaptiveLimit(ceiling, start=ceiling if fixed else 1)
    now, sent, in_flight, most = 0.0, 0, 0, 0
    free_at = [0.0] * slots  # when each server slot is next free (FIFO queue in front)
    done: list[tuple[float, int, int, float, int]] = []  # (finish, tokens, in_flight_at_send, sent_t, epoch)
    while sent < n or done:
        while sent < n and in_flight < limit.limit:
            tokens = rng.randint(*sizes)
            service = (per_request_s or per_token_s * tokens) * (1 + noise * rng.random())
            slot = min(range(slots), key=lambda i: free_at[i])
            start = max(now, free_at[slot])
            free_at[slot] = start + service
            in_flight += 1
            sent += 1
            most = max(most, in_flight)
            heapq.heappush(done, (start + service, tokens, in_flight, now, limit.epoch))
        finish, tokens, at_send, sent_t, epoch = heapq.heappop(done)
        now = finish
        in_flight -= 1
        if not fixed:
            limit.completed(finish - sent_t, tokens, at_send, epoch)
    return limit, now, most


def best_fixed_makespan(slots: int, n: int) -> float:
    return min(simulate(slots, c, n, fixed=True)[1] for c in (1, 2, 4, 8, 16))


def test_one_slot_settles_at_one_and_loses_no_throughput():
    limit, makespan, most = simulate(slots=1, ceiling=16, n=60)
    assert limit.settled() == 1 and most <= 2
    assert makespan <= 1.01 * best_fixed_makespan(1, 60)  # a probe of 2 only waits in the queue: no loss


def test_eight_slots_settle_near_eight_with_the_throughput_of_the_best_fixed_setting():
    limit, makespan, most = simulate(slots=8, ceiling=16, n=800)
    assert 7 <= limit.settled() <= 10, limit.history
    assert makespan <= best_fixed_makespan(8, 800) / 0.9


def test_varied_prompt_sizes_still_settle():
    limit, _, _ = simulate(slots=4, ceiling=16, n=300, sizes=(60, 1500))
    assert 3 <= limit.settled() <= 6, limit.history


def test_noisy_latency_without_a_queue_is_not_mistaken_for_one():
    """An API with no queue but latencies that vary by 4x by themselves: the limit climbs to the ceiling."""
    limit, _, _ = simulate(slots=64, ceiling=16, n=400, noise=3.0)
    assert limit.settled() >= 12, limit.history
    # ... also when its latency does not follow the prompt's size at all
    limit, _, _ = simulate(slots=64, ceiling=16, n=400, noise=3.0, sizes=(60, 1500), per_request_s=0.3)
    assert limit.settled() >= 12, limit.history


def test_only_requests_sent_under_the_current_limit_decide():
    limit = AdaptiveLimit(16, start=4)
    assert limit.completed(0.1, 100, 4, 0) is None
    assert limit.completed(0.1, 100, 3, 0) is None  # not every slot in use: proves nothing
    assert limit.completed(0.1, 100, 4, 0) == 8  # judged (half the limit in slow start): no queue, doubled
    assert limit.epoch == 1
    for _ in range(10):
        assert limit.completed(5.0, 100, 8, 0) is None  # sent before the raise: ignored
    assert limit.dropped(0) is None and limit.limit == 8
    assert limit.dropped(1) == 4 and limit.dropped(1) is None  # halved once per limit
    for _ in range(3):
        limit.completed(0.1, 100, 4, 2)
    assert limit.limit == 5  # after a drop: one at a time


@pytest.mark.parametrize("ceiling", [1, 3])
def test_never_above_the_ceiling(ceiling):
    limit, _, most = simulate(slots=8, ceiling=ceiling, n=100)
    assert most <= ceiling and limit.limit <= ceiling
