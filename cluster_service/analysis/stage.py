"""The analyze stage: per layer and K, run the chosen steps, each into its own table under
``analysis/layer_{L}_k{K}/`` (``layers`` into ``analysis/layers_{L}_{N}_k{K}/``), and a ``summary.json``.

Resumable per step: every table is written whole (atomically, through the run store) with the settings it
was made with and its summary in the Parquet metadata; a rerun with the same settings and inputs reads
the summary back and skips the step. A step whose input is missing is skipped with a one-line reason.
The stage writes only under ``analysis/``: never another stage's files.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any

import pyarrow as pa

from ..annotate.stage import concept_tables
from ..errors import UserError
from ..logs import log_event
from ..store import RunStore
from .config import STEPS as STEP_NAMES
from .config import AnalyzeConfig
from .inputs import LayerInputs, clustered_ks
from .steps import SETTINGS_META, STEPS, SUMMARY_META, VERSION, folder

log = logging.getLogger("cluster_service.analysis")


def check(cfg: AnalyzeConfig) -> None:
    """Config-only check, run before any stage of a pipeline starts."""
    unknown = [s for s in cfg.steps if s not in STEP_NAMES]
    if unknown:
        raise UserError(f"--steps: unknown step {', '.join(map(repr, unknown))}; known: {', '.join(STEP_NAMES)}")


def tables_to_analyze(store: RunStore, cfg: AnalyzeConfig) -> list[tuple[int, int]]:
    """(layer, K) pairs: the given Ks, else each layer's largest clustered K with a concept table."""
    found = concept_tables(store, cfg.layers)
    out = []
    for layer in sorted({layer for layer, _ in found}):
        ks = sorted({k for lay, k in found if lay == layer} & set(clustered_ks(store, layer)))
        chosen = [k for k in ks if k in cfg.k] if cfg.k else ks[-1:]
        out += [(layer, k) for k in chosen]
    return out


def analyze_run(store: RunStore, cfg: AnalyzeConfig) -> dict[str, Any]:
    """The stage over every chosen layer and K; returns ``{"layer_{L}_k{K}": summary}``."""
    check(cfg)
    tables = tables_to_analyze(store, cfg)
    if not tables:
        wanted = f" for layers {cfg.layers or 'any'} and K {cfg.k or 'largest'}" if cfg.layers or cfg.k else ""
        raise UserError(f"{store.where('concepts')}: no concept tables{wanted}; run `cluster-service cluster "
                        f"{store.where()}` first")
    store.record_config("analyze", dataclasses.asdict(cfg))
    return {f"layer_{layer}_k{k}": analyze_table(store, layer, k, cfg) for layer, k in tables}


def settings_of(step: str, inp: LayerInputs, cfg: AnalyzeConfig) -> str:
    spec = STEPS[step]
    key = {"step": step, "version": VERSION, "concepts": inp.concepts_key,
           **{f: getattr(cfg, f) for f in spec.fields}, **spec.extra(inp, cfg)}
    return json.dumps(key, sort_keys=True, default=str)


def _stored(store: RunStore, key: str, settings: str) -> dict[str, Any] | None:
    """The summary recorded with a table made with exactly these settings, else None."""
    if not store.has(key):
        return None
    meta = store.read_parquet(key, ["concept"]).schema.metadata or {}
    if meta.get(SETTINGS_META, b"").decode() != settings:
        return None
    return json.loads(meta.get(SUMMARY_META, b"{}"))


def _write(store: RunStore, key: str, table: pa.Table, settings: str, summary: dict[str, Any]) -> None:
    meta = {SETTINGS_META: settings.encode(), SUMMARY_META: json.dumps(summary, default=float).encode()}
    store.write_parquet(key, table.replace_schema_metadata(meta))


def analyze_table(store: RunStore, layer: int, k: int, cfg: AnalyzeConfig) -> dict[str, Any]:
    """Every chosen step for one layer and K; returns (and writes as ``summary.json``) each step's summary,
    or why it was skipped, and how many passes over the layer's vectors this call made."""
    inp = LayerInputs(store, layer, k, cfg.progress)
    summary_key = f"{folder(layer, k)}/summary.json"
    summary: dict[str, Any] = json.loads(store.read_bytes(summary_key)) if store.has(summary_key) else {}
    if summary.get("concepts_settings") != inp.concepts_key:
        summary = {}  # the concepts were re-clustered: earlier steps' numbers describe other concepts
    summary.update(layer=layer, k=k, concepts_settings=inp.concepts_key)
    steps = summary.setdefault("steps", {})
    store.set_stage(f"analyze:layer_{layer}_k{k}", "running", steps=cfg.steps)
    start = time.perf_counter()
    for name in STEP_NAMES:
        if name not in cfg.steps:
            continue
        spec = STEPS[name]
        reason = spec.missing(inp, cfg)
        if reason:
            steps[name] = {"skipped": reason}
            log_event(log, "analyze step skipped", layer=layer, k=k, step=name, reason=reason)
            continue
        key, settings = spec.key(inp, cfg), settings_of(name, inp, cfg)
        done = _stored(store, key, settings)
        if done is not None:
            steps[name] = {**done, "resumed": True}
            log_event(log, "analyze step already done", layer=layer, k=k, step=name)
            continue
        t0 = time.perf_counter()
        reads = inp.layer_reads
        tables, result = spec.run(inp, cfg)
        result.update(seconds=round(time.perf_counter() - t0, 3), layer_reads=inp.layer_reads - reads,
                      table=store.where(key))
        for other_key, table in tables.items():
            if other_key != key:
                _write(store, other_key, table, settings, {})
        _write(store, key, tables[key], settings, result)  # last: its settings mark the step done
        steps[name] = result
        log_event(log, "analyze step done", layer=layer, k=k, step=name, seconds=result["seconds"])
    summary["layer_reads"] = inp.layer_reads
    summary["seconds"] = round(time.perf_counter() - start, 3)
    store.write_bytes(summary_key, json.dumps(summary, indent=1, default=float).encode())
    store.set_stage(f"analyze:layer_{layer}_k{k}", "done", seconds=summary["seconds"])
    return summary
