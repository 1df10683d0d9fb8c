"""The annotate stage: read a concept table, label every concept, write one annotator's labels file.

The stage owns ``labels/layer_{L}_k{K}/`` and never writes the concept table (the cluster stage's).
Rerunning is cheap and safe: the reply cache answers every call that already succeeded, so only the
concepts that failed are asked again; a concept that fails again keeps the label its annotator gave
it before; other annotators' files are not touched. ``default.json`` moves to this annotator only
when it has a label for every concept. A run with failed concepts records them, then raises
``StageFailed`` (exit status 1) with a one-line summary.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from ..cluster.concepts import concept_settings_key
from ..errors import StageFailed, UserError
from ..logs import log_event
from ..store import RunStore
from . import hierarchy, labels
from .config import AnnotateConfig
from .labeller import FAILED, OK, TRUNCATED, Labeller, Labelling

log = logging.getLogger("cluster_service.annotate")
_CONCEPTS = re.compile(r"layer_(\d+)_k(\d+)\.parquet")


class AnnotationFailed(StageFailed):
    """Some concepts failed; their reasons are in the labels file, and ``summary`` is the run's summary."""

    def __init__(self, message: str, summary: dict[str, Any]):
        super().__init__(message)
        self.summary = summary


def stage_name(layer: int, k: int) -> str:
    return f"annotate:layer_{layer}_k{k}"


#: What labelling reads of a concept table (tables written before the hierarchy columns still label).
LABELLED_COLUMNS = ["concept", "size", "words", "top_types", "examples"]


def read_concept_rows(store: RunStore, layer: int, k: int) -> tuple[pa.Table, list[dict[str, Any]]]:
    table = store.read_concepts(layer, k)
    missing = [name for name in LABELLED_COLUMNS if name not in table.column_names]
    if missing:
        raise UserError(f"{store.where(store.concepts_key(layer, k))}: concept table lacks columns "
                        f"{', '.join(missing)}; re-run `cluster-service cluster {store.where()} --layer {layer} "
                        f"--k {k}`")
    return table, table.select(LABELLED_COLUMNS).to_pylist()


