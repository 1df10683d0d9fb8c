"""ConceptX-style filters, as pure functions over Arrow arrays of tokenized sentences.

What ConceptX does (hsajjad/ConceptX, getclusters.sh and scripts/): tokenize with Moses; drop
sentences of ``len(split()) >= length`` words (sentence_length.py); number every word occurrence
``word|||k|||sentence|||position`` where k is the 1-based running count of that word type in corpus
order (create_data_single_layer.py, renumbered over all files in frequency_filter_data.py); then drop
word types whose corpus count is below ``minimum-frequency`` and keep, per type, only the first
``maximum-frequency`` occurrences in corpus order (frequency_filter_data.py).

We do the same, in the same order. Because the cap keeps the *first* occurrences and the frequency
filter drops whole types, the running count among kept rows equals ConceptX's running count over the
whole corpus, so ``occurrence`` means the same thing under both readings. One difference: our
``max_sentence_words`` keeps sentences of up to and including that many words (ConceptX's
``--length`` keeps strictly fewer).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .config import SENTENCES_SCHEMA, TOKENS_SCHEMA


def reservoir_sample(items: Iterable[str], k: int, seed: int) -> tuple[list[str], int]:
    """A seeded uniform sample of ``k`` items in their original order, and how many items there were.

    One pass and ``k`` items of memory (Algorithm R), so a corpus need not be counted first.
    """
    rng = random.Random(seed)
    reservoir: list[tuple[int, str]] = []
    n = 0
    for n, item in enumerate(items, start=1):
        if len(reservoir) < k:
            reservoir.append((n, item))
        else:
            slot = rng.randrange(n)
            if slot < k:
                reservoir[slot] = (n, item)
    reservoir.sort()
    return [item for _, item in reservoir], n


def word_counts(texts: pa.Array) -> np.ndarray:
    """Words per tokenized sentence (words are joined by single spaces; '' has none)."""
    spaces = pc.count_substring(texts, " ").to_numpy(zero_copy_only=False)
    lengths = pc.utf8_length(texts).to_numpy(zero_copy_only=False)
    return np.where(lengths > 0, spaces + 1, 0)


def drop_long_and_empty(texts: pa.Array, max_words: int) -> tuple[pa.Array, int, int]:
    """Sentences with at least one word and (when ``max_words``) at most ``max_words`` words;
    also returns how many were empty and how many too long."""
    counts = word_counts(texts)
    empty = counts == 0
    long = counts > max_words if max_words > 0 else np.zeros(len(counts), dtype=bool)
    keep = ~(empty | long)
    return texts.filter(pa.array(keep)), int(empty.sum()), int(long.sum())


@dataclass
class FilterStats:
    sentences_in: int
    tokens_in: int
    types_in: int
    types_below_min_freq: int
    tokens_below_min_freq: int
    tokens_over_max_occurrences: int
    most_frequent: tuple[str, int] | None


def running_occurrence(type_ids: np.ndarray, n_types: int) -> tuple[np.ndarray, np.ndarray]:
    """1-based running count of each token's type in corpus order, and each type's total count."""
    counts = np.bincount(type_ids, minlength=n_types)
    order = np.argsort(type_ids, kind="stable")
    group_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    occurrence = np.empty(len(type_ids), dtype=np.int64)
    occurrence[order] = np.arange(len(type_ids)) - group_start[type_ids[order]] + 1
    return occurrence, counts


def select_tokens(texts: pa.Array, min_word_freq: int, max_occurrences: int
                  ) -> tuple[pa.Table, pa.Table, FilterStats]:
    """Sentences and kept tokens from non-empty tokenized sentences in corpus order.

    Sentences that keep no token are dropped; sentence ids are renumbered densely in order.
    """
    words = pc.split_pattern(texts, " ")
    flat = words.flatten()
    parent = pc.list_parent_indices(words).to_numpy()
    offsets = words.offsets.to_numpy()
    position = np.arange(len(flat), dtype=np.int64) - offsets[parent]
    encoded = pc.dictionary_encode(flat)
    type_ids = encoded.indices.to_numpy()
    occurrence, counts = running_occurrence(type_ids, len(encoded.dictionary))

    frequent = counts >= min_word_freq
    keep = frequent[type_ids]
    below = int((~keep).sum())
    if max_occurrences > 0:
        capped = keep & (occurrence > max_occurrences)
        keep &= ~capped
    else:
        capped = np.zeros(len(keep), dtype=bool)

    kept_parent = parent[keep]
    has_kept = np.bincount(kept_parent, minlength=len(texts)) > 0
    new_id = np.cumsum(has_kept) - 1
    n_kept = int(keep.sum())
    tokens = pa.Table.from_arrays(
        [
            pa.array(np.arange(n_kept, dtype=np.int64)),
            pa.array(new_id[kept_parent].astype(np.int64)),
            pa.array(position[keep].astype(np.int32)),
            flat.filter(pa.array(keep)),
            pa.array(occurrence[keep].astype(np.int32)),
        ],
        schema=TOKENS_SCHEMA,
    )
    sentences = pa.Table.from_arrays(
        [pa.array(np.arange(int(has_kept.sum()), dtype=np.int64)), texts.filter(pa.array(has_kept))],
        schema=SENTENCES_SCHEMA,
    )
    top = int(np.argmax(counts)) if len(counts) else None
    stats = FilterStats(
        sentences_in=len(texts),
        tokens_in=len(flat),
        types_in=len(counts),
        types_below_min_freq=int((~frequent).sum()),
        tokens_below_min_freq=below,
        tokens_over_max_occurrences=int(capped.sum()),
        most_frequent=(encoded.dictionary[top].as_py(), int(counts[top])) if top is not None else None,
    )
    return sentences, tokens, stats
