"""Annotate pieces without a server: prompts, budget cutting, reply parsing, headers, the rate limiter."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter

import pytest

from cluster_service.annotate.backends import empty_bucket_pause, parse_duration, redact, retry_after
from cluster_service.annotate.budget import cut_to_budget, estimate_llm_tokens, proportional_sample, unique_types
from cluster_service.annotate.prompts import (
    PAPER_SYSTEM,
    ReplyError,
    build_messages,
    clean_label,
    mark_word,
    parse_structured,
)
from cluster_service.annotate.ratelimit import RateLimiter
from cluster_service.annotate.usage import Usage, model_price
from cluster_service.errors import UserError
from cluster_service.testing.windows import max_in_window, max_sum_in_window

pytestmark = pytest.mark.unit


def test_paper_prompt_is_verbatim_with_duplicates_kept():
    msgs = build_messages("paper", ["dog", "cat", "dog"])
    assert msgs[0] == {"role": "system", "content": (
        "Assistant is a large language model trained by OpenAI. Instructions: When asked for labels, only "
        "the labels and nothing else should be returned.")}
    assert msgs[1]["content"] == ("Give a short and concise label that best describes the following list of "
                                  "words: ['dog', 'cat', 'dog']")


def test_variants_differ_and_context_marks_the_word():
    ex = [{"sentence": "The dog barked at night .", "position": 1, "word": "dog"}]
    ctx = build_messages("context", ["dog"], ex, n_context=3)[1]["content"]
    assert "The [[dog]] barked" in ctx and ctx.startswith("Give a short and concise label")
    assert "part of speech" in build_messages("lexical", ["dog"])[1]["content"]
    js = build_messages("json", ["dog"])
    assert "JSON" in js[0]["content"] and '"uninterpretable"' in js[1]["content"]
    assert build_messages("lexical", ["dog"])[0]["content"] == PAPER_SYSTEM
    # position that disagrees with the whitespace split: fall back to the first whole-word match
    assert mark_word("A hot-dog and a dog .", 0, "dog") == "A hot-[[dog]] and a dog ."


def test_structured_reply_is_validated():
    ok = parse_structured('```json\n{"label": "Animals", "description": "Pets.", "type": "Semantic"}\n```')
    assert (ok.label, ok.description, ok.type) == ("Animals", "Pets.", "semantic")
    for bad in ("Sure! animals", "[1, 2]", '{"label": "x", "description": "y"}',
                '{"label": "", "description": "y", "type": "semantic"}',
                '{"label": "x", "description": "y", "type": "colour"}'):
        with pytest.raises(ReplyError):
            parse_structured(bad)
    assert clean_label('Label: "Weekdays".\nextra') == "Weekdays"
    with pytest.raises(ReplyError):
        clean_label("  \n ")


def test_cut_keeps_type_proportions_is_seeded_and_fits_budget():
    words = ["the"] * 6000 + ["a"] * 3000 + ["an"] * 1000 + ["this"] * 7
    random.Random(0).shuffle(words)
    render = lambda ws: build_messages("paper", ws)  # noqa: E731
    kept = cut_to_budget(words, 1500, "0:7", render)
    assert estimate_llm_tokens(render(kept)) <= 1500 < estimate_llm_tokens(render(kept + ["the", "a"]))
    counts = Counter(kept)
    n = len(kept)
    for word, full in Counter(words).items():
        assert abs(counts[word] - full * n / len(words)) <= 1  # largest-remainder allocation
    assert cut_to_budget(words, 1500, "0:7", render) == kept
    assert cut_to_budget(words, 1500, "1:7", render) != kept
    assert cut_to_budget(["x", "y"], 1500, "k", render) == ["x", "y"]
    sample = proportional_sample(["b", "a", "b", "c"], 2, "s")
    assert sorted(sample) == ["b", "b"] or sorted(sample) == ["a", "b"]


def test_unique_types_most_frequent_first_within_budget():
    words = ["b"] * 3 + ["a"] * 3 + ["c"] + [f"w{i}" for i in range(2000)]
    render = lambda ws: build_messages("paper", ws)  # noqa: E731
    types = unique_types(words, 300, render)
    assert types[:3] == ["a", "b", "c"] and len(set(types)) == len(types)
    assert estimate_llm_tokens(render(types)) <= 300


def test_header_parsing_and_redaction():
    assert parse_duration("6m0s") == 360 and parse_duration("20ms") == pytest.approx(0.02)
    assert parse_duration("1.5s") == 1.5 and parse_duration("2") == 2
    assert retry_after({"retry-after-ms": "250", "retry-after": "3"}) == 0.25
    assert retry_after({"retry-after": "3"}) == 3
    empty = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2s"}
    assert empty_bucket_pause(empty) == 2
    assert empty_bucket_pause({"x-ratelimit-remaining-requests": "5"}) is None
    assert redact("bad key sk-123 given", "sk-123") == "bad key [redacted] given"


def test_window_helpers():
    assert max_in_window([0, 0.5, 0.99, 1.0, 1.5], 1.0) == 3
    assert max_sum_in_window([(0, 5), (0.5, 5), (1.2, 5)], 1.0) == 10


def test_limiter_bounds_every_sliding_window_and_uses_the_rate():
    window, rpm, tpm = 0.5, 8, 10_000

    async def go() -> list[float]:
        limiter = RateLimiter(rpm, tpm, window_s=window, burst_s=0.1)
        sent = []
        for _ in range(40):
            await limiter.acquire(10)
            sent.append(time.monotonic())
        return sent

    sent = asyncio.run(go())
    assert max_in_window(sent, window) <= rpm
    rate = (len(sent) - 1) / (sent[-1] - sent[0])
    assert rate >= 0.9 * rpm / window


def test_limiter_tokens_corrected_from_usage():
    async def go() -> tuple[float, float]:
        limiter = RateLimiter(1000, 100, window_s=1.0, burst_s=1.0)
        g = await limiter.acquire(90)  # estimate 90 of 100
        t0 = time.monotonic()
        limiter.settle(g, 10)  # the server counted 10: 80 come back
        await limiter.acquire(80)
        fast = time.monotonic() - t0
        g2 = await limiter.acquire(5)
        limiter.settle(g2, 5)
        t1 = time.monotonic()
        await limiter.acquire(50)  # window holds 95 tokens: must wait for the first grant to expire
        return fast, time.monotonic() - t1

    fast, slow = asyncio.run(go())
    assert fast < 0.1 and slow > 0.5


def test_price_table_and_cost(tmp_path):
    assert model_price("gpt-4o-mini", None, None, None) == (0.15, 0.60)
    assert model_price("my-local-llama", None, None, None) is None
    table = tmp_path / "prices.json"
    table.write_text('{"my-local-llama": {"input_per_mtok": 0, "output_per_mtok": 0}, '
                     '"gpt-4o-mini": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}}')
    assert model_price("gpt-4o-mini", str(table), None, None) == (1.0, 2.0)
    assert model_price("my-local-llama", str(table), None, 5.0) == (0.0, 5.0)
    assert Usage(prompt_tokens=2_000_000, completion_tokens=500_000).cost((1.0, 2.0)) == pytest.approx(3.0)
    assert Usage(prompt_tokens=10).cost(None) is None
    bad = tmp_path / "bad.json"
    bad.write_text('{"m": {"input": 1}}')
    with pytest.raises(UserError):
        model_price("m", str(bad), None, None)
