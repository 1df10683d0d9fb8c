"""Labels files: the annotate stage's own outputs, one per annotator, beside (never inside) the concept table.

Layout (keys relative to the run store's root)::

    labels/layer_{L}_k{K}/<annotator>.parquet   LABELS_SCHEMA, one row per concept id
    labels/layer_{L}_k{K}/default.json          {"annotator": NAME}: the labels readers get by default

The annotator is ``baseline`` or ``<backend>-<model>-<prompt>`` (``/`` and ``:`` become ``_``), so
several annotators' labels of one table sit side by side and no run touches another's file. Each file
records, in its Parquet schema metadata, the settings key of the concept table it labelled: after a
re-cluster with other settings the key differs and ``concepts_with_labels`` refuses the stale labels
instead of pinning them on concepts they were not written for. That function is the one way to get
"the concept table with labels": readers keep seeing ``label``, ``label_status``, ``label_error`` ...
columns, as when the annotate stage wrote them into the concept table. Runs from before labels files
(label columns inside the concept table) still read through it.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from ..cluster.concepts import concept_settings_key
from ..errors import UserError
from ..store import RunStore
from .labeller import FAILED, OK, TRUNCATED, Outcome

#: One labels file's columns, keyed by ``concept``. Joined onto a concept table, every column but
#: ``concept`` and ``label`` gets the prefix ``label_`` (``status`` -> ``label_status``).
LABELS_SCHEMA = pa.schema([
    ("concept", pa.int32()),
    ("label", pa.string()),
    ("status", pa.string()),  # "ok", "truncated" (cut off at --max-tokens) or "failed"
    ("error", pa.string()),  # why it failed, or why it is truncated
    ("backend", pa.string()),
    ("model", pa.string()),
    ("prompt", pa.string()),  # prompt variant, e.g. "paper+unique_types" after a content-filter refusal
    ("raw", pa.string()),
    ("description", pa.string()),
    ("type", pa.string()),
    ("is_baseline", pa.bool_()),
    ("calls", pa.int32()),
    ("cached", pa.bool_()),
    ("prompt_tokens", pa.int64()),  # LLM tokens
    ("completion_tokens", pa.int64()),
])
#: The names the labels columns have on the concept table ``concepts_with_labels`` returns.
JOINED_NAMES = {name: name if name == "label" else f"label_{name}" for name in LABELS_SCHEMA.names[1:]}

DEFAULT = "default.json"
BASELINE = "baseline"
#: Schema metadata of a labels file: the settings key of the concept table it labelled.
LABELLED_SETTINGS_KEY = b"cluster_service.concepts_settings_key"
_UNSAFE = re.compile(r"[/:]")
_RANK = {OK: 2, TRUNCATED: 1, FAILED: 0}
#: What identifies the clustering a labels file labelled: the concept table's settings key and concept ids.
Clustering = tuple[str | None, list[int]]


def annotator_name(backend: str, model: str, prompt: str) -> str:
    """``baseline``, or ``<backend>-<model>-<prompt>`` with ``/`` and ``:`` made safe for a file name."""
    if backend == BASELINE:
        return BASELINE
    return _UNSAFE.sub("_", f"{backend}-{model}-{prompt}")


def folder(layer: int, k: int) -> str:
    return f"labels/layer_{layer}_k{k}"


def labels_key(layer: int, k: int, annotator: str) -> str:
    return f"{folder(layer, k)}/{annotator}.parquet"


def _annotators_in(store: RunStore, where: str) -> list[str]:
    return [n.removesuffix(".parquet") for n in store.listdir(where) if n.endswith(".parquet")]


def _default_in(store: RunStore, where: str) -> str | None:
    key = f"{where}/{DEFAULT}"
    if not store.has(key):
        return None
    try:
        return str(json.loads(store.read_bytes(key))["annotator"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UserError(f"{store.where(key)}: corrupt ({type(exc).__name__}: {exc}); "
                        "fix it with `cluster-service annotate ... --set-default NAME`") from None


def annotators(store: RunStore, layer: int, k: int) -> list[str]:
    """Annotators with a labels file for ``layer``/``k``, sorted."""
    return _annotators_in(store, folder(layer, k))


def default_annotator(store: RunStore, layer: int, k: int) -> str | None:
    """The annotator named in ``default.json`` (None before any run labelled every concept)."""
    return _default_in(store, folder(layer, k))


def set_default(store: RunStore, layer: int, k: int, annotator: str,
                against: Clustering | None = None) -> None:
    """Make ``annotator`` the default labels of ``layer``/``k``; an unknown name or stale labels are a
    one-line error. ``against`` is what the labels must match (read from the concept table if None)."""
    known = annotators(store, layer, k)
    if annotator not in known:
        raise UserError(f"{store.where(folder(layer, k))}: no labels by annotator '{annotator}' "
                        f"(there are: {', '.join(known) or 'none; run `cluster-service annotate` first'})")
    labels_of(store, layer, k, annotator, against or clustering_of(store.read_concepts(layer, k)))
    store.write_bytes(f"{folder(layer, k)}/{DEFAULT}", json.dumps({"annotator": annotator}).encode())


def clustering_of(table: pa.Table) -> Clustering:
    """What a labels file of this concept table must match."""
    return concept_settings_key(table), table.column("concept").to_pylist()


def _fresh(labels: pa.Table, against: Clustering) -> bool:
    value = (labels.schema.metadata or {}).get(LABELLED_SETTINGS_KEY)
    recorded = value.decode() if value is not None else None
    settings_key, ids = against
    return recorded == settings_key and sorted(labels.column("concept").to_pylist()) == sorted(ids)


def labels_of(store: RunStore, layer: int, k: int, annotator: str,
              against: Clustering) -> pa.Table:
    """One annotator's labels file, refused in one line when it labelled another clustering."""
    key = labels_key(layer, k, annotator)
    if not store.has(key):
        raise UserError(f"{store.where(key)}: no labels by annotator '{annotator}'; run `cluster-service "
                        f"annotate {store.where()} --layer {layer} --k {k}` with its backend, model and prompt")
    labels = store.read_parquet(key)
    if not _fresh(labels, against):
        raise UserError(f"{store.where(key)}: stale labels of an earlier clustering (the concept table was "
                        f"made again since); re-run `cluster-service annotate {store.where()} --layer {layer} "
                        f"--k {k}`")
    return labels


