"""Labels at every level of the hierarchy: a concept at a smaller K from its children's labels.

The cluster stage cuts one tree at several Ks and links the cuts: a concept's ``children`` are its
parts at the next larger K of the run (``parent`` the inverse). With ``--hierarchy`` the stage labels
a layer's tables from the largest K down; a concept whose children all have a label by the same
annotator is then labelled from those labels and a seeded sample of its words (a short prompt,
cheaper than its full word list), and one with a single child is that child (same tokens): it takes
the child's label without a call. The others, and the largest K, get the usual prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from ..store import RunStore
from . import labels
from .labeller import FAILED

#: The child labels a dry run assumes (the real ones do not exist yet): about their length.
PLACEHOLDER_LABEL = "a short concept label"
COPIED = "same tokens as its only child"


def child_k(store: RunStore, layer: int, k: int) -> int | None:
    """The next larger K clustered for ``layer`` (the K its concepts' ``children`` are ids at)."""
    from .stage import concept_tables

    larger = [kk for _, kk in concept_tables(store, [layer]) if kk > k]
    return min(larger) if larger else None


def children_labels(store: RunStore, layer: int, k: int, annotator: str, table: pa.Table,
                    assume_labelled: bool = False) -> list[list[str] | None]:
    """Per row of ``table`` (a concept table at ``k``): its children's labels by ``annotator``, in the
    order of the ``children`` column, or None if a child has no label (or there is no finer K).
    ``assume_labelled`` (a dry run) gives placeholder labels wherever a finer table exists."""
    finer = child_k(store, layer, k)
    if finer is None or "children" not in table.column_names:
        return [None] * table.num_rows
    children = table.column("children").to_pylist()
    if assume_labelled:
        return [[PLACEHOLDER_LABEL] * len(c) if c else None for c in children]
    child_table = store.read_concepts(layer, finer)
    found = labels.previous_labels(store, layer, finer, annotator, labels.clustering_of(child_table))
    if found is None:
        return [None] * table.num_rows
    by_id = {r["concept"]: r["label"] for r in found.select(["concept", "label", "status"]).to_pylist()
             if r["status"] != FAILED and r["label"]}
    out: list[list[str] | None] = []
    for ids in children:
        got = [by_id.get(i) for i in ids or []]
        out.append([g for g in got if g is not None] if got and None not in got else None)
    return out


def with_children_labels(rows: Sequence[dict[str, Any]],
                         found: Sequence[list[str] | None]) -> list[dict[str, Any]]:
    return [{**row, "child_labels": child} for row, child in zip(rows, found, strict=True)]
