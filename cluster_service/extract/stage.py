"""The extract stage: the ingested tokens → Zarr arrays of every requested layer, shards computed by workers.

Resumable by construction: the arrays are created once (the extract config is recorded in run.json
after them, so a store without it gets fresh arrays), each shard is marked done only after its data is durable,
and a rerun computes exactly the shards without a marker. Shard results depend only on the shard's
rows, so a resumed store is identical to an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from .. import __version__
from ..errors import UserError
from ..logs import log_event
from ..progress import progress_bar
from ..store import ACTIVATIONS, DONE, TOKENS, RunStore, shard_ranges
from .config import ExtractConfig
from .model import load_config_only, model_shape, resolve_layers, resolve_model_name
from .packing import packing_for
from .tasks import ShardTasks
from .writer import create_layer_arrays, done_shards

log = logging.getLogger("cluster_service.extract")
FREED = "activations_freed"  # run.json: layers whose activations --keep-activations freed

# fields that may differ between a run and its resume without changing a stored byte
_RUNTIME_FIELDS = {"engine", "workers", "cpus_per_worker", "writer_threads", "address", "device",
                   "batch_tokens", "pack_length", "models", "keep_activations"}
#: values of fields added later, as every run made before them had it
_BEFORE_FIELDS = {"packed": False}


def package_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"cluster_service": __version__}
    for name in ("torch", "transformers", "zarr", "numpy", "ray", "faiss-cpu", "pyarrow"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def _stored_config(cfg: ExtractConfig) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _RUNTIME_FIELDS}


def extract_check(cfg: ExtractConfig) -> None:
    """The model exists and has the requested layers (reads its config only, not its weights)."""
    n_layers, _ = model_shape(cfg.model, cfg.trust_remote_code)
    resolve_layers(cfg.layers, n_layers)


def forward_path(cfg: ExtractConfig) -> dict[str, Any]:
    """Which forward path the workers run (packed, or padded and why), as run.json records it: the
    same decision every worker makes from the model's config."""
    return packing_for(load_config_only(cfg.model, cfg.trust_remote_code), cfg.packed).record(cfg.pack_length)


def prepare_store(store: RunStore, cfg: ExtractConfig) -> dict[str, Any]:
    """Create the layer arrays of an ingested run, or check that they were made by the same configuration.

    The extract config is recorded in run.json only after the arrays exist, so a run killed before that
    starts its arrays again from scratch; a recorded one resumes shard by shard."""
    if cfg.models:
        raise UserError("extract.models (--models): several models run through `cluster-service run --models`; "
                        "one run store holds one model (--model)")
    if not store.exists() or not store.has(TOKENS):
        raise UserError(f"{store.where(TOKENS)}: missing; run `cluster-service ingest {store.where()}` "
                        "(or `extract` with --corpus-* flags) first")
    manifest = store.read_manifest()
    wanted = _stored_config(cfg)
    have = manifest.get("config", {}).get("extract")
    if have is not None:
        have = {**_BEFORE_FIELDS, **have}
        diffs = [f"extract.{k}: stored {have.get(k)!r}, asked {v!r}" for k, v in wanted.items() if have.get(k) != v]
        if diffs:
            raise UserError(f"{store.where()}: exists with another configuration ({'; '.join(diffs)}); "
                            "use a new run directory")
        return restore_freed(store, manifest, cfg)
    n_layers, hidden = model_shape(cfg.model, cfg.trust_remote_code)
    layers = resolve_layers(cfg.layers, n_layers)
    n_rows = manifest["tokens"]
    store.remove(ACTIVATIONS)  # left by a run killed before its config was recorded: start clean
    store.remove(DONE)
    create_layer_arrays(store, layers, n_rows, hidden, cfg.shard_rows, cfg.chunk_rows)

    def record(m: dict[str, Any]) -> None:
        m.setdefault("config", {})["extract"] = wanted
        m.update(model={"name": cfg.model or "all-MiniLM-L6-v2 (packaged)", "path": resolve_model_name(cfg.model),
                        "hidden_states": n_layers, "hidden_size": hidden},
                 layers=layers, shard_rows=cfg.shard_rows, shards=len(shard_ranges(n_rows, cfg.shard_rows)),
                 versions=package_versions())
        m.setdefault("stages", {})["extract"] = {"status": "running"}

    manifest = store.update_manifest(record)
    log_event(log, "arrays created", run=store.where(), tokens=n_rows, layers=len(layers))
    return manifest


