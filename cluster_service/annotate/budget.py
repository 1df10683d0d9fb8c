"""LLM-token estimates and the cutting of large concepts to a prompt budget.

Estimates are a fixed characters-per-LLM-token heuristic, not a tokenizer: the cut must be deterministic
(the reply cache is keyed by the exact prompt, so a resumed run must rebuild identical prompts), and
no tokenizer for an arbitrary endpoint's model is available offline. The rate limiter corrects its
accounting from the usage each reply reports.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence

from .prompts import Messages

CHARS_PER_LLM_TOKEN = 4.0
LLM_TOKENS_PER_MESSAGE = 4
LLM_TOKENS_PER_REPLY_PRIMER = 3


def estimate_llm_tokens(messages: Messages) -> int:
    """Prompt LLM tokens of a chat request, roughly as OpenAI counts them (content + per-message overhead)."""
    chars = sum(len(m["content"]) + len(m["role"]) for m in messages)
    return math.ceil(chars / CHARS_PER_LLM_TOKEN) + LLM_TOKENS_PER_MESSAGE * len(messages) + LLM_TOKENS_PER_REPLY_PRIMER


def proportional_sample(words: Sequence[str], n: int, key: str) -> list[str]:
    """``n`` occurrences whose type counts are proportional to the concept's (largest remainder), the
    occurrences of each type drawn with a seeded RNG, returned in their original order."""
    if n >= len(words):
        return list(words)
    rng = random.Random(key)
    positions: dict[str, list[int]] = defaultdict(list)
    for i, word in enumerate(words):
        positions[word].append(i)
    total = len(words)
    quotas = {w: len(p) * n / total for w, p in positions.items()}
    alloc = {w: math.floor(q) for w, q in quotas.items()}
    # ties in the remainder go to the more frequent type, then to the alphabetically first
    order = sorted(quotas, key=lambda w: (-(quotas[w] - alloc[w]), -len(positions[w]), w))
    for w in order[: n - sum(alloc.values())]:
        alloc[w] += 1
    chosen = sorted(i for w, c in alloc.items() if c for i in rng.sample(positions[w], c))
    return [words[i] for i in chosen]


def _largest_fitting(n_max: int, fits: Callable[[int], bool]) -> int:
    lo, hi = 1, n_max
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def cut_to_budget(words: Sequence[str], budget: int, key: str,
                  render: Callable[[Sequence[str]], Messages]) -> list[str]:
    """The concept's words if the prompt fits ``budget`` LLM tokens, else the largest proportional sample that
    does (at least one word)."""
    if estimate_llm_tokens(render(words)) <= budget or len(words) <= 1:
        return list(words)
    n = _largest_fitting(len(words) - 1,
                         lambda m: estimate_llm_tokens(render(proportional_sample(words, m, key))) <= budget)
    return proportional_sample(words, n, key)


def unique_types(words: Sequence[str], budget: int, render: Callable[[Sequence[str]], Messages]) -> list[str]:
    """Each type once, most frequent first (ties alphabetical), as many as fit the budget: the paper's
    retry for prompts the content filter refused."""
    counts = Counter(words)
    types = sorted(counts, key=lambda w: (-counts[w], w))
    if estimate_llm_tokens(render(types)) <= budget or len(types) <= 1:
        return types
    n = _largest_fitting(len(types) - 1, lambda m: estimate_llm_tokens(render(types[:m])) <= budget)
    return types[:n]
