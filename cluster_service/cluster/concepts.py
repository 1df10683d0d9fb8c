"""Concept tables (store.CONCEPT_SCHEMA): one row per concept with its members' words, word types,
a seeded handful of examples in context, and its centroid. Vectorised over tokens (no Python loop
per token) so a million-token layer builds in seconds."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..store import CONCEPT_SCHEMA

#: At most this many word types per concept, by descending count then word.
TOP_TYPES = 50


def _group_offsets(sorted_labels: np.ndarray, k: int) -> np.ndarray:
    return np.searchsorted(sorted_labels, np.arange(k + 1)).astype(np.int32)


def _top_types(labels: np.ndarray, words: pa.Array, k: int) -> pa.Array:
    enc = pc.dictionary_encode(words).combine_chunks() if isinstance(words, pa.ChunkedArray) \
        else pc.dictionary_encode(words)
    vocab = enc.dictionary
    rank = np.empty(len(vocab), dtype=np.int64)
    by_word = pc.sort_indices(vocab).to_numpy()
    rank[by_word] = np.arange(len(vocab))
    key = labels.astype(np.int64) * len(vocab) + rank[enc.indices.to_numpy(zero_copy_only=False)]
    uniq, counts = np.unique(key, return_counts=True)
    lab, wrank = uniq // len(vocab), uniq % len(vocab)
    order = np.lexsort((wrank, -counts, lab))
    lab, wrank, counts = lab[order], wrank[order], counts[order]
    starts = np.searchsorted(lab, lab, side="left")
    keep = (np.arange(len(lab)) - starts) < TOP_TYPES
    lab, wrank, counts = lab[keep], wrank[keep], counts[keep]
    structs = pa.StructArray.from_arrays(
        [vocab.take(pa.array(by_word[wrank])), pa.array(counts, pa.int64())], names=["word", "count"])
    return pa.ListArray.from_arrays(pa.array(_group_offsets(lab, k)), structs)


def _examples(labels: np.ndarray, k: int, n_examples: int, seed: int, sentence_id: np.ndarray,
              position: np.ndarray, words: pa.Array, sentences: pa.Table) -> pa.Array:
    key = np.random.default_rng(seed).random(len(labels))
    order = np.lexsort((key, labels))
    lab = labels[order]
    starts = np.searchsorted(lab, lab, side="left")
    picked = order[(np.arange(len(lab)) - starts) < n_examples]
    picked = picked[np.lexsort((picked, labels[picked]))]  # by concept, then row
    sid = sentence_id[picked]
    sent_ids = sentences.column("sentence_id").to_numpy()
    sent_order = np.argsort(sent_ids, kind="stable")
    where = sent_order[np.searchsorted(sent_ids[sent_order], sid)]
    structs = pa.StructArray.from_arrays(
        [pa.array(picked, pa.int64()), pa.array(sid, pa.int64()), pa.array(position[picked], pa.int32()),
         words.take(pa.array(picked)), sentences.column("text").combine_chunks().take(pa.array(where))],
        names=["row", "sentence_id", "position", "word", "sentence"])
    return pa.ListArray.from_arrays(pa.array(_group_offsets(labels[picked], k)), structs)


def concept_table(labels: np.ndarray, centroids: np.ndarray, tokens: pa.Table, sentences: pa.Table,
                  *, seed: int = 0, n_examples: int = 5) -> pa.Table:
    """Concept table for token labels 0..K−1; ``tokens`` is in row order (row i ↔ labels[i])."""
    k = len(centroids)
    words = tokens.column("word").combine_chunks()
    order = np.argsort(labels, kind="stable")
    offsets = _group_offsets(labels[order], k)
    members = pa.ListArray.from_arrays(pa.array(offsets), words.take(pa.array(order)))
    flat = pa.array(centroids.astype(np.float32).ravel())
    cent = pa.FixedSizeListArray.from_arrays(flat, centroids.shape[1])
    table = pa.table({
        "concept": pa.array(np.arange(k), pa.int32()),
        "size": pa.array(np.diff(offsets).astype(np.int64)),
        "words": members,
        "top_types": _top_types(labels, words, k),
        "examples": _examples(labels, k, n_examples, seed, tokens.column("sentence_id").to_numpy(),
                              tokens.column("position").to_numpy(), words, sentences),
        "centroid": cent.cast(pa.list_(pa.float32())),
    })
    return table.cast(CONCEPT_SCHEMA)
