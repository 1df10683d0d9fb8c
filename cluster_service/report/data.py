"""What the report's pages show, as plain JSON-able values built from the run store.

Split so that a page loads only what it shows, and a 13-layer × 600-concept run never makes one
multi-megabyte file: ``index`` (the run's tables), one concept list per table (label of every
annotator, type, size, top words, scalar analysis scores, map position), the words of each table for
search (loaded on the first search), the concept pages' details in chunks of ``chunk`` concepts, the
run page, and each cross-layer analysis.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from ..export.concepts import LabelledTable, flow_tables, plain, read_folder_tables
from ..store import RunStore

#: Rows of a cross-layer (flow) table the report shows.
FLOW_ROWS = 2000


def table_name(layer: int, k: int) -> str:
    return f"layer_{layer}_k{k}"


#: Each map axis spans these quantiles of the concepts' coordinates; the few beyond sit on its edge, so that
#: one far-off concept does not squeeze all the others into a corner.
MAP_QUANTILES = (0.03, 0.97)


def pca_2d(centroids: np.ndarray) -> np.ndarray:
    """The concepts' centroids projected on their first two principal axes, scaled to [0, 1] each over
    MAP_QUANTILES and clipped (signs fixed so that a rerun draws the same map)."""
    if len(centroids) < 2:
        return np.full((len(centroids), 2), 0.5)
    x = centroids.astype(np.float64) - centroids.mean(axis=0)
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    axes = vt[:2]
    signs = np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(axis=1)])
    coords = x @ (axes * signs[:, None]).T
    if coords.shape[1] < 2:
        coords = np.hstack([coords, np.zeros((len(coords), 1))])
    lo, hi = np.quantile(coords, MAP_QUANTILES[0], axis=0), np.quantile(coords, MAP_QUANTILES[1], axis=0)
    return np.clip((coords - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0, 1.0)


def centroid_matrix(table: pa.Table) -> np.ndarray | None:
    """K × D centroids, or None when the table has none (an imported ConceptX clustering)."""
    if "centroid" not in table.column_names or table.column("centroid").null_count == table.num_rows:
        return None
    values = table.column("centroid").to_pylist()
    if any(v is None or not v for v in values):
        return None
    return np.asarray(values, dtype=np.float64)


def scalar_columns(columns: dict[str, pa.ChunkedArray]) -> list[str]:
    """Analysis columns with one number, string or flag per concept: the ones the list can show and sort."""
    return [name for name, col in columns.items()
            if pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_string(col.type)
            or pa.types.is_boolean(col.type)]


def hierarchy_state(store: RunStore, table: LabelledTable, ks: list[int]) -> str:
    """'tree', or why there is no hierarchy to show."""
    concepts = table.concepts
    has_tree = ("parent" in concepts.column_names and concepts.column("parent").null_count < concepts.num_rows) or (
        "children" in concepts.column_names and any(concepts.column("children").to_pylist()))
    if has_tree:
        return "tree"
    if store.read_manifest().get("imported"):
        return "absent: an imported ConceptX clustering has no tree"
    if len(ks) < 2:
        return "absent: the run has one K for this layer (cluster with several K, e.g. --k 600,200,50)"
    return "absent: this concept table has no parent/children columns (re-run cluster)"


def concept_list(table: LabelledTable, top_words: int) -> dict[str, Any]:
    """The concept list of one table: column names and one array per concept."""
    concepts = table.concepts
    annotators = sorted(table.labels, key=lambda a: (a != table.default, a))
    analysis = table.analysis_columns()
    scores = scalar_columns(analysis)
    centroids = centroid_matrix(concepts)
    coords = pca_2d(centroids) if centroids is not None else None
    types = concepts.column("label_type").to_pylist() if "label_type" in concepts.column_names else None
    tops = concepts.column("top_types").to_pylist()
    score_values = {name: analysis[name].to_pylist() for name in scores}
    rows = []
    for i, concept in enumerate(concepts.column("concept").to_pylist()):
        row = [concept, [table.labels[a][i] for a in annotators], types[i] if types else None,
               concepts.column("size")[i].as_py(), [t["word"] for t in (tops[i] or [])[:top_words]],
               [plain(score_values[name][i]) for name in scores]]
        if coords is not None:
            row.append([round(float(coords[i, 0]), 4), round(float(coords[i, 1]), 4)])
        rows.append(row)
    return {"name": table.name, "layer": table.layer, "k": table.k, "annotators": annotators,
            "default": table.default, "scores": scores, "has_map": coords is not None,
            "fields": ["concept", "labels", "type", "size", "top_words", "scores"] + (["xy"] if coords is not None
                                                                                    else []),
            "rows": rows, "notes": table.notes}


def word_index(table: LabelledTable) -> dict[str, Any]:
    """Every top word type of every concept (up to 50 each), for search by word."""
    tops = table.concepts.column("top_types").to_pylist()
    return {"words": [[t["word"] for t in (top or [])] for top in tops]}


def default_labels(table: LabelledTable) -> dict[int, str | None]:
    """Concept id → default label of one table (None where unlabelled)."""
    ids = table.concepts.column("concept").to_pylist()
    values = table.concepts.column("label").to_pylist() if "label" in table.concepts.column_names else [None] * len(ids)
    return dict(zip(ids, values, strict=True))


def concept_details(store: RunStore, table: LabelledTable, near: dict[int, dict[int, str | None]],
                    chunk: int) -> list[dict[str, Any]]:
    """The concept pages' data in chunks of ``chunk`` concepts (chunk i holds ids i*chunk ...); ``near``:
    the default labels of every K of this layer, for the parent (next smaller K) and children (next larger)."""
    concepts = table.concepts
    ks = sorted(near)
    smaller = max((x for x in ks if x < table.k), default=None)
    larger = min((x for x in ks if x > table.k), default=None)
    state = hierarchy_state(store, table, ks)
    analysis = {name: col.to_pylist() for name, col in table.analysis_columns().items()}
    ids = concepts.column("concept").to_pylist()
    parents = concepts.column("parent").to_pylist() if "parent" in concepts.column_names else [None] * len(ids)
    children = concepts.column("children").to_pylist() if "children" in concepts.column_names else [[]] * len(ids)
    tops = concepts.column("top_types").to_pylist()
    examples = concepts.column("examples").to_pylist()
    n_chunks = (max(ids) // chunk + 1) if ids else 0
    out: list[dict[str, Any]] = [{"concepts": {}} for _ in range(n_chunks)]
    for i, concept in enumerate(ids):
        parent = parents[i]
        detail = {
            "top_types": [[t["word"], t["count"]] for t in (tops[i] or [])],
            "examples": [[e["sentence"], e["position"], e["word"]] for e in (examples[i] or [])],
            "parent": None if parent is None or smaller is None else [smaller, parent, near[smaller].get(parent)],
            "children": [] if larger is None else [[larger, c, near[larger].get(c)] for c in (children[i] or [])],
            "analysis": {name: plain(values[i]) for name, values in analysis.items()},
        }
        out[concept // chunk]["concepts"][str(concept)] = detail
    for part in out:
        part.update(hierarchy=state, analysis_tables=sorted(table.analysis))
    return out


def run_info(store: RunStore) -> dict[str, Any]:
    """The run page: model, corpus, configs, stage timings and the cost of the LLM calls."""
    manifest = store.read_manifest()
    stages = manifest.get("stages", {})
    rows = []
    cost, tokens, calls, unknown = 0.0, 0, 0, False
    for name, entry in sorted(stages.items()):
        if name == "report":  # its own entry changes on every rerun; the page would never be the same twice
            continue
        rows.append({"stage": name, "status": entry.get("status"), "seconds": entry.get("seconds"),
                     "updated": entry.get("updated"), "by": entry.get("by") or entry.get("annotator")})
        if name.startswith("annotate:"):
            calls += int(entry.get("calls") or 0)
            tokens += int(entry.get("llm_tokens") or 0)
            if entry.get("cost_usd") is None and not entry.get("is_baseline") and entry.get("calls"):
                unknown = True
            cost += float(entry.get("cost_usd") or 0.0)
    model = manifest.get("model", {})
    return {"model": plain(model), "tokens": manifest.get("tokens"), "sentences": manifest.get("sentences"),
            "layers": manifest.get("layers"), "corpus_fingerprint": manifest.get("corpus_fingerprint"),
            "imported": plain(manifest.get("imported")), "config": plain(manifest.get("config", {})),
            "stages": rows, "llm": {"calls": calls, "llm_tokens": tokens, "cost_usd": round(cost, 6),
                                    "cost_unknown": unknown}}


def flows(store: RunStore) -> list[dict[str, Any]]:
    """Every cross-layer analysis (``analysis/layers_{A}_{B}_k{K}/*.parquet``), each table cut to FLOW_ROWS."""
    out = []
    for a, b, k in flow_tables(store):
        tables = {}
        for name, table in read_folder_tables(store, f"analysis/layers_{a}_{b}_k{k}").items():
            tables[name] = {"columns": table.column_names, "total": table.num_rows,
                            "rows": [[plain(v) for v in row.values()] for row in table.slice(0, FLOW_ROWS).to_pylist()]}
        out.append({"name": f"flow_{a}_{b}_k{k}", "a": a, "b": b, "k": k, "tables": tables})
    return out
