"""Adaptive concurrency: find how many requests the server really serves at once, from latency alone.

A self-hosted server (llama.cpp, vLLM, Ollama on one box) has a few slots and a queue in front of them;
what it cannot serve at once waits. A client that sends more than the slots only makes requests wait in
the queue, where a timeout cuts them off and re-sends them while the server still works on them. So
the pool starts at one request in flight and moves the limit as TCP Vegas does (Brakmo & Peterson
1995; Netflix's concurrency-limits ``VegasLimit``): latency that stays at its no-load value means the
server had room, latency that grows with the number in flight means a queue, and ``limit × no_load /
latency`` is what the server serves at once (with ``slots`` slots and ``limit`` above them, each
request waits for ``limit - slots`` others: latency = service × limit / slots). Every decision rests
on the median of several completions, with a margin for how noisy latency is by itself, because one
reply on a busy machine says little.

- **No load** is measured, not guessed: the limit stays at 1 until ``reference_samples`` requests
  were sent with nothing else of ours in flight; those, and the samples of each level that slow
  start doubled through without a queue (as good as alone: a queue there would have doubled their
  latency), are the reference (the last 100). The no-load latency is fitted to them as ``fixed +
  per LLM token × prompt LLM tokens`` (Theil-Sen: median of pairwise slopes), or as a constant if
  that fits better (an API's latency may not follow the prompt at all; a self-hosted server's is
  mostly prompt processing, and concept prompts differ in size by 10×). Each sample then counts as
  its ratio to that fit. Not the smallest latency ever seen, which noise alone would push down until
  every level looked queued, and not loaded levels' samples, whose small queues would creep in.
  (The pool leaves out its first request, which pays for the connection.)
- **A level is judged** on the median ratio of ``samples_needed()`` completions sent under it with
  every slot in use (``in_flight_at_send == limit``: the last slot was really tried): half the limit
  in slow start (at least two), the limit itself after it (about one service time's worth).
- **Raise** when that median is within ``threshold()`` of the reference's: ``flat`` × (1 + ``z``
  standard errors of the ratio of the two medians, from the reference's spread around the fit (MAD),
  the level's own if larger, and both counts). On a steady server the margin is ``flat``: one
  request waiting at 8 slots (1.125×) passes, two (1.25×) do not; a noisy API's latency gets a wider
  margin instead of being mistaken for a queue. The limit doubles until the first queue (TCP's slow
  start; doubling at most doubles a queued request's wait, which the pool's first-token timeout of
  3 × the slowest seen allows), then grows by the headroom the judgement left (``limit × threshold /
  ratio``: large only where latency is noisy and stayed flat), by one at least and at most doubling,
  and never past a higher level whose latest judgement found a queue. Re-probing such a level takes
  ``2^failures`` passed judgements at the level below, so the limit settles instead of oscillating.
- **Lower** only when a second batch confirms the first (judged on both: meanwhile a real queue costs
  latency, not throughput): to one below if the level below passed its latest judgement, else to
  ``limit × no_load / median`` (Vegas's estimate of the slots), by one at least and not below half.
  **Halve** on a timeout or an overload answer (503, or a 429 that is not a rate limit; see
  ``backends.CallError.overload``) of a request sent under the current limit (once per limit: the
  others in flight met the same overload); a drop does not bar re-probing (additive increase,
  multiplicative decrease, as TCP).
- **Measure no-load again** when a batch, confirmed by a second, was faster than alone by twice the
  margin: the reference was taken at a busy moment (other work on the machine), which would make
  every level look unqueued. The limit goes back to 1 and slow start begins anew.

The class is pure (no clock, no I/O): the pool feeds it completions and applies its limit.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

#: Median absolute deviation × this is the standard deviation of a normal distribution.
MAD_TO_SD = 1.4826
#: The standard error of a median is about this many times that of a mean (normal samples).
MEDIAN_SE = 1.2533
#: Fewest samples a level's own spread is estimated from.
SPREAD_SAMPLES = 3
#: The relative spread assumed at least (a reference of identical samples would claim none).
MIN_SPREAD = 0.02


def _relative_spread(values: Sequence[float], fitted: int = 0) -> float:
    """Robust relative standard deviation: MAD × 1.4826 over the median, corrected for the ``fitted``
    parameters the values are residuals of (few samples, two fitted, would look too steady)."""
    median = statistics.median(values)
    mad = statistics.median(abs(v - median) for v in values)
    dof = math.sqrt(len(values) / max(1, len(values) - fitted))
    return max(MIN_SPREAD, MAD_TO_SD * mad / median * dof)


@dataclass(frozen=True)
class Sample:
    latency_s: float
    prompt_llm_tokens: int


@dataclass(frozen=True)
class NoLoad:
    """Latency with nothing else of ours in flight: ``fixed_s + per_llm_token_s × prompt LLM tokens``,
    a Theil-Sen fit (median of pairwise slopes: robust to a stray sample) of the reference samples."""

    fixed_s: float
    per_llm_token_s: float

    @classmethod
    def fit(cls, samples: Sequence[Sample]) -> NoLoad:
        slopes = [(b.latency_s - a.latency_s) / (b.prompt_llm_tokens - a.prompt_llm_tokens)
                  for i, a in enumerate(samples) for b in samples[i + 1:]
                  if b.prompt_llm_tokens != a.prompt_llm_tokens]
        slope = max(0.0, statistics.median(slopes)) if slopes else 0.0
        fixed = statistics.median(s.latency_s - slope * s.prompt_llm_tokens for s in samples)
        if fixed <= 0:  # all of it per token: refit through the origin
            fixed = 0.0
            slope = statistics.median(s.latency_s / max(1, s.prompt_llm_tokens) for s in samples)
        return cls(fixed, slope)

    @classmethod
    def constant(cls, samples: Sequence[Sample]) -> NoLoad:
        """The same latency whatever the prompt (as an API's may be)."""
        return cls(statistics.median(s.latency_s for s in samples), 0.0)

    def ratio(self, sample: Sample) -> float:
        """How many times slower than no-load the sample was (1: as if alone)."""
        expected = self.fixed_s + self.per_llm_token_s * max(0, sample.prompt_llm_tokens)
        return sample.latency_s / max(expected, 1e-9)


@dataclass
class AdaptiveLimit:
    """The concurrency limit, between 1 and ``ceiling`` (``--concurrency``)."""

    ceiling: int
    start: int = 1
    flat: float = 1.15
    """A level whose median latency is at most this many times the no-load latency added no queue."""
    z: float = 2.0
    """Standard errors a level's median may stray above no-load by noise alone (noisy latency only)."""
    most: float = 1.6
    """The margin's cap: two requests where one slot serves them (2×) always count as a queue, however
    noisy the latency (noise that large is other work on the machine, not the server's own)."""
    samples_per_step: int = 3
    """Fewest completions per judgement of a level."""
    reference_samples: int = 4
    """Completions sent alone (nothing else of ours in flight) before the limit first moves."""
    limit: int = field(init=False)
    epoch: int = field(init=False, default=0)
    """Bumped on every change; a request records it when sent, so stale completions decide nothing."""
    history: list[tuple[int, int]] = field(init=False, default_factory=list)
    """(completions seen, limit) at the start and at each change."""
    judgements: list[tuple[int, int, float, float]] = field(init=False, default_factory=list)
    """(limit, samples, their median over no-load, threshold) of each judgement, for tests, logs and the
    run's summary (its last 40)."""

    def __post_init__(self) -> None:
        self.limit = max(1, min(self.start, self.ceiling))
        self.samples = 0
        self.samples_in_reference = 0
        self._reference: deque[Sample] = deque(maxlen=100)  # samples sent alone: no queue of ours
        self._model: tuple[int, NoLoad, float, float] | None = None  # (reference size, fit, median, spread)
        self._level: list[Sample] = []  # this level's samples, sent with every slot in use
        self._failures: dict[int, int] = {}  # level -> judgements that found a queue there
        self._passed = 0  # judgements passed at the current level
        self._verdicts: dict[int, bool] = {}  # level -> whether its latest judgement passed
        self._slow_start = True  # doubling until the first queue
        self.history.append((0, self.limit))

    # ---- what the judgements use -----------------------------------------------------------------
    def _reference_model(self) -> tuple[NoLoad, float, float] | None:
        """The no-load fit, the reference's median ratio to it (about 1) and its relative spread."""
        if not self._reference:
            return None
        if self._model is None or self._model[0] != self.samples_in_reference:
            samples = list(self._reference)
            best: tuple[float, NoLoad] | None = None
            for fit, fitted in ((NoLoad.constant(samples), 1), (NoLoad.fit(samples), 2)):
                if len(samples) > fitted:
                    spread = _relative_spread([fit.ratio(s) for s in samples], fitted)
                    if best is None or spread < best[0]:
                        best = (spread, fit)
            spread, fit = best or (1.0, NoLoad.constant(samples))
            ratios = [fit.ratio(s) for s in samples]
            self._model = (self.samples_in_reference, fit, statistics.median(ratios), spread)
        return self._model[1:]

    @property
    def no_load(self) -> NoLoad | None:
        model = self._reference_model()
        return model[0] if model else None

    def describe(self) -> dict[str, float | int | None]:
        """What the judgements rest on, for the run's summary."""
        model = self._reference_model()
        if model is None:
            return {"reference_samples": 0}
        fit, _, spread = model
        return {"reference_samples": len(self._reference), "no_load_fixed_s": round(fit.fixed_s, 5),
                "no_load_s_per_llm_token": round(fit.per_llm_token_s, 7), "reference_spread": round(spread, 3),
                "noise": round(self.noise(), 3), "threshold": round(self.threshold(), 3)}

    def samples_needed(self) -> int:
        """Completions per judgement: in slow start half the limit, at least two (the ramp must be
        short, for short runs; a wrong call there is undone later), after it the limit (about one
        service time's worth), at least ``samples_per_step``."""
        if self._slow_start:
            return max(2, self.limit // 2)
        return max(self.samples_per_step, self.limit)

    def noise(self) -> float:
        """Latency's relative spread by itself: the reference's, around the no-load fit."""
        model = self._reference_model()
        return model[2] if model else 0.0

    def threshold(self, level_spread: float = 0.0, level_samples: int | None = None) -> float:
        """How much slower than no-load a level's median may be and still count as no queue: ``flat``,
        or 1 + ``z`` standard errors of the ratio of the level's median to the reference's (from the
        spread by itself, the level's own if larger, and both counts) if that is larger."""
        if self._reference_model() is None:
            return self.flat
        noise = self.noise()
        n_level = level_samples or self.samples_needed()
        error = MEDIAN_SE * noise * math.sqrt(1 / len(self._reference) + 1 / n_level)
        return min(self.most, self.flat * (1 + self.z * error))

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

    # ---- what the pool tells it ----------------------------------------------------------------
    def completed(self, latency_s: float, prompt_llm_tokens: int, in_flight_at_send: int,
                  epoch_at_send: int) -> int | None:
        """A request completed; returns the new limit if it changed. ``in_flight_at_send`` counts the
        request itself."""
        self.samples += 1
        if latency_s <= 0:
            return None
        sample = Sample(latency_s, prompt_llm_tokens)
        if in_flight_at_send == 1:
            self._reference.append(sample)
            self.samples_in_reference += 1
        if epoch_at_send != self.epoch or in_flight_at_send < self.limit:
            return None
        self._level.append(sample)
        if self.limit == 1:  # its samples are the reference: judged once there are enough of them
            if len(self._reference) < self.reference_samples or len(self._level) < self.samples_needed():
                return None
        elif len(self._level) not in (self.samples_needed(), 2 * self.samples_needed()):
            return None  # judged on a batch, or (a first batch that found a queue) on twice that
        seeded = not self._reference
        if seeded:  # judged above 1 from the start: this level is the reference
            self._reference.extend(self._level)
            self.samples_in_reference += len(self._level)
        model = self._reference_model()
        assert model is not None
        fit, no_load, _ = model
        ratios = [fit.ratio(s) for s in self._level]
        median = statistics.median(ratios)
        spread = _relative_spread(ratios) if len(ratios) >= SPREAD_SAMPLES else 0.0
        threshold = self.threshold(spread, len(ratios))
        self.judgements.append((self.limit, len(ratios), round(median / no_load, 3), round(threshold, 3)))
        if median * threshold ** 2 < no_load and self.limit > 1:
            # faster than alone, well beyond noise: no-load was measured at a busy moment (other work
            # on the machine); once confirmed, measure it again, from one in flight
            if len(ratios) < 2 * self.samples_needed():
                return None
            self._reference.clear()
            self._failures.clear()
            self._verdicts.clear()
            self._slow_start = True
            return self._set(1)
        if median <= threshold * no_load:
            if self._slow_start and self.limit > 1 and not seeded:  # doubled without a queue: as good as alone
                self._reference.extend(self._level)
                self.samples_in_reference += len(self._level)
            self._level = []
            self._passed += 1
            self._verdicts[self.limit] = True
            if self._passed < 2 ** self._failures.get(self.limit + 1, 0):
                return None
            return self._set(self._raised(threshold * no_load / median))
        if len(ratios) < 2 * self.samples_needed():
            return None  # confirm on twice the samples first: a queue costs only latency meanwhile
        self._slow_start = False
        self._failures[self.limit] = self._failures.get(self.limit, 0) + 1
        self._verdicts[self.limit] = False
        if self._verdicts.get(self.limit - 1):  # one more than the level below was too many
            return self._set(self.limit - 1)
        estimate = round(self.limit * no_load / median)
        return self._set(min(self.limit - 1, max(self.limit // 2, estimate)))

    def _raised(self, headroom: float) -> int:
        """The next level up: double in slow start; after it by one, or by the headroom the judgement
        left (``threshold × no_load / median``: large where latency is noisy and stayed flat), up to
        double, but not past a higher level whose latest judgement found a queue."""
        if self._slow_start:
            target = 2 * self.limit
        else:
            target = max(self.limit + 1, min(2 * self.limit, math.floor(self.limit * headroom)))
        for level, passed in self._verdicts.items():
            if not passed and level > self.limit:
                target = min(target, max(self.limit + 1, level - 1))
        return target

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
