"""The extract stage: corpus → run store (tables, Zarr arrays, run.json) → shards computed by workers.

Resumable by construction: the tables and arrays are created once (run.json is written last, so a
store without it is rebuilt from scratch), each shard is marked done only after its data is durable,
and a rerun computes exactly the shards without a marker. Shard results depend only on the shard's
rows, so a resumed store is identical to an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from .. import __version__
from ..corpus import CorpusConfig, ingest
from ..errors import UserError
from ..logs import log_event
from ..progress import progress_bar
from ..store import ACTIVATIONS, DONE, SENTENCES, TOKENS, RunStore
from .config import ExtractConfig
from .model import model_shape, resolve_layers, resolve_model_name
from .tasks import ShardTasks
from .writer import create_layer_arrays, done_shards, shard_ranges

log = logging.getLogger("cluster_service.extract")

# fields that may differ between a run and its resume without changing a stored byte
_RUNTIME_FIELDS = {"engine", "workers", "cpus_per_worker", "writer_threads", "address", "device",
                   "batch_tokens"}


def package_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"cluster_service": __version__}
    for name in ("torch", "transformers", "zarr", "numpy", "ray", "faiss-cpu", "pyarrow"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def _stored_config(corpus: CorpusConfig, cfg: ExtractConfig) -> dict[str, Any]:
    ext = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _RUNTIME_FIELDS}
    return {"corpus": dataclasses.asdict(corpus), "extract": ext}


def prepare_store(store: RunStore, corpus: CorpusConfig, cfg: ExtractConfig) -> dict[str, Any]:
    """Create the store, or check that an existing one was made by the same configuration."""
    wanted = _stored_config(corpus, cfg)
    if store.exists():
        manifest = store.read_manifest()
        have = manifest.get("config", {})
        diffs = [f"{sec}.{k}: stored {have.get(sec, {}).get(k)!r}, asked {v!r}"
                 for sec in ("corpus", "extract") for k, v in wanted[sec].items()
                 if have.get(sec, {}).get(k) != v]
        if diffs:
            raise UserError(f"{store.where()}: exists with another configuration ({'; '.join(diffs)}); "
                            "use a new run directory")
        return manifest
    n_layers, hidden = model_shape(cfg.model, cfg.trust_remote_code)
    layers = resolve_layers(cfg.layers, n_layers)
    t0 = time.perf_counter()
    data = ingest(corpus)
    n_rows = data.tokens.num_rows
    store.remove(ACTIVATIONS)  # left by a run killed before run.json: start clean
    store.remove(DONE)
    store.create()
    store.write_parquet(SENTENCES, data.sentences)
    store.write_parquet(TOKENS, data.tokens)
    create_layer_arrays(store, layers, n_rows, hidden, cfg.shard_rows, cfg.chunk_rows)
    manifest = {
        "config": wanted,
        "model": {"name": cfg.model or "all-MiniLM-L6-v2 (packaged)", "path": resolve_model_name(cfg.model),
                  "hidden_states": n_layers, "hidden_size": hidden},
        "layers": layers,
        "tokens": n_rows,
        "sentences": data.sentences.num_rows,
        "shard_rows": cfg.shard_rows,
        "shards": len(shard_ranges(n_rows, cfg.shard_rows)),
        "corpus_fingerprint": data.fingerprint,
        "versions": package_versions(),
        "stages": {"extract": {"status": "running"}},
    }
    store.write_manifest(manifest)
    log_event(log, "store created", run=store.where(), tokens=n_rows, sentences=data.sentences.num_rows,
              layers=len(layers), seconds=time.perf_counter() - t0)
    return manifest


def run_extract(run_dir: str, corpus: CorpusConfig, cfg: ExtractConfig) -> dict[str, Any]:
    """Extract into ``run_dir``, resuming if it exists. Returns a summary."""
    store = RunStore(run_dir)
    manifest = prepare_store(store, corpus, cfg)
    layers: list[int] = manifest["layers"]
    ranges = shard_ranges(manifest["tokens"], manifest["shard_rows"])
    done = done_shards(store)
    todo = [i for i in range(len(ranges)) if i not in done]
    log_event(log, "extract plan", shards=len(ranges), done=len(done), todo=len(todo), engine=cfg.engine)
    t0 = time.perf_counter()
    rows_todo = sum(ranges[i][1] - ranges[i][0] for i in todo)
    stats: dict[str, Any] = {}
    if todo:
        store.set_stage("extract", "running")
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
    summary = {"run": store.where(), "tokens": manifest["tokens"], "layers": layers,
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

