"""One job over several models, and the storage budget that lets it fit a disk.

``run --models A,B,C`` (or ``[extract] models = [...]``) ingests the corpus once into the parent
run and runs the whole pipeline once per model into a sibling run ``RUN/<model with / and : as _>/``,
each a complete run store of its own (every command works on it) that starts from the parent's
tables (hard-linked on a local disk, copied on an object store). The parent's run.json lists the
sibling runs and their status.

``--keep-activations`` frees a run's activations once its pipeline has run (clustered, analysed):
``clustered-layers`` keeps only the layers that have concept tables, ``none`` keeps nothing, ``all``
(the default) keeps everything. Done-markers stay and run.json's ``activations_freed`` says what
went; a rerun with the same budget skips a freed run, and a rerun with ``--keep-activations all``
re-extracts the freed layers and carries on. At 5 models x 13 layers of a 5M-token corpus (~500 GB
at float16) this is what keeps a job on one node's disk.

The models run one after another on the cluster the job was given; each model's extraction and
clustering spread over that cluster's GPUs/CPUs as a single-model run's do.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

from .errors import UserError
from .extract.stage import FREED, freed_message
from .logs import log_event
from .store import ACTIVATIONS, SENTENCES, TOKENS, RunStore, layer_of

log = logging.getLogger("cluster_service.multi")

#: the manifest fields of an ingestion, copied into every sibling run
INGEST_FIELDS = ("tokens", "sentences", "corpus_fingerprint")


def run_name(model: str) -> str:
    """The sibling run's folder name for a model: its name with / and : as _."""
    return model.replace("/", "_").replace(":", "_")


def check_models(models: list[str], model: str, where: str = "[extract]") -> None:
    """``models`` and ``model`` exclude each other; two models may not map to one run name.
    ``where`` says where they were given (the config file's section and/or the command line)."""
    if models and model:
        raise UserError(f"{where}: models and model (--models, --model) given together; give one, not both")
    names = [run_name(m) for m in models]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise UserError(f"{where} models: {', '.join(clash)} named twice (after / and : become _)")


def run_job(run: str, cfg) -> dict[str, Any]:
    """``cluster-service run``: one model (the pipeline, then the storage budget) or several."""
    extract = cfg.configs["extract"]
    check_models(extract.models, extract.model)
    if extract.models:
        return run_models(run, cfg)
    return run_one(RunStore(run), cfg)


def run_one(store: RunStore, cfg) -> dict[str, Any]:
    """The pipeline on one run store, then its activations freed as ``keep_activations`` asks."""
    from .pipeline import run_pipeline

    keep = cfg.configs["extract"].keep_activations
    freed = store.read_manifest().get(FREED) if store.exists() else None
    if freed and keep != "all":
        log_event(log, "run skipped", run=store.where(), why=freed_message(store))
        return {"run": store.where(), "skipped": "activations freed", FREED: freed}
    summary = run_pipeline(store.where(), cfg)
    if "cluster" in cfg.stages:  # the budget frees what clustering has read, never before it ran
        summary[FREED] = free_activations(store, keep)
    elif keep != "all":
        log_event(log, "activations kept: the storage budget applies once the cluster stage has run",
                  level=logging.WARNING, run=store.where(), keep=keep)
    return summary


def run_models(run: str, cfg) -> dict[str, Any]:
    """Ingest once into ``run``, then the pipeline per model into its sibling run."""
    from .corpus.stage import ingest_run
    from .extract import STAGE as EXTRACT
    from .pipeline import PipelineConfig

    models = list(cfg.configs["extract"].models)
    per_model = {m: dataclasses.replace(cfg.configs["extract"], model=m, models=[]) for m in models}
    if "extract" in cfg.stages:
        for m in models:  # every model exists and has the layers asked for, before any work starts
            EXTRACT.preflight(per_model[m])
    parent = RunStore(run)
    ingest_run(parent, cfg.configs["ingest"])
    record_models(parent, models, cfg.configs["extract"].keep_activations)
    summaries: dict[str, Any] = {"run": parent.where(), "models": {}}
    for m in models:
        child = RunStore(parent.where(run_name(m)))
        share_ingestion(parent, child)
        configs = {**cfg.configs, "extract": per_model[m]}
        set_model_status(parent, m, "running")
        log_event(log, "model run", model=m, run=child.where())
        summaries["models"][m] = run_one(child, PipelineConfig(configs, cfg.stages))
        set_model_status(parent, m, "done")
    if "report" in cfg.stages:
        from .report.stage import models_index

        summaries["report"] = {"index": models_index(parent, {m: run_name(m) for m in models})}
    log_event(log, "models done", run=parent.where(), models=len(models))
    return summaries


def record_models(parent: RunStore, models: list[str], keep: str) -> None:
    def change(m: dict[str, Any]) -> None:
        listed = {e["model"]: e for e in m.get("models", [])}
        m["models"] = [listed.get(x, {"model": x, "run": run_name(x), "status": "pending"}) for x in models]
        m["keep_activations"] = keep

    parent.update_manifest(change)


def set_model_status(parent: RunStore, model: str, status: str) -> None:
    def change(m: dict[str, Any]) -> None:
        for entry in m.get("models", []):
            if entry["model"] == model:
                entry["status"] = status

    parent.update_manifest(change)


def share_ingestion(parent: RunStore, child: RunStore) -> None:
    """The parent's tables and ingestion record in a sibling run, unless it has them: hard links on a
    local disk (no second copy of a large corpus), bytes copied on an object store."""
    child.create()
    for key in (TOKENS, SENTENCES):
        if child.has(key):
            continue
        src, dst = parent.local_path(key), child.local_path(key)
        if src is not None and dst is not None:
            try:
                os.link(src, dst)
                continue
            except OSError:
                pass  # another file system: copy
        child.write_bytes(key, parent.read_bytes(key))
    have = parent.read_manifest()

    def change(m: dict[str, Any]) -> None:
        if "corpus" in m.get("config", {}):
            return
        m.setdefault("config", {})["corpus"] = have["config"]["corpus"]
        m.update({k: have[k] for k in INGEST_FIELDS if k in have})
        m.setdefault("stages", {})["ingest"] = {"status": "done", "shared_from": parent.where()}
        m["parent"] = parent.where()

    child.update_manifest(change)


def clustered_layers(store: RunStore) -> set[int]:
    """Layers with at least one concept table."""
    names = (n.split("_k")[0] for n in store.listdir("concepts") if n.endswith(".parquet"))
    return {layer for layer in map(layer_of, names) if layer is not None}


def free_activations(store: RunStore, keep: str) -> dict[str, Any] | None:
    """Remove the activations ``keep`` does not keep; record what went in run.json (done-markers stay)."""
    if keep == "all" or not store.has(ACTIVATIONS):
        return store.read_manifest().get(FREED)
    stored = set(store.stored_layers())
    kept = clustered_layers(store) & stored if keep == "clustered-layers" else set()
    gone = sorted(stored - kept)
    for layer in gone:
        store.remove(f"{ACTIVATIONS}/{store.layer_name(layer)}")

    def change(m: dict[str, Any]) -> None:
        before = m.get(FREED, {}).get("layers", [])
        m[FREED] = {"layers": sorted(set(before) | set(gone)), "keep": keep,
                    "how": f"cluster-service run {store.where()} --keep-activations all (re-extracts them)"}

    manifest = store.update_manifest(change)
    log_event(log, "activations freed", run=store.where(), layers=gone, kept=sorted(kept))
    return manifest[FREED]
