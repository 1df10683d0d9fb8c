"""Concept tables, owned by the cluster stage: one row per concept with its members' words, word
types, a seeded handful of examples in context, its centroid and its place in the tree (parent and
children at the neighbouring Ks of the run). Vectorised over tokens (no Python loop per token) so a
million-token layer builds in seconds.

Each table's Parquet schema metadata carries the settings key of the cut that produced it
(``concept_settings_key``), so a reader of labels made for an older table can tell they are stale.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: Columns every concept table has (written by the cluster stage).
CONCEPT_SCHEMA = pa.schema(
    [
        ("concept", pa.int32()),
        ("size", pa.int64()),
        # every member word, duplicates kept, in row order: what the paper's prompt lists
        ("words", pa.list_(pa.string())),
        # word types by descending count (ties by word), at most 50
        ("top_types", pa.list_(pa.struct([("word", pa.string()), ("count", pa.int64())]))),
        # a seeded handful of member occurrences in context
        (
            "examples",
            pa.list_(
                pa.struct(
                    [
                        ("row", pa.int64()),
                        ("sentence_id", pa.int64()),
                        ("position", pa.int32()),
                        ("word", pa.string()),
                        ("sentence", pa.string()),
                    ]
                )
            ),
        ),
        ("centroid", pa.list_(pa.float32())),
        # the concept containing this one at the next smaller K of the run's cut (null at the smallest K)
        ("parent", pa.int32()),
        # the concepts this one splits into at the next larger K, ascending (empty at the largest K)
        ("children", pa.list_(pa.int32())),
    ]
)

#: Schema-metadata key of the settings key of the cut a concept table was made from.
SETTINGS_KEY = "cluster_service.settings_key"

#: At most this many word types per concept, by descending count then word.
TOP_TYPES = 50


def _group_offsets(sorted_ids: np.ndarray, k: int) -> np.ndarray:
    return np.searchsorted(sorted_ids, np.arange(k + 1)).astype(np.int32)


def _top_types(assignments: np.ndarray, words: pa.Array, k: int) -> pa.Array:
    enc = pc.dictionary_encode(words).combine_chunks() if isinstance(words, pa.ChunkedArray) \
        else pc.dictionary_encode(words)
    vocab = enc.dictionary
    rank = np.empty(len(vocab), dtype=np.int64)
    by_word = pc.sort_indices(vocab).to_numpy()
    rank[by_word] = np.arange(len(vocab))
    key = assignments.astype(np.int64) * len(vocab) + rank[enc.indices.to_numpy(zero_copy_only=False)]
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


def _examples(assignments: np.ndarray, k: int, n_examples: int, seed: int, sentence_id: np.ndarray,
              position: np.ndarray, words: pa.Array, sentences: pa.Table) -> pa.Array:
    key = np.random.default_rng(seed).random(len(assignments))
    order = np.lexsort((key, assignments))
    lab = assignments[order]
    starts = np.searchsorted(lab, lab, side="left")
    picked = order[(np.arange(len(lab)) - starts) < n_examples]
    picked = picked[np.lexsort((picked, assignments[picked]))]  # by concept, then row
    sid = sentence_id[picked]
    sent_ids = sentences.column("sentence_id").to_numpy()
    sent_order = np.argsort(sent_ids, kind="stable")
    where = sent_order[np.searchsorted(sent_ids[sent_order], sid)]
    structs = pa.StructArray.from_arrays(
        [pa.array(picked, pa.int64()), pa.array(sid, pa.int64()), pa.array(position[picked], pa.int32()),
         words.take(pa.array(picked)), sentences.column("text").combine_chunks().take(pa.array(where))],
        names=["row", "sentence_id", "position", "word", "sentence"])
    return pa.ListArray.from_arrays(pa.array(_group_offsets(assignments[picked], k)), structs)


def settings_key(settings: dict) -> str:
    """Short digest of a settings dict (sha1 of its canonical JSON, 16 hex digits)."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def concept_settings_key(table: pa.Table) -> str | None:
    """The settings key a concept table was written with (None: a table written before keys existed)."""
    value = (table.schema.metadata or {}).get(SETTINGS_KEY.encode())
    return value.decode() if value is not None else None


def hierarchy(leaf_concepts: dict[int, np.ndarray]) -> dict[int, tuple[pa.Array, pa.Array]]:
    """Per K: (parent [K] int32, children list<int32> [K]) between the neighbouring Ks of one tree.

    ``leaf_concepts``: K → concept id of every leaf, from cuts of one tree. The cuts are nested, so
    every concept at a larger K lies inside exactly one concept at the next smaller K: reading that
    concept off any of its leaves gives the parent, and children are the inverse map. Works on the M
    leaves, not the N tokens.
    """
    ks = sorted(leaf_concepts)
    parent_of: dict[int, np.ndarray] = {}
    for small, big in zip(ks, ks[1:], strict=False):
        parent = np.empty(big, dtype=np.int32)
        parent[leaf_concepts[big]] = leaf_concepts[small]
        parent_of[big] = parent
    out: dict[int, tuple[pa.Array, pa.Array]] = {}
    for i, k in enumerate(ks):
        parent = pa.array(parent_of[k]) if k in parent_of else pa.nulls(k, pa.int32())
        if i + 1 < len(ks):
            up = parent_of[ks[i + 1]]
            order = np.argsort(up, kind="stable").astype(np.int32)
            children = pa.ListArray.from_arrays(pa.array(_group_offsets(up[order], k)), pa.array(order))
        else:
            children = pa.ListArray.from_arrays(pa.array(np.zeros(k + 1, dtype=np.int32)), pa.array([], pa.int32()))
        out[k] = (parent, children)
    return out


def concept_table(assignments: np.ndarray, centroids: np.ndarray, tokens: pa.Table, sentences: pa.Table,
                  *, parent: pa.Array, children: pa.Array, settings: str, seed: int = 0,
                  n_examples: int = 5) -> pa.Table:
    """Concept table for token assignments 0..K−1; ``tokens`` is in row order (row i ↔ assignments[i]);
    ``parent``/``children`` from ``hierarchy``; ``settings``: the settings key recorded in its metadata."""
    k = len(centroids)
    words = tokens.column("word").combine_chunks()
    order = np.argsort(assignments, kind="stable")
    offsets = _group_offsets(assignments[order], k)
    members = pa.ListArray.from_arrays(pa.array(offsets), words.take(pa.array(order)))
    flat = pa.array(centroids.astype(np.float32).ravel())
    cent = pa.FixedSizeListArray.from_arrays(flat, centroids.shape[1])
    table = pa.table({
        "concept": pa.array(np.arange(k), pa.int32()),
        "size": pa.array(np.diff(offsets).astype(np.int64)),
        "words": members,
        "top_types": _top_types(assignments, words, k),
        "examples": _examples(assignments, k, n_examples, seed, tokens.column("sentence_id").to_numpy(),
                              tokens.column("position").to_numpy(), words, sentences),
        "centroid": cent.cast(pa.list_(pa.float32())),
        "parent": parent,
        "children": children,
    })
    return table.cast(CONCEPT_SCHEMA.with_metadata({SETTINGS_KEY: settings}))
