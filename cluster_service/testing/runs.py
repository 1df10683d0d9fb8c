"""A synthetic run store of any number of layers × concepts, for the report's page-weight test and
benchmark (not real data): concept tables in CONCEPT_SCHEMA with a two-level tree, labels files and
analysis tables, written straight into a RunStore without extraction or clustering.

Sizes are as heavy as a real run makes the report: 50 word types per concept, long example sentences,
labels of paper length, several annotators and analysis columns, so a weight measured here bounds a
real 5M-token run's (the report reads no per-token data).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pyarrow as pa

from ..annotate import labels
from ..cluster.concepts import CONCEPT_SCHEMA, SETTINGS_KEY
from ..store import RunStore
from .concepts import lognormal_sizes

VOCAB = [f"{stem}{suffix}" for stem in ("constitution", "harbour", "mountain", "violin", "parliament", "quickly",
                                        "seventeen", "Wednesday", "Barcelona", "photosynthesis", "reluctant",
                                        "nevertheless", "shipping", "dangerous", "Einstein")
         for suffix in ("", "s", "ing", "ed", "ly", "ness", "al")]


def _concepts(k: int, dims: int, rng: random.Random, parents: int | None, settings: str) -> pa.Table:
    sizes = lognormal_sizes(k, seed=rng.randrange(1 << 30), cap=2000)
    rows = []
    for concept, size in enumerate(sizes):
        types = rng.sample(VOCAB, 50)
        counts = sorted((max(1, int(size / (r + 1.5))) for r in range(50)), reverse=True)
        words = [w for w, n in zip(types, counts, strict=True) for _ in range(n)][:max(size, 50)]
        examples = []
        for j in range(5):
            sentence = " ".join(rng.choice(VOCAB) for _ in range(28))
            position = rng.randrange(28)
            word = sentence.split(" ")[position]
            examples.append({"row": concept * 10 + j, "sentence_id": concept * 10 + j, "position": position,
                             "word": word, "sentence": sentence})
        rows.append({"concept": concept, "size": len(words), "words": words,
                     "top_types": [{"word": w, "count": n} for w, n in zip(types, counts, strict=True)],
                     "examples": examples, "centroid": [rng.gauss(0, 1) for _ in range(dims)],
                     "parent": None if parents is None else concept % parents,
                     "children": []})
    table = pa.Table.from_pylist(rows, schema=CONCEPT_SCHEMA)
    return table.replace_schema_metadata({SETTINGS_KEY: settings})


def _labels(table: pa.Table, annotator: str, rng: random.Random) -> pa.Table:
    rows = []
    for concept in table.column("concept").to_pylist():
        words = ", ".join(rng.sample(VOCAB, 3))
        rows.append({"concept": concept, "label": f"{annotator} label: {words} and related terms ({concept})",
                     "status": "ok", "error": None, "backend": annotator, "model": "synthetic", "prompt": "paper",
                     "raw": None, "description": None, "type": rng.choice(["semantic", "lexical", "syntactic"]),
                     "is_baseline": annotator == labels.BASELINE, "calls": 1, "cached": False, "prompt_tokens": 900,
                     "completion_tokens": 12})
    return pa.Table.from_pylist(rows, schema=labels.LABELS_SCHEMA)


def synthetic_run(root: str, layers: int = 13, k: int = 600, small_k: int | None = None, dims: int = 16,
                  annotators: tuple[str, ...] = ("baseline", "openai-gpt-4o-mini-paper"), analysis: bool = True,
                  seed: int = 0) -> RunStore:
    """A run store at ``root`` with ``layers`` layers of ``k`` concepts (and ``small_k`` parents, when given),
    labelled by ``annotators`` (the first is the default), with an analysis table per layer when asked."""
    rng = random.Random(seed)
    store = RunStore(root)
    store.create()
    stages: dict[str, Any] = {"extract": {"status": "done", "seconds": 1.0}}
    ks = [k] + ([small_k] if small_k else [])
    for layer in range(layers):
        for this_k in ks:
            parents = small_k if this_k == k else None
            key = f"synthetic-{layer}-{this_k}"
            table = _concepts(this_k, dims, rng, parents, key)
            if this_k == small_k:  # the children of each parent, the inverse of the big table's parents
                kids = [[c for c in range(k) if c % small_k == p] for p in range(small_k)]
                table = table.set_column(table.schema.get_field_index("children"), "children",
                                         pa.array(kids, pa.list_(pa.int32())))
            store.write_concepts(layer, this_k, table)
            for name in annotators:
                labels.write_labels(store, layer, this_k, name, _labels(table, name, rng), key)
            labels.set_default(store, layer, this_k, annotators[0])
            stages[f"annotate:layer_{layer}_k{this_k}"] = {"status": "done", "seconds": 0.5, "calls": this_k,
                                                           "llm_tokens": this_k * 912, "cost_usd": this_k * 1.4e-4}
            if analysis:
                n = this_k
                store.write_parquet(f"analysis/layer_{layer}_k{this_k}/score.parquet", pa.table({
                    "concept": pa.array(np.arange(n), pa.int32()),
                    "score": pa.array([round(rng.random(), 4) for _ in range(n)]),
                    "aligned_tag": pa.array([rng.choice(["NN", "VB", "JJ", "LOC", None]) for _ in range(n)]),
                    "top_neurons": pa.array([rng.sample(range(dims), 5) for _ in range(n)], pa.list_(pa.int32())),
                }))
        stages[f"cluster:layer_{layer}"] = {"status": "done", "seconds": 2.0, "k": ks}
    store.write_manifest({"model": {"name": "synthetic", "hidden_size": dims}, "layers": list(range(layers)),
                          "tokens": None, "sentences": None, "stages": stages})
    return store
