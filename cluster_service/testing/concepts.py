"""Synthetic concept tables in CONCEPT_SCHEMA, for the annotate tests and benchmark (not real data).

Concepts are drawn from small themed vocabularies (cities, weekdays, -ing verbs, determiners ...) so
the baseline labeller has something real to tag, with sizes either given or lognormal (a few large
concepts, many small ones, as clustering produces).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

import pyarrow as pa

from ..cluster.concepts import CONCEPT_SCHEMA, SETTINGS_KEY

THEMES: dict[str, list[str]] = {
    "cities": ["London", "Paris", "Berlin", "Madrid", "Rome", "Vienna", "Prague", "Lisbon", "Dublin", "Oslo"],
    "weekdays": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
    "ing_verbs": ["running", "eating", "singing", "walking", "reading", "writing", "swimming", "talking"],
    "determiners": ["the", "a", "an", "this", "that", "these", "those"],
    "animals": ["dog", "cat", "horse", "cow", "sheep", "goat", "lion", "tiger", "wolf", "bear"],
    "numbers": ["1", "2", "10", "42", "100", "1990", "2001", "7", "365", "12"],
    "adverbs": ["quickly", "slowly", "happily", "sadly", "badly", "loudly", "quietly", "gently"],
}
TEMPLATE = "They said that {w} was on the list ."


def synthetic_concept_table(sizes: Sequence[int], seed: int = 0, n_examples: int = 5,
                            themes: Sequence[str] | None = None, settings_key: str | None = None) -> pa.Table:
    """One concept per size; concept i takes its words from theme ``themes[i]`` (else cycles through all).

    ``settings_key`` is recorded as the cluster stage records its own (schema metadata
    ``cluster_service.settings_key``), so tests can play a re-cluster with other settings."""
    rng = random.Random(seed)
    names = list(THEMES)
    rows = []
    for i, size in enumerate(sizes):
        theme = themes[i] if themes is not None else names[i % len(names)]
        vocab = THEMES[theme]
        weights = [1 / (r + 1) for r in range(len(vocab))]  # Zipf-like: a few types dominate
        words = rng.choices(vocab, weights=weights, k=int(size))
        counts = Counter(words)
        top = sorted(counts, key=lambda w: (-counts[w], w))[:50]
        examples = []
        for j, w in enumerate(rng.sample(words, min(n_examples, len(words)))):
            examples.append({"row": i * 1000 + j, "sentence_id": i * 100 + j, "position": 3, "word": w,
                             "sentence": TEMPLATE.format(w=w)})
        rows.append({"concept": i, "size": len(words), "words": words,
                     "top_types": [{"word": w, "count": counts[w]} for w in top], "examples": examples,
                     "centroid": [rng.random() for _ in range(4)]})
    table = pa.Table.from_pylist(rows, schema=CONCEPT_SCHEMA)
    if settings_key is not None:
        table = table.replace_schema_metadata({SETTINGS_KEY: settings_key})
    return table


def lognormal_sizes(n: int, seed: int = 0, median: float = 40.0, sigma: float = 1.2,
                    cap: int = 20_000) -> list[int]:
    """Concept sizes as clustering produces them: many small concepts, a few large ones (capped)."""
    rng = random.Random(seed)
    return [max(1, min(cap, round(rng.lognormvariate(0, sigma) * median))) for _ in range(n)]