def restore_freed(store: RunStore, manifest: dict[str, Any], cfg: ExtractConfig) -> dict[str, Any]:
    """A run whose activations were freed (``--keep-activations``) gets its freed layers' arrays back
    and every shard is computed again; the other layers are rewritten with the same bytes."""
    freed = manifest.get(FREED)
    if not freed:
        return manifest
    _, hidden = model_shape(cfg.model, cfg.trust_remote_code)
    store.remove(DONE)
    create_layer_arrays(store, freed["layers"], manifest["tokens"], hidden, manifest["shard_rows"], cfg.chunk_rows)
    log_event(log, "re-extracting freed activations", run=store.where(), layers=freed["layers"])
    return manifest


def extract_run(store: RunStore, cfg: ExtractConfig) -> dict[str, Any]:
    """Extract every requested layer of an ingested run, resuming shard by shard. Returns a summary."""
    manifest = prepare_store(store, cfg)
    layers: list[int] = manifest["layers"]
    ranges = shard_ranges(manifest["tokens"], manifest["shard_rows"])
    done = done_shards(store)
    todo = [i for i in range(len(ranges)) if i not in done]
    log_event(log, "extract plan", shards=len(ranges), done=len(done), todo=len(todo), engine=cfg.engine)
    t0 = time.perf_counter()
    rows_todo = sum(ranges[i][1] - ranges[i][0] for i in todo)
    stats: dict[str, Any] = {}
    forward = forward_path(cfg)
    if todo:
        store.set_stage("extract", "running", forward=forward)
        log_event(log, "extract forward path", **forward)
        tasks = ShardTasks(store, manifest["shard_rows"])
        if cfg.engine == "local":
            run_local(store, cfg, layers, tasks, todo, rows_todo)
        else:
            from .ray_pool import run_ray

            stats = run_ray(store, cfg, layers, tasks, todo, rows_todo)
    missing = sorted(set(range(len(ranges))) - done_shards(store))
    if missing:
        raise RuntimeError(f"extract: shards {missing[:10]} were not completed")
    seconds = time.perf_counter() - t0
    store.set_stage("extract", "done", shards=len(ranges))
    if manifest.get(FREED):
        store.update_manifest(lambda m: m.pop(FREED, None))
    summary = {"run": store.where(), "tokens": manifest["tokens"], "layers": layers, "forward": forward,
               "shards_computed": len(todo), "rows_computed": rows_todo, "seconds": round(seconds, 3),
               "tokens_per_s": round(rows_todo / seconds, 1) if todo and seconds else None, **stats}
    log_event(log, "extract done", **{k: v for k, v in summary.items() if k != "worker_timing"})
    return summary


def run_local(store: RunStore, cfg: ExtractConfig, layers: list[int], tasks: ShardTasks, shards: list[int],
              rows: int) -> None:
    from .worker import ExtractWorker

    worker = ExtractWorker(store.where(), cfg, layers, threads=cfg.cpus_per_worker)
    with progress_bar(total=rows, desc="extract", unit="tok") as bar:
        worker.process_all((tasks.task(s) for s in shards), bar)


def freed_message(store: RunStore, layer: int | None = None) -> str | None:
    """One line for a command that needs activations a run has freed (None when they are there):
    what a skipped run logs, and what cluster and analyze say instead of a missing-array error."""
    freed = store.read_manifest().get(FREED) if store.exists() else None
    if not freed or (layer is not None and layer not in freed["layers"]):
        return None
    which = f"layer {layer}" if layer is not None else f"layers {freed['layers']}"
    return (f"{store.where(ACTIVATIONS)}: the activations of {which} were freed after clustering "
            f"(--keep-activations {freed['keep']}); re-extract with `{freed['how']}`")


def require_activations(store: RunStore, layer: int) -> None:
    """A stage about to read ``layer``'s vectors: one line saying they were freed (and how to get them
    back) rather than that the layer was never stored."""
    message = freed_message(store, layer)
    if message:
        raise UserError(message)
    store.layer_array(layer)  # one clear line when the layer is missing
