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
        if analysis and layer:  # how each concept of the layer below splits into this layer's
            store.write_parquet(f"analysis/layers_{layer - 1}_{layer}_k{k}/flow.parquet", pa.table({
                "concept_a": pa.array(np.repeat(np.arange(k), 2), pa.int32()),
                "concept_b": pa.array(rng.choices(range(k), k=2 * k), pa.int32()),
                "share": pa.array([round(rng.random(), 3) for _ in range(2 * k)]),
            }))
    store.write_manifest({"model": {"name": "synthetic", "hidden_size": dims}, "layers": list(range(layers)),
                          "tokens": None, "sentences": None, "stages": stages})
    return store


def clustered_run(root: str, corpus: str, layers: tuple[int, ...] = (0, 2), ks: tuple[int, ...] = (3, 6),
                  tokenizer: str = "whitespace", seed: int = 0, label: bool = True) -> RunStore:
    """A small run store from a real corpus file, without a model: real ingest tables, a seeded nested
    partition of the tokens per layer in place of Ward cuts (each K's concepts split those of the next
    smaller K, as cuts of one tree do), concept tables, assignments and the hierarchy made by the cluster
    stage's own code, and, when ``label``, baseline labels from the real annotate stage. For the export and
    report tests, which need every file a finished run has but not its vectors."""
    from ..annotate.config import AnnotateConfig
    from ..annotate.stage import annotate_run
    from ..cluster.checkpoint import LayerDir
    from ..cluster.concepts import concept_table, hierarchy
    from ..corpus.config import CorpusConfig
    from ..corpus.stage import ingest_run

    store = RunStore(root)
    ingest_run(store, CorpusConfig(path=corpus, tokenizer=tokenizer))
    tokens, sentences = store.read_tokens(), store.read_sentences()
    n = tokens.num_rows
    gen = np.random.default_rng(seed)
    ks = tuple(sorted(ks))
    for layer in layers:
        finest = gen.permutation(np.arange(n) % ks[-1]).astype(np.int32)  # every concept non-empty
        cuts = {ks[-1]: finest}
        for small, big in zip(ks[::-1][1:], ks[::-1], strict=False):
            parent_of = np.sort(gen.permutation(np.arange(big) % small)).astype(np.int32)  # each parent has a child
            cuts[small] = parent_of[cuts[big]]
        links = hierarchy(cuts)
        ldir = LayerDir(store, layer)
        vectors = gen.normal(size=(n, 8))
        for k in ks:
            assignments = cuts[k]
            centroids = np.stack([vectors[assignments == c].mean(axis=0) for c in range(k)])
            parent, children = links[k]
            table = concept_table(assignments, centroids, tokens, sentences, parent=parent, children=children,
                                  settings=f"clustered-run-{layer}-{k}-{seed}")
            ldir.save(f"assignments_k{k}.npy", assignments, {"seed": seed})
            store.write_concepts(layer, k, table)
        store.set_stage(f"cluster:layer_{layer}", "done", k=list(ks), method="seeded-partition", seconds=0.1)
    store.update_manifest(lambda m: m.update(layers=list(layers), model={"name": "none (clustered_run)"}))
    if label:
        annotate_run(store, AnnotateConfig(progress=False))
    return store


def extracted_run(root: str, corpus: str, layers: tuple[int, ...] = (0, 3), ks: tuple[int, ...] = (8, 16),
                  method: str = "exact", tokenizer: str = "moses", label: bool = True) -> RunStore:
    """A small real run with the packaged MiniLM: real ingest, extraction in this process (the local
    engine), the real cluster stage and, when ``label``, baseline labels. For the concept service's tests,
    which send the run's own sentences back through the model and need every file a served run has."""
    from ..annotate.config import AnnotateConfig
    from ..annotate.stage import annotate_run
    from ..cluster.config import ClusterConfig
    from ..cluster.stage import cluster_run
    from ..corpus.config import CorpusConfig
    from ..corpus.stage import ingest_run
    from ..extract.config import ExtractConfig
    from ..extract.stage import extract_run

    store = RunStore(root)
    ingest_run(store, CorpusConfig(path=corpus, tokenizer=tokenizer))
    extract_run(store, ExtractConfig(layers=list(layers), engine="local", shard_rows=2048))
    cluster_run(store, ClusterConfig(k=list(ks), method=method, seed=0))
    if label:
        annotate_run(store, AnnotateConfig(progress=False))
    return store
