"""The layout of the paper's Transformers ConceptNet (TCN), as its viewer (qcri/TransformersConceptNet,
``python app.py -dp DIR``) reads it, unchanged:

    DIR/sentences.json               JSON list of the whitespace-joined sentences
    DIR/layer{L}/clusters-{K}.txt    word|||occurrence|||sentence_idx|||token_idx|||cluster_id, a line per token
    DIR/layer{L}/annotations.json    {"c<id>": label} for every cluster id 0..K-1

``occurrence`` is ConceptX's running count of the word type (1-based); sentence and token indices are
0-based, the token index being the word's place in ``sentence.split(" ")``. Lines are in token row
order. Three facts of that viewer shape the export: it opens ``clusters-600.txt`` whatever K was (so a
copy under that name is written when K is not 600), it starts at layer 0 (so layer 0 is always exported
when the run has it), and it splits each line on ``|||`` into exactly five fields (so a word containing
``|||``, or a line break, is refused: no escaping would survive that split).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..annotate.labels import concepts_with_labels
from ..cluster.checkpoint import LayerDir
from ..errors import UserError
from ..logs import log_event
from ..progress import progress_bar
from ..store import RunStore
from .concepts import concept_tables

log = logging.getLogger("cluster_service.export")

SEPARATOR = "|||"
#: The one clusters file name the viewer opens, whatever K the layer was cut at.
VIEWER_FILE = "clusters-600.txt"
SENTENCES_JSON = "sentences.json"
ANNOTATIONS_JSON = "annotations.json"


def layer_folder(layer: int) -> str:
    return f"layer{layer}"


def clusters_file(k: int) -> str:
    return f"clusters-{k}.txt"


def choose_tables(store: RunStore, layers: list[int], ks: list[int]) -> list[tuple[int, int]]:
    """One (layer, K) per exported layer: the K asked for, or the layer's largest; layer 0 always when
    the run has it (the viewer starts there)."""
    if len(ks) > 1:
        raise UserError(f"--k {','.join(map(str, ks))}: the TCN layout holds one K per layer; give one K")
    every = concept_tables(store)
    if not every:
        raise UserError(f"{store.where('concepts')}: no concept tables; run `cluster-service cluster` first")
    have_layers = sorted({layer for layer, _ in every})
    wanted = sorted(set(layers or have_layers) | ({0} if 0 in have_layers else set()))
    chosen = []
    for layer in wanted:
        layer_ks = [k for lay, k in every if lay == layer]
        if not layer_ks:
            raise UserError(f"--layers: layer {layer} has no concept table (layers with one: "
                            f"{', '.join(map(str, have_layers))})")
        if ks and ks[0] not in layer_ks:
            raise UserError(f"--k {ks[0]}: layer {layer} has no concept table at K={ks[0]} "
                            f"(it has K={','.join(map(str, layer_ks))})")
        chosen.append((layer, ks[0] if ks else max(layer_ks)))
    return chosen


def load_assignments(store: RunStore, layer: int, k: int) -> np.ndarray:
    """Token → concept at ``k`` (the cluster stage's ``assignments_k{K}.npy``)."""
    ldir = LayerDir(store, layer)
    name = f"assignments_k{k}.npy"
    if not store.has(ldir.key(name)):
        raise UserError(f"{store.where(ldir.key(name))}: missing; re-run `cluster-service cluster {store.where()} "
                        f"--layer {layer} --k {k}` (it writes the token assignments without recomputing the tree)")
    return ldir.load(name)


def check_words(words: pa.Array) -> None:
    """Refuse words the viewer's ``line.split('|||')`` or line reading would cut apart."""
    for bad, why in ((SEPARATOR, "contains '|||', the TCN field separator"), ("\n", "contains a line break"),
                     ("\r", "contains a carriage return")):
        hit = pc.match_substring(words, bad)
        if pc.any(hit).as_py():
            row = int(np.flatnonzero(hit.to_numpy(zero_copy_only=False))[0])
            raise UserError(f"tokens.parquet row {row}: word {words[row].as_py()!r} {why}; the TCN format cannot "
                            "hold it (export --format parquet or jsonl instead)")


def clusters_text(tokens: pa.Table, sentence_index: np.ndarray, assignments: np.ndarray) -> bytes:
    """The clusters file of one layer, one line per token in row order."""
    fields = [tokens.column("word").combine_chunks(),
              pc.cast(tokens.column("occurrence"), pa.string()),
              pa.array(sentence_index).cast(pa.string()),
              pc.cast(tokens.column("position"), pa.string()),
              pa.array(assignments.astype(np.int64)).cast(pa.string())]
    lines = pc.binary_join_element_wise(*fields, SEPARATOR).to_pylist()
    return ("\n".join(lines) + "\n").encode() if lines else b""


def annotations(store: RunStore, layer: int, k: int, annotator: str | None) -> dict[str, str]:
    table = concepts_with_labels(store, layer, k, annotator=annotator)
    by_id = dict(zip(table.column("concept").to_pylist(), table.column("label").to_pylist(), strict=True))
    return {f"c{i}": by_id.get(i) or "" for i in range(k)}


def readme(chosen: list[tuple[int, int]]) -> str:
    """What the folder holds, beside the files the viewer reads (it ignores this one)."""
    lines = ["# Concepts in the Transformers ConceptNet (TCN) layout", "",
             "Readable by the paper's viewer (github qcri/TransformersConceptNet): `python app.py -dp THIS_FOLDER`.",
             "", "- `sentences.json`: the sentences, words joined by single spaces.",
             "- `layer{L}/clusters-{K}.txt`: `word|||occurrence|||sentence_idx|||token_idx|||cluster_id`, a line "
             "per token (occurrence 1-based, indices 0-based, token_idx into `sentence.split(\" \")`).",
             "- `layer{L}/annotations.json`: `{\"c<id>\": label}` for every cluster id 0..K-1.", "",
             "| layer | K | file the viewer opens |", "|---|---|---|"]
    for layer, k in chosen:
        note = VIEWER_FILE if k == 600 else f"{VIEWER_FILE} (a copy of {clusters_file(k)}: the viewer opens that name)"
        lines.append(f"| {layer} | {k} | {note} |")
    lines += ["", "Words that contain `|||` or a line break cannot be written in this layout; the export refuses them."]
    return "\n".join(lines) + "\n"


def sentence_indices(store: RunStore) -> tuple[list[str], dict[int, int]]:
    """The sentences in sentence_id order and each sentence_id's index in that list."""
    sentences = store.read_sentences()
    order = np.argsort(sentences.column("sentence_id").to_numpy(), kind="stable")
    sentences = sentences.take(pa.array(order))
    ids = sentences.column("sentence_id").to_pylist()
    return sentences.column("text").to_pylist(), {sid: i for i, sid in enumerate(ids)}


def write_tcn(store: RunStore, out: RunStore, layers: list[int], ks: list[int],
              annotator: str | None) -> dict[str, Any]:
    """Write the TCN folder of ``store`` into ``out``; returns what was written."""
    chosen = choose_tables(store, layers, ks)
    texts, index_of = sentence_indices(store)
    tokens = store.read_tokens(["sentence_id", "position", "word", "occurrence"])
    check_words(tokens.column("word").combine_chunks())
    sids = tokens.column("sentence_id").to_numpy()
    sentence_index = np.fromiter((index_of[s] for s in sids), dtype=np.int64, count=len(sids))
    out.write_bytes(SENTENCES_JSON, json.dumps(texts, ensure_ascii=False).encode())
    copies = []
    bar = progress_bar(len(chosen), desc="export tcn", unit="layer")
    for layer, k in chosen:
        assignments = load_assignments(store, layer, k)
        if len(assignments) != tokens.num_rows:
            raise UserError(f"{store.where(LayerDir(store, layer).key(f'assignments_k{k}.npy'))}: "
                            f"{len(assignments)} tokens, tokens.parquet has {tokens.num_rows}; re-run cluster")
        text = clusters_text(tokens, sentence_index, assignments)
        folder = layer_folder(layer)
        out.write_bytes(f"{folder}/{clusters_file(k)}", text)
        if k != 600:
            out.write_bytes(f"{folder}/{VIEWER_FILE}", text)
            copies.append(f"{folder}/{VIEWER_FILE}")
        out.write_bytes(f"{folder}/{ANNOTATIONS_JSON}",
                        json.dumps(annotations(store, layer, k, annotator), ensure_ascii=False, indent=0).encode())
        bar.update(1)
    bar.close()
    out.write_bytes("README.md", readme(chosen).encode())
    summary = {"format": "tcn", "out": out.where(), "tables": [f"layer_{lay}_k{k}" for lay, k in chosen],
               "tokens": tokens.num_rows, "sentences": len(texts), "viewer_copies": copies}
    log_event(log, "tcn export done", out=out.where(), tables=len(chosen), tokens=tokens.num_rows)
    return summary
