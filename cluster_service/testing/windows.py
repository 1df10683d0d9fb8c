"""What a sliding-window rate limit sees in a log of arrivals: the most requests, or LLM tokens, in any
window. Tests and the benchmark measure the limiter with these on the server's own timestamps."""

from __future__ import annotations


def max_in_window(times: list[float], window: float) -> int:
    """Most events in any half-open window of ``window`` seconds (what a sliding-window limit sees)."""
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


def max_sum_in_window(events: list[tuple[float, int]], window: float) -> int:
    """Largest sum of the values of (time, value) events in any half-open window of ``window`` seconds."""
    events = sorted(events)
    best = total = j = 0
    for t, v in events:
        total += v
        while events[j][0] <= t - window:
            total -= events[j][1]
            j += 1
        best = max(best, total)
    return best
