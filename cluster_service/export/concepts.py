"""The concept dataset as readers see it: each concept table with the labels of every annotator and
whatever the analysis stage wrote for it, joined on ``concept``.

Export and report both read through here so that the published dataset and the browsable site can
never disagree. The analysis stage's tables (``analysis/layer_{L}_k{K}/*.parquet``, one row per concept)
are read as they are: nothing here depends on their column names beyond ``concept``, so a new analysis
table shows up in the export and the report without a change here.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ..annotate import labels
from ..annotate.stage import concept_tables
from ..errors import UserError
from ..logs import log_event
from ..store import RunStore

log = logging.getLogger("cluster_service.export")
__all__ = ["LabelledTable", "concept_tables", "flow_tables", "labelled_table"]
_FLOW = re.compile(r"layers_(\d+)_(\d+)_k(\d+)")


def analysis_folder(layer: int, k: int) -> str:
    return f"analysis/layer_{layer}_k{k}"


def flow_tables(store: RunStore) -> list[tuple[int, int, int]]:
    """(layer A, layer B, K) of every cross-layer analysis the run holds (``analysis/layers_{A}_{B}_k{K}``)."""
    found = []
    for name in store.listdir("analysis"):
        match = _FLOW.fullmatch(name)
        if match:
            found.append((int(match[1]), int(match[2]), int(match[3])))
    return sorted(found)


def read_folder_tables(store: RunStore, folder: str) -> dict[str, pa.Table]:
    """Every Parquet table directly under ``folder``, by file stem."""
    return {name.removesuffix(".parquet"): store.read_parquet(f"{folder}/{name}")
            for name in store.listdir(folder) if name.endswith(".parquet")}


@dataclass
class LabelledTable:
    """One concept table of the run with everything known about its concepts."""

    layer: int
    k: int
    concepts: pa.Table
    """The concept table (CONCEPT_SCHEMA) with the default annotator's labels joined on (``label``,
    ``label_status``, ``label_type`` ...), or without label columns when the table has none."""
    default: str | None
    """The annotator whose labels ``concepts`` carries (None: unlabelled or a pre-labels-files run)."""
    labels: dict[str, list[str | None]] = field(default_factory=dict)
    """Every annotator's label per concept, in the concept table's row order."""
    analysis: dict[str, pa.Table] = field(default_factory=dict)
    """Analysis tables by name, each one row per concept in the concept table's order (nulls where absent)."""
    notes: list[str] = field(default_factory=list)
    """What could not be read (stale labels of one annotator ...), for the reader to be told."""

    @property
    def name(self) -> str:
        return f"layer_{self.layer}_k{self.k}"

    def analysis_columns(self) -> dict[str, pa.ChunkedArray]:
        """Every analysis column but ``concept``, named ``<table>_<column>`` (just ``<column>`` when it
        already starts with the table's name, e.g. ``score`` of table ``score``)."""
        out: dict[str, pa.ChunkedArray] = {}
        for table_name, table in sorted(self.analysis.items()):
            for column in table.column_names:
                if column == "concept":
                    continue
                name = column if column.startswith(table_name) else f"{table_name}_{column}"
                out[name] = table.column(column)
        return out


def _aligned(table: pa.Table, ids: pa.Array) -> pa.Table:
    """``table``'s rows in the order of concept ``ids`` (null rows for ids it lacks)."""
    return table.take(pc.index_in(ids, value_set=table.column("concept").cast(ids.type)))


def labelled_table(store: RunStore, layer: int, k: int) -> LabelledTable:
    """The concept table of ``layer``/``k`` with every annotator's labels and the analysis tables."""
    notes: list[str] = []
    names = labels.annotators(store, layer, k)
    default = labels.default_annotator(store, layer, k)
    try:
        concepts = labels.concepts_with_labels(store, layer, k)
    except UserError as exc:  # unlabelled, or no default yet: still a table to show, without labels
        concepts = store.read_concepts(layer, k)
        default = None
        if names:
            notes.append(str(exc))
    if default is None and "label" in concepts.column_names:
        default = "label"  # a run from before labels files: labels inside the concept table
    ids = concepts.column("concept").combine_chunks()
    by_annotator: dict[str, list[str | None]] = {}
    for name in names:
        try:
            table = concepts if name == default else labels.concepts_with_labels(store, layer, k, annotator=name)
        except UserError as exc:
            notes.append(str(exc))
            continue
        by_annotator[name] = table.column("label").to_pylist()
    if default == "label":
        by_annotator["label"] = concepts.column("label").to_pylist()
    analysis = {}
    for name, table in read_folder_tables(store, analysis_folder(layer, k)).items():
        if "concept" not in table.column_names:
            notes.append(f"{store.where(analysis_folder(layer, k))}/{name}.parquet: no 'concept' column; left out")
            continue
        analysis[name] = _aligned(table, ids)
    if notes:
        log_event(log, "concept table read with notes", layer=layer, k=k, notes=" | ".join(notes))
    return LabelledTable(layer, k, concepts, default, by_annotator, analysis, notes)


def label_of(table: LabelledTable, row: int) -> str | None:
    """The default label of the concept at ``row`` (None when unlabelled)."""
    if "label" not in table.concepts.column_names:
        return None
    return table.concepts.column("label")[row].as_py()


def plain(value: Any) -> Any:
    """A value as JSON takes it (floats rounded to 4 significant decimals, bytes as text)."""
    if isinstance(value, float):
        return round(value, 4) if value == value else None  # NaN is not JSON
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value
