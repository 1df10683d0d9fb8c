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

``--parallel-models N`` runs N models' pipelines at once (threads of the driver, each on its own
sibling run, so no two write one store): on a Ray cluster their extraction actors and clustering
tasks are then scheduled side by side, each model asking for its share of the GPUs (or CPUs). With
the default 1 the models run one after another, each spreading over the whole cluster. A model that
fails does not stop the others; the job then exits non-zero naming it, and a rerun resumes it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
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
    """Ingest once into ``run``, then the pipeline per model into its sibling run (``parallel_models``
    at a time)."""
    from .corpus.stage import ingest_run
    from .extract import STAGE as EXTRACT

    extract = cfg.configs["extract"]
    models = list(extract.models)
    at_once = min(len(models), extract.parallel_models or len(models))
    per_model = {m: dataclasses.replace(extract, model=m, models=[]) for m in models}
    if "extract" in cfg.stages:
        for m in models:  # every model exists and has the layers asked for, before any work starts
            EXTRACT.preflight(per_model[m])
    if at_once > 1:
        per_model = {m: share_cluster(c, at_once) for m, c in per_model.items()}
    parent = RunStore(run)
    ingest_run(parent, cfg.configs["ingest"])
    record_models(parent, models, extract.keep_activations)
    lock = threading.Lock()  # the parent's run.json is shared by the model threads
    summaries: dict[str, Any] = {"run": parent.where(), "models": {}}
    failed: dict[str, BaseException] = {}

    def one(m: str) -> None:
        try:
            summaries["models"][m] = run_model(parent, m, per_model[m], cfg, lock)
        except BaseException as exc:  # noqa: BLE001 - recorded, re-raised once every model has ended
            failed[m] = exc
            with lock:
                set_model_status(parent, m, "failed")
            if at_once == 1:
                raise

    if at_once == 1:
        for m in models:
            one(m)
    else:
        log_event(log, "models side by side", models=len(models), at_once=at_once)
        with ThreadPoolExecutor(max_workers=at_once, thread_name_prefix="model") as pool:
            list(pool.map(one, models))
        if failed:
            first = next(iter(failed.values()))
            if len(failed) == 1 and isinstance(first, UserError):
                raise UserError(f"model {next(iter(failed))}: {first}") from first
            raise UserError(f"{len(failed)} of {len(models)} models failed ({', '.join(failed)}): {first}; "
                            f"the others are done, a rerun resumes the failed ones") from first
    if "report" in cfg.stages:
        from .report.stage import models_index

        summaries["report"] = {"index": models_index(parent, {m: run_name(m) for m in models})}
    log_event(log, "models done", run=parent.where(), models=len(models))
    return {**summaries, "models": {m: summaries["models"][m] for m in models}}


def run_model(parent: RunStore, model: str, extract, cfg, lock: threading.Lock) -> dict[str, Any]:
    """One model's pipeline into its sibling run; its start and end go into the parent's run.json."""
    from .pipeline import PipelineConfig

    child = RunStore(parent.where(run_name(model)))
    share_ingestion(parent, child)
    with lock:
        set_model_status(parent, model, "running", started=_now())
    log_event(log, "model run", model=model, run=child.where())
    summary = run_one(child, PipelineConfig({**cfg.configs, "extract": extract}, cfg.stages))
    with lock:
        set_model_status(parent, model, "done", finished=_now())
    return summary


def share_cluster(extract, at_once: int):
    """A model's extraction config when ``at_once`` models share the cluster: Ray joined now (once,
    before the model threads), and each model's actors asking for 1/at_once of its GPUs or CPUs."""
    if extract.engine != "ray":
        return extract
    import ray

    from .extract.ray_pool import init_ray

    init_ray(extract.address)
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
    if gpus and extract.device != "cpu":
        return dataclasses.replace(extract, workers=extract.workers or max(1, gpus // at_once))
    return dataclasses.replace(extract, cpus_per_worker=extract.cpus_per_worker or max(1, cpus // at_once))


def _now() -> str:
    """UTC to the millisecond: the parent's record of when each model's pipeline ran."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def record_models(parent: RunStore, models: list[str], keep: str) -> None:
    def change(m: dict[str, Any]) -> None:
        listed = {e["model"]: e for e in m.get("models", [])}
        m["models"] = [listed.get(x, {"model": x, "run": run_name(x), "status": "pending"}) for x in models]
        m["keep_activations"] = keep

    parent.update_manifest(change)


def set_model_status(parent: RunStore, model: str, status: str, **info: str) -> None:
    def change(m: dict[str, Any]) -> None:
        for entry in m.get("models", []):
            if entry["model"] == model:
                entry["status"] = status
                entry.update(info)

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
