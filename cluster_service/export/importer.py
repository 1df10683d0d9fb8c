"""``cluster-service import TCN_DIR RUN``: a TCN / ConceptX folder of cluster files (and annotations when
present) read back into a run store, without activations, so an existing ConceptX clustering can be
labelled, reported and re-exported.

What it writes, and records in ``run.json`` as the stages whose files those are (``stages.ingest``,
``stages.cluster:layer_{L}``, ``stages.annotate:layer_{L}_k{K}``, each with ``"by": "import"``):

- ``sentences.parquet`` (sentence_id = index in ``sentences.json``) and ``tokens.parquet`` (one row per
  distinct (sentence_idx, token_idx), in that order, with word and occurrence from the file);
- per layer and K: ``clusters/layer_{L}/assignments_k{K}.npy`` and ``concepts/layer_{L}_k{K}.parquet``
  (words, top types, examples; no centroid and no tree: ConceptX files hold neither);
- labels ``labels/layer_{L}_k{K}/tcn.parquet`` (annotator ``tcn``) from ``annotations.json``.

Rows are ordered as the TCN export writes them, so export → import → export gives identical files. A
``clusters-600.txt`` that is a byte copy of another ``clusters-{K}.txt`` is the export's copy for the
viewer and is skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from typing import Any

import numpy as np
import pyarrow as pa

from ..annotate import labels
from ..cluster.checkpoint import LayerDir
from ..cluster.concepts import concept_table, settings_key
from ..corpus.config import SENTENCES_SCHEMA, TOKENS_SCHEMA
from ..errors import UserError
from ..logs import log_event
from ..store import SENTENCES, TOKENS, RunStore
from .tcn import ANNOTATIONS_JSON, SENTENCES_JSON, SEPARATOR

log = logging.getLogger("cluster_service.export")
ANNOTATOR = "tcn"
_LAYER = re.compile(r"layer(\d+)")
_CLUSTERS = re.compile(r"clusters-(\d+)\.txt")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _json(src: RunStore, key: str) -> Any:
    try:
        return json.loads(src.read_bytes(key))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{src.where(key)}: not valid JSON ({exc})") from None


def read_sentences_json(src: RunStore) -> list[str]:
    if not src.has(SENTENCES_JSON):
        raise UserError(f"{src.where(SENTENCES_JSON)}: missing; a TCN folder holds sentences.json and layer{{L}}/")
    data = _json(src, SENTENCES_JSON)
    if not isinstance(data, list) or not all(isinstance(s, str) for s in data):
        raise UserError(f"{src.where(SENTENCES_JSON)}: expected a JSON list of sentence strings")
    return [s.rstrip("\r\n") for s in data]


def cluster_files(src: RunStore) -> dict[int, dict[int, str]]:
    """layer → K → key of its clusters file (the viewer's copy of another file left out)."""
    found: dict[int, dict[int, str]] = {}
    for name in src.listdir(""):
        layer = _LAYER.fullmatch(name)
        if not layer:
            continue
        files = {int(m[1]): f"{name}/{n}" for n in src.listdir(name) if (m := _CLUSTERS.fullmatch(n))}
        if 600 in files and len(files) > 1:
            copy = src.read_bytes(files[600])
            if any(src.read_bytes(key) == copy for k, key in files.items() if k != 600):
                del files[600]
        if files:
            found[int(layer[1])] = files
    if not found:
        raise UserError(f"{src.where()}: no layer{{L}}/clusters-{{K}}.txt files")
    return found


#: (sentence_idx, token_idx) → (word, occurrence, cluster_id)
Lines = dict[tuple[int, int], tuple[str, int, int]]


def parse_clusters(src: RunStore, key: str, k: int, sentences: list[str]) -> Lines:
    """(sentence_idx, token_idx) → (word, occurrence, cluster_id) of every line, checked against the
    sentences and K; one-line errors name the file and line."""
    out: dict[tuple[int, int], tuple[str, int, int]] = {}
    words_of: dict[int, list[str]] = {}
    try:
        text = src.read_bytes(key).decode()
    except UnicodeDecodeError as exc:
        raise UserError(f"{src.where(key)}: not UTF-8 ({exc})") from None
    for number, line in enumerate(_LINE_BREAK.split(text), 1):  # the line breaks Python's text files know
        if not line:
            continue
        parts = line.split(SEPARATOR)
        where = f"{src.where(key)}:{number}"
        if len(parts) != 5:
            raise UserError(f"{where}: expected 5 fields word|||occurrence|||sentence_idx|||token_idx|||cluster_id, "
                            f"got {len(parts)}")
        word = parts[0]
        try:
            occurrence, sent, tok, cluster = (int(p) for p in parts[1:])
        except ValueError:
            raise UserError(f"{where}: occurrence, sentence_idx, token_idx and cluster_id must be integers") from None
        if not 0 <= sent < len(sentences):
            raise UserError(f"{where}: sentence_idx {sent} out of range (sentences.json has {len(sentences)})")
        split = words_of.setdefault(sent, sentences[sent].split(" "))
        if not 0 <= tok < len(split) or split[tok] != word:
            raise UserError(f"{where}: token_idx {tok} of sentence {sent} is not the word {word!r}")
        if not 0 <= cluster < k:
            raise UserError(f"{where}: cluster_id {cluster} out of range for K={k} (from the file name)")
        if (sent, tok) in out:
            raise UserError(f"{where}: token {tok} of sentence {sent} appears twice")
        out[(sent, tok)] = (word, occurrence, cluster)
    return out


def read_annotations(src: RunStore, key: str, k: int) -> dict[int, str]:
    data = _json(src, key)
    if not isinstance(data, dict):
        raise UserError(f"{src.where(key)}: expected an object mapping \"c<id>\" to a label")
    out = {}
    for name, value in data.items():
        if not (isinstance(name, str) and name.startswith("c") and name[1:].isdigit() and int(name[1:]) < k):
            raise UserError(f"{src.where(key)}: key {name!r} is not a cluster id c0..c{k - 1}")
        if isinstance(value, dict) and isinstance(value.get("label"), str):
            value = value["label"]
        if not isinstance(value, str):
            raise UserError(f"{src.where(key)}: {name}: expected a label string")
        out[int(name[1:])] = value
    return out


def _labels_table(found: dict[int, str], k: int) -> pa.Table:
    rows = []
    for concept in range(k):
        label = found.get(concept)
        rows.append({"concept": concept, "label": label, "status": "ok" if label is not None else "failed",
                     "error": None if label is not None else "no label in annotations.json", "backend": "import",
                     "model": None, "prompt": None, "raw": label, "description": None, "type": None,
                     "is_baseline": False, "calls": 0, "cached": False, "prompt_tokens": 0, "completion_tokens": 0})
    return pa.Table.from_pylist(rows, schema=labels.LABELS_SCHEMA)


def _fingerprint(src: RunStore, files: dict[int, dict[int, str]]) -> str:
    h = hashlib.sha256(src.read_bytes(SENTENCES_JSON))
    for layer in sorted(files):
        for k in sorted(files[layer]):
            h.update(files[layer][k].encode() + src.read_bytes(files[layer][k]))
        note = f"layer{layer}/{ANNOTATIONS_JSON}"
        if src.has(note):
            h.update(src.read_bytes(note))
    return h.hexdigest()[:16]


def import_tcn(source: str, store: RunStore) -> dict[str, Any]:
    """Read the TCN folder ``source`` into ``store``; a rerun with the same folder does nothing."""
    src = RunStore(source)
    sentences = read_sentences_json(src)
    files = cluster_files(src)
    fingerprint = _fingerprint(src, files)
    if store.exists():
        imported = store.read_manifest().get("imported", {})
        if imported.get("fingerprint") == fingerprint:
            return {"imported": False, "run": store.where(), "fingerprint": fingerprint}
        if store.has(TOKENS):
            raise UserError(f"{store.where()}: already holds a run; import into a new run directory")
    parsed = {layer: {k: parse_clusters(src, key, k, sentences) for k, key in ks.items()}
              for layer, ks in files.items()}
    first = next(iter(next(iter(parsed.values())).values()))
    keys = sorted(first)
    for layer, ks in parsed.items():
        for k, lines in ks.items():
            if len(lines) != len(keys) or any(key not in lines for key in keys):
                raise UserError(f"{src.where(files[layer][k])}: holds other tokens than "
                                f"{src.where(next(iter(next(iter(files.values())).values())))}; every clusters file "
                                "must list the same (sentence_idx, token_idx) pairs")
    tokens = pa.table({"row": pa.array(np.arange(len(keys)), pa.int64()),
                       "sentence_id": pa.array([s for s, _ in keys], pa.int64()),
                       "position": pa.array([t for _, t in keys], pa.int32()),
                       "word": pa.array([first[key][0] for key in keys], pa.string()),
                       "occurrence": pa.array([first[key][1] for key in keys], pa.int32())}, schema=TOKENS_SCHEMA)
    sentence_table = pa.table({"sentence_id": pa.array(np.arange(len(sentences)), pa.int64()),
                               "text": pa.array(sentences, pa.string())}, schema=SENTENCES_SCHEMA)
    store.create()
    store.write_parquet(SENTENCES, sentence_table)
    store.write_parquet(TOKENS, tokens)
    stages: dict[str, dict[str, Any]] = {"ingest": {"status": "done", "by": "import"}}
    for layer, ks in sorted(parsed.items()):
        for k, lines in sorted(ks.items()):
            assignments = np.array([lines[key][2] for key in keys], dtype=np.int32)
            key = settings_key({"import": fingerprint, "layer": layer, "k": k})
            LayerDir(store, layer).save(f"assignments_k{k}.npy", assignments, {"import": fingerprint})
            table = concept_table(assignments, np.zeros((k, 1), np.float32), tokens, sentence_table,
                                  parent=pa.nulls(k, pa.int32()),
                                  children=pa.array([[] for _ in range(k)], pa.list_(pa.int32())), settings=key)
            table = table.set_column(table.schema.get_field_index("centroid"), "centroid",
                                     pa.nulls(k, pa.list_(pa.float32())))
            store.write_concepts(layer, k, table)
            note = f"layer{layer}/{ANNOTATIONS_JSON}"
            # one annotations.json per layer: it labels the clusters the viewer shows (else the largest K)
            viewer_k = 600 if 600 in ks else max(ks)
            if k == viewer_k and src.has(note):
                labels.write_labels(store, layer, k, ANNOTATOR, _labels_table(read_annotations(src, note, k), k), key)
                labels.set_default(store, layer, k, ANNOTATOR)
                stages[f"annotate:layer_{layer}_k{k}"] = {"status": "done", "by": "import", "annotator": ANNOTATOR}
        stages[f"cluster:layer_{layer}"] = {"status": "done", "by": "import", "k": sorted(ks)}

    def record(m: dict[str, Any]) -> None:
        m.update(tokens=tokens.num_rows, sentences=len(sentences), layers=sorted(parsed),
                 imported={"from": src.where(), "fingerprint": fingerprint, "format": "tcn"})
        m.setdefault("stages", {}).update(stages)
        m["stages"]["import"] = {"status": "done", "wrote": sorted(stages)}

    store.update_manifest(record)
    log_event(log, "import done", run=store.where(), source=src.where(), tokens=tokens.num_rows,
              layers=len(parsed))
    return {"imported": True, "run": store.where(), "tokens": tokens.num_rows, "sentences": len(sentences),
            "tables": [f"layer_{layer}_k{k}" for layer, ks in sorted(parsed.items()) for k in sorted(ks)],
            "fingerprint": fingerprint}