def previous_labels(store: RunStore, layer: int, k: int, annotator: str,
                    against: Clustering) -> pa.Table | None:
    """This annotator's current labels, to keep where a rerun fails (None if absent or stale)."""
    key = labels_key(layer, k, annotator)
    if not store.has(key):
        return None
    labels = store.read_parquet(key)
    return labels if _fresh(labels, against) else None


def labels_table(outcomes: Sequence[Outcome], backend: str, is_baseline: bool) -> pa.Table:
    """Outcomes as a labels table, rows by concept id."""
    rows = []
    for outcome in sorted(outcomes, key=lambda o: o.concept):
        row = dataclasses.asdict(outcome)
        row.update(prompt=outcome.prompt_variant, backend=backend, is_baseline=is_baseline)
        rows.append({name: row[name] for name in LABELS_SCHEMA.names})
    return pa.Table.from_pylist(rows, schema=LABELS_SCHEMA)


def keep_previous(fresh: pa.Table, previous: pa.Table | None) -> pa.Table:
    """``fresh``, except where ``previous`` (the same annotator's last labels) was better for a concept:
    a failed or cut-off label never replaces a clean one, and a failure never replaces a cut-off label."""
    if previous is None:
        return fresh
    before = {r["concept"]: r for r in previous.to_pylist()}
    rows = []
    for row in fresh.to_pylist():
        old = before.get(row["concept"])
        rows.append(old if old is not None and _RANK[old["status"]] > _RANK[row["status"]] else row)
    return pa.Table.from_pylist(rows, schema=LABELS_SCHEMA)


def write_labels(store: RunStore, layer: int, k: int, annotator: str, labels: pa.Table,
                 settings_key: str | None) -> str:
    """Write one annotator's labels file (atomically), recording the concept table's settings key."""
    metadata = {LABELLED_SETTINGS_KEY: settings_key.encode()} if settings_key is not None else {}
    key = labels_key(layer, k, annotator)
    store.write_parquet(key, labels.replace_schema_metadata(metadata or None))
    return key


def _joined(concepts: pa.Table, labels: pa.Table) -> pa.Table:
    concepts = concepts.drop_columns([n for n in concepts.column_names if n in JOINED_NAMES.values()])
    rows = labels.take(pc.index_in(concepts.column("concept"), value_set=labels.column("concept")))
    for name in LABELS_SCHEMA.names[1:]:
        concepts = concepts.append_column(pa.field(JOINED_NAMES[name], LABELS_SCHEMA.field(name).type),
                                          rows.column(name))
    return concepts


def concepts_with_labels(store: RunStore, layer: int, k: int, annotator: str | None = None) -> pa.Table:
    """The concept table of ``layer``/``k`` with the default (or the named) annotator's labels joined on
    as ``label``, ``label_status``, ``label_error`` ... columns, in the concept table's row order.

    One-line ``UserError`` when there are no labels, when the default is not set, or when the labels are
    of an earlier clustering. A run from before labels files, whose concept table holds the label columns
    itself, reads as it is."""
    concepts = store.read_concepts(layer, k)
    name = annotator or default_annotator(store, layer, k)
    if name is None:
        if "label_status" in concepts.column_names:
            return concepts  # written before labels files: the annotate stage rewrote the concept table
        known = annotators(store, layer, k)
        where = store.where(folder(layer, k))
        if known:
            raise UserError(f"{where}: no default annotator (no run labelled every concept); pick one of "
                            f"{', '.join(known)} with `cluster-service annotate {store.where()} --layer {layer} "
                            f"--k {k} --set-default NAME`")
        raise UserError(f"{where}: no labels; run `cluster-service annotate {store.where()} --layer {layer} "
                        f"--k {k}` first")
    return _joined(concepts, labels_of(store, layer, k, name, clustering_of(concepts)))


def label_sets(store: RunStore) -> dict[str, dict[str, object]]:
    """Per labelled table (``layer_{L}_k{K}``): its annotators and the default, for ``info``."""
    out: dict[str, dict[str, object]] = {}
    for name in store.listdir("labels"):
        found = _annotators_in(store, f"labels/{name}")
        if found:
            out[name] = {"annotators": found, "default": _default_in(store, f"labels/{name}")}
    return out
