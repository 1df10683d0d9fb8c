"""The concept dataset as flat tables: Parquet or JSONL files that pandas, pyarrow and Hugging Face
``datasets`` load directly, with a README.md data card beside them.

- ``concepts``: one row per concept of every exported table: layer, k, concept, label (the default
  annotator's), annotator, labels (every annotator's, as a list of {annotator, label}), label_type,
  size, words, top_types, examples, parent, children, and every analysis column present (``absent``
  tables simply add no column; tables of different layers are unified with nulls).
- ``tokens``: one row per token occurrence (row, sentence_id, position, word, occurrence) and its
  concept at every exported table, in columns ``layer{L}_k{K}``.
- ``sentences``: sentence_id, text.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pyarrow as pa

from ..errors import UserError
from ..logs import log_event
from ..store import RunStore
from .card import data_card
from .concepts import LabelledTable, concept_tables, labelled_table
from .tcn import load_assignments

log = logging.getLogger("cluster_service.export")

#: Concept-table columns the dataset keeps (the centroid is left out: it belongs to the model's space,
#: not to the published concept, and is most of the table's bytes).
CONCEPT_COLUMNS = ["concept", "size", "words", "top_types", "examples", "parent", "children"]
LABEL_LIST = pa.list_(pa.struct([("annotator", pa.string()), ("label", pa.string())]))


def concept_rows(table: LabelledTable) -> pa.Table:
    """The dataset's concept rows of one table."""
    n = table.concepts.num_rows
    columns: dict[str, Any] = {
        "layer": pa.array([table.layer] * n, pa.int32()),
        "k": pa.array([table.k] * n, pa.int32()),
    }
    concepts = table.concepts
    columns["concept"] = concepts.column("concept")
    has_label = "label" in concepts.column_names
    columns["label"] = concepts.column("label") if has_label else pa.nulls(n, pa.string())
    columns["annotator"] = pa.array([table.default] * n, pa.string())
    names = sorted(table.labels)
    columns["labels"] = pa.array([[{"annotator": a, "label": table.labels[a][i]} for a in names] for i in range(n)],
                                 LABEL_LIST)
    columns["label_type"] = concepts.column("label_type") if "label_type" in concepts.column_names \
        else pa.nulls(n, pa.string())
    for name in CONCEPT_COLUMNS[1:]:
        if name in concepts.column_names:
            columns[name] = concepts.column(name)
    columns.update(table.analysis_columns())
    return pa.table(columns)


def token_rows(store: RunStore, tables: list[tuple[int, int]]) -> pa.Table:
    tokens = store.read_tokens(["row", "sentence_id", "position", "word", "occurrence"])
    for layer, k in tables:
        assignments = load_assignments(store, layer, k)
        if len(assignments) != tokens.num_rows:
            raise UserError(f"clusters/layer_{layer}/assignments_k{k}.npy: {len(assignments)} tokens, "
                            f"tokens.parquet has {tokens.num_rows}; re-run cluster")
        tokens = tokens.append_column(f"layer{layer}_k{k}", pa.array(assignments, pa.int32()))
    return tokens


def write_jsonl(out: RunStore, key: str, table: pa.Table, batch_rows: int = 50_000) -> None:
    """One JSON object per row (nested lists and structs kept), written as one file."""
    parts = []
    for batch in table.to_batches(max_chunksize=batch_rows):
        parts.extend(json.dumps(row, ensure_ascii=False) for row in batch.to_pylist())
    out.write_bytes(key, ("\n".join(parts) + "\n").encode() if parts else b"")


def write_dataset(store: RunStore, out: RunStore, fmt: str, layers: list[int], ks: list[int]) -> dict[str, Any]:
    """Write ``concepts``, ``tokens`` and ``sentences`` as ``fmt`` ("parquet" or "jsonl") and the data card."""
    tables = concept_tables(store, layers, ks)
    if not tables:
        raise UserError(f"{store.where('concepts')}: no concept tables"
                        + (f" for layers {layers or 'any'} and K {ks or 'any'}" if layers or ks else "")
                        + "; run `cluster-service cluster` first")
    labelled = [labelled_table(store, layer, k) for layer, k in tables]
    concepts = pa.concat_tables([concept_rows(t) for t in labelled], promote_options="permissive")
    parts = {"concepts": concepts, "tokens": token_rows(store, tables), "sentences": store.read_sentences()}
    files = []
    for name, table in parts.items():
        key = f"{name}.{fmt}"
        if fmt == "parquet":
            out.write_parquet(key, table)
        else:
            write_jsonl(out, key, table)
        files.append(key)
    out.write_bytes("README.md", data_card(store, fmt, labelled, {n: t.num_rows for n, t in parts.items()}).encode())
    notes = [note for t in labelled for note in t.notes]
    log_event(log, "dataset export done", out=out.where(), format=fmt, concepts=concepts.num_rows)
    return {"format": fmt, "out": out.where(), "tables": [t.name for t in labelled], "files": [*files, "README.md"],
            "concepts": concepts.num_rows, "tokens": parts["tokens"].num_rows, "notes": notes}