def _with_hierarchy(store: RunStore, layer: int, k: int, cfg: AnnotateConfig, labeller: Labeller,
                    table: pa.Table, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """With ``--hierarchy`` (LLM labellers), each row with the labels of its children, where they all
    have one (a dry run assumes the finer tables will be labelled)."""
    if not cfg.hierarchy or labeller.is_baseline:
        return rows
    found = hierarchy.children_labels(store, layer, k, labeller.annotator, table, assume_labelled=cfg.dry_run)
    return hierarchy.with_children_labels(rows, found)


def make_labeller(store: RunStore, cfg: AnnotateConfig) -> Labeller:
    if cfg.backend == "baseline":
        from .baseline import BaselineLabeller

        return BaselineLabeller()
    from .llm import LLMLabeller

    return LLMLabeller(store, cfg)


def _quantile(values: Sequence[float], q: float) -> float | None:
    return round(float(np.quantile(values, q)), 4) if len(values) else None


def _summary(labeller: Labeller, run: Labelling, seconds: float, labels_file: str) -> dict[str, Any]:
    counts = {status: sum(o.status == status for o in run.outcomes) for status in (OK, TRUNCATED, FAILED)}
    usage = run.usage
    summary = {
        "backend": labeller.backend, "model": run.model, "prompt": labeller.prompt,
        "annotator": labeller.annotator, "labels_file": labels_file,
        "is_baseline": labeller.is_baseline, "concepts": len(run.outcomes), "labelled": counts[OK],
        "truncated": counts[TRUNCATED], "failed": counts[FAILED], "calls": usage.calls, "cached": usage.cached,
        "retries": usage.retries, "timeouts": usage.timeouts, "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens, "llm_tokens": usage.prompt_tokens + usage.completion_tokens,
        "cost_usd": usage.cost(run.price), "seconds": round(seconds, 3),
        "call_p50_s": _quantile(run.latencies, 0.5), "call_p99_s": _quantile(run.latencies, 0.99),
    }
    if run.concurrency is not None:
        summary["concurrency"] = run.concurrency
    if labeller.is_baseline:
        summary["note"] = "baseline labels (not an LLM): spaCy tags and token statistics"
    return summary


def _one_line(text: str | None, limit: int = 300) -> str:
    flat = " ".join((text or "no reason given").split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def concept_tables(store: RunStore, layers: Sequence[int] = (), ks: Sequence[int] = ()) -> list[tuple[int, int]]:
    """(layer, K) of every concept table in the store, optionally only those of ``layers`` and ``ks``."""
    found = []
    for name in store.listdir("concepts"):
        match = _CONCEPTS.fullmatch(name)
        if match:
            layer, k = int(match[1]), int(match[2])
            if (not layers or layer in layers) and (not ks or k in ks):
                found.append((layer, k))
    return sorted(found)


#: The key of a dry run's totals over every table, beside the per-table ``layer_{L}_k{K}`` summaries.
TOTAL = "total"


def dry_run_total(summaries: list[dict[str, Any]], cfg: AnnotateConfig) -> dict[str, Any]:
    """The whole job's calls, LLM tokens, dollars and minutes at the --rpm/--tpm limits (the time a run
    takes when the limits bind; a slower server makes it longer, never shorter)."""
    total: dict[str, Any] = {"dry_run": True, "tables": len(summaries), "backend": cfg.backend,
                             "model": None if cfg.backend == "baseline" else cfg.model}
    for name in ("concepts", "calls", "cached", "copied_from_child", "hierarchy_prompts", "est_prompt_tokens",
                 "max_completion_tokens", "est_llm_tokens"):
        total[name] = sum(int(s.get(name, 0)) for s in summaries)
    costs = [s.get("est_cost_usd") for s in summaries]
    total["est_cost_usd"] = None if None in costs else round(sum(costs), 6)
    calls_minutes = total["calls"] / cfg.rpm * cfg.rate_window_s / 60
    tokens_minutes = total["est_llm_tokens"] / cfg.tpm * cfg.rate_window_s / 60
    total["est_minutes_at_limits"] = round(max(calls_minutes, tokens_minutes), 2)
    total["binding_limit"] = "rpm" if calls_minutes >= tokens_minutes else "tpm"
    return total


def annotate_run(store: RunStore, cfg: AnnotateConfig) -> dict[str, Any]:
    """The stage: label every concept table of the run (or of ``cfg.layers`` / ``cfg.k``); returns
    ``{"layer_{L}_k{K}": summary}`` (and, for a dry run, the job's ``total``). Every table is tried;
    if concepts failed in any, ``StageFailed`` names them after the last table. A table whose labels
    are complete and current costs nothing: the reply cache answers every call (the baseline
    recomputes in milliseconds). With ``cfg.hierarchy`` each layer goes from its largest K down."""
    tables = concept_tables(store, cfg.layers, cfg.k)
    if cfg.hierarchy:  # finest first, so that each K's children are labelled before it
        tables = sorted(tables, key=lambda t: (t[0], -t[1]))
        if cfg.backend == "baseline":
            log_event(log, "--hierarchy ignored: the baseline labels each concept from its own tokens",
                      logging.WARNING)
    if not tables:
        wanted = f" for layers {cfg.layers or 'any'} and K {cfg.k or 'any'}" if cfg.layers or cfg.k else ""
        raise UserError(f"{store.where('concepts')}: no concept tables{wanted}; run `cluster-service cluster "
                        f"{store.where()}` first")
    out: dict[str, Any] = {}
    failures: list[AnnotationFailed] = []
    for layer, k in tables:
        try:
            out[f"layer_{layer}_k{k}"] = annotate_table(store, layer, k, cfg)
        except AnnotationFailed as exc:
            out[f"layer_{layer}_k{k}"] = exc.summary
            failures.append(exc)
    if cfg.dry_run:
        out[TOTAL] = dry_run_total(list(out.values()), cfg)
    if failures:
        more = f" (and {len(failures) - 1} more tables)" if len(failures) > 1 else ""
        raise AnnotationFailed(f"{failures[0]}{more}", out)
    return out


def annotate_table(store: RunStore, layer: int, k: int, cfg: AnnotateConfig) -> dict[str, Any]:
    """Label every concept of ``layer``/``k`` into ``labels/layer_{L}_k{K}/<annotator>.parquet``; returns a
    summary (labelled, truncated, failed, calls, cached, LLM tokens, cost). Raises ``UserError`` with one
    clear line when the endpoint refuses the key or the model, and ``AnnotationFailed`` when any concept
    failed, in both cases after recording every concept's state in the labels file."""
    table, rows = read_concept_rows(store, layer, k)
    labeller = make_labeller(store, cfg)
    rows = _with_hierarchy(store, layer, k, cfg, labeller, table, rows)
    if cfg.dry_run:
        return labeller.estimate(rows)
    start = time.monotonic()
    store.set_stage(stage_name(layer, k), "running", backend=labeller.backend, annotator=labeller.annotator,
                    prompt=labeller.prompt)
    run = labeller.label(rows)
    against = labels.clustering_of(table)
    previous = labels.previous_labels(store, layer, k, labeller.annotator, against)
    fresh = labels.labels_table(run.outcomes, labeller.backend, labeller.is_baseline)
    merged = labels.keep_previous(fresh, previous)
    key = labels.write_labels(store, layer, k, labeller.annotator, merged, concept_settings_key(table))
    if FAILED not in merged.column("status").to_pylist():
        labels.set_default(store, layer, k, labeller.annotator, against)
    store.record_config("annotate", dataclasses.asdict(cfg))
    summary = _summary(labeller, run, time.monotonic() - start, store.where(key))
    failed = [o for o in run.outcomes if o.status == FAILED]
    status = "failed" if run.fatal is not None or failed else "done"
    store.set_stage(stage_name(layer, k), status, **summary, **({"error": run.fatal} if run.fatal else {}))
    log_event(log, "annotate finished", layer=layer, k=k, status=status,
              **{name: summary[name] for name in ("annotator", "labelled", "truncated", "failed", "calls",
                                                  "cached", "llm_tokens")})
    if run.fatal is not None:
        raise UserError(f"annotate stopped: {run.fatal}")
    if failed:
        first = min(failed, key=lambda o: o.concept)
        raise AnnotationFailed(f"annotate layer {layer} k {k}: {len(failed)} of {len(run.outcomes)} concepts "
                               f"failed: concept {first.concept}: {_one_line(first.error)} (labels in "
                               f"{store.where(key)}; rerun to retry only the failed ones)", summary)
    return summary
