"""The cluster stage over a run store: per layer, build (or resume) the tree and the concept tables.

The tree is built by ``approx.ward_tree`` with this layer's directory as checkpoint. Files under
``clusters/layer_{L}/`` (each written whole through the run store, recorded in ``state.json`` with the
settings that produced it, so a rerun with the same settings skips it and a changed setting redoes
only what depends on it):

- ``kmeans_centroids.npy``  float32 [M, D]  k-means centroids (only when M < N)
- ``token_micro.npy``       int32 [N]       token → leaf of the tree (the identity when every token is a
                                            leaf: exact Ward, or approx with M = N)
- ``micro_sizes.npy``       int64 [M]       tokens per leaf
- ``micro_sums.npy``, ``micro_centroids.npy`` float64 [M, D] (only when M < N: else the tokens themselves)
- ``linkage.npy``           float64 [M−1, 4] scipy-format Ward linkage over the leaves
- ``assignments_k{K}.npy``  int32 [N]       token → concept at K (concept 0 is the largest); runs
                                            written before called it ``labels_k{K}.npy``: a rerun
                                            writes the new name and removes the old one
- ``quality.json``          the ``--evaluate`` report

and one concept table per K (``concepts.CONCEPT_SCHEMA``), whose parent/children columns link it to
the next smaller and larger K of this run's K list; its settings key (schema metadata) covers the
tree, K, the examples and those neighbouring Ks, so adding a K rewrites its neighbours' tables.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from typing import Any

import numpy as np
import scipy.sparse as sp

from ..errors import UserError
from ..extract.stage import require_activations
from ..logs import log_event
from ..store import ACTIVATIONS, TOKENS, RunStore
from .approx import WardTree, input_key, leaf_count, ward_tree
from .backend import resolve_backend
from .checkpoint import LayerDir
from .concepts import concept_table, hierarchy, settings_key
from .config import ClusterConfig
from .cut import check_k
from .micro import sample_indices
from .quality import evaluate
from .source import ZarrSource, read_rows

log = logging.getLogger("cluster_service.cluster")


def _fingerprint(source: ZarrSource) -> str:
    """Cheap identity of the layer's content: shape plus the first and last rows' bytes."""
    h = hashlib.sha1(f"{source.n}x{source.d}".encode())
    for lo, hi in ((0, min(source.n, 256)), (max(0, source.n - 256), source.n)):
        h.update(source.read(lo, hi).tobytes())
    return h.hexdigest()[:16]


def _ray(cfg: ClusterConfig) -> bool:
    """Whether assignment runs as Ray tasks, initialising Ray if the config asks for it."""
    try:
        import ray
    except ImportError:  # pragma: no cover - ray is a dependency
        return False
    if ray.is_initialized():
        return True
    if not cfg.address:
        return False
    ray.init(address=None if cfg.address == "local" else cfg.address, include_dashboard=False,
             log_to_driver=False)
    return True


def cluster_layer(store: RunStore, layer: int, cfg: ClusterConfig, *, use_ray: bool = False,
                  record: bool = True) -> dict:
    """Tree, cuts and concept tables of one layer; returns a summary (sizes, SSE per K, timings).
    ``record``: keep the layer's status in run.json here (a layer task leaves that to the driver, the
    one writer of run.json)."""
    backend = resolve_backend(cfg.device, use_ray=use_ray, workers=cfg.workers)
    require_activations(store, layer)
    where = store.where(f"{ACTIVATIONS}/{store.layer_name(layer)}")
    source = ZarrSource(store.where(ACTIVATIONS), store.layer_name(layer))
    if source.n == 0:
        raise UserError(f"{where}: empty layer (0 tokens); nothing to cluster")
    ks = check_k(cfg.k, source.n, f"tokens in layer {layer}")
    exact = cfg.method == "exact"
    exact_max = cfg.exact_max or backend.exact_max
    if exact and source.n > exact_max:
        raise UserError(f"{where}: {source.n} tokens is above --exact-max {exact_max} for exact Ward on "
                        f"{backend.name}; use --method approx, or raise --exact-max")
    params = cfg.approx_params()
    m = leaf_count(source.n, ks, params, exact, backend)
    t_start = time.perf_counter()
    if record:
        store.set_stage(f"cluster:layer_{layer}", "running", k=ks, method=cfg.method, m=m)
    ldir = LayerDir(store, layer)
    identity = {"fingerprint": _fingerprint(source)}
    # everything this layer's outputs depend on: when all of them are there with these settings, the
    # rerun (a resumed job's) reads no tokens (at 1M × 768 that pass alone cost 15-19 s a layer)
    done_key = json.loads(json.dumps({**input_key(identity, params, backend), "m": m, "method": cfg.method,
                                      "k": ks, "examples": cfg.examples, "params": dataclasses.asdict(params)}))
    finished = ldir.value("layer_summary", done_key)
    if finished is not None and not cfg.evaluate and _outputs_present(store, layer, ldir, ks):
        log_event(log, "layer already clustered", layer=layer, where=where)
        summary = {**finished, "per_k": {int(k): v for k, v in finished["per_k"].items()},
                   "seconds": time.perf_counter() - t_start, "reused": True}
        if record:
            _record_done(store, summary)
        return summary
    tree = ward_tree(source, ks, params, backend, ldir, exact=exact, identity=identity, where=where,
                     progress=True)
    per_k = _write_concepts(store, layer, tree, ks, cfg, ldir, source.n)
    summary: dict[str, Any] = {"layer": layer, "tokens": source.n, "dim": source.d, "method": cfg.method,
                               "backend": backend.name,
                               "micro": len(tree.partition.sizes), "k": ks, "per_k": per_k,
                               "seconds": time.perf_counter() - t_start}
    ldir.save_value("layer_summary", {key: value for key, value in summary.items() if key != "seconds"}, done_key)
    if cfg.evaluate:
        summary["quality"] = _quality(source, cfg, ks, ldir, input_key(identity, params, backend), where)
    if record:
        _record_done(store, summary)
    return summary


def _outputs_present(store: RunStore, layer: int, ldir: LayerDir, ks: list[int]) -> bool:
    names = ["linkage.npy", *(f"assignments_k{k}.npy" for k in ks)]
    return all(store.has(ldir.key(name)) for name in names) and all(store.has_concepts(layer, k) for k in ks)


def _record_done(store: RunStore, summary: dict) -> None:
    store.set_stage(f"cluster:layer_{summary['layer']}", "done", k=summary["k"], method=summary["method"],
                    m=summary["micro"], tokens=summary["tokens"], seconds=round(summary["seconds"], 2))


def _write_concepts(store: RunStore, layer: int, tree: WardTree, ks: list[int], cfg: ClusterConfig,
                    ldir: LayerDir, n: int) -> dict[int, dict]:
    """SSE and sizes per K (from the leaves' sums, no pass over the tokens), and every concept table
    and assignment file whose settings changed (tokens and sentences read only if one did)."""
    part = tree.partition
    links = hierarchy(tree.leaf_concepts)
    tokens = sentences = None
    per_k: dict[int, dict] = {}
    for i, k in enumerate(ks):
        onehot = sp.csr_matrix((np.ones(len(part.sizes)), (tree.leaf_concepts[k], np.arange(len(part.sizes)))),
                               shape=(k, len(part.sizes)))
        sizes = np.asarray(onehot @ part.sizes.astype(np.float64))
        sums = np.asarray(onehot @ part.sums)
        sse = part.sq_norm - float((np.einsum("ij,ij->i", sums, sums) / sizes).sum())
        per_k[k] = {"sse": sse, "largest": int(sizes.max()), "smallest": int(sizes.min())}
        kkey = {**tree.key, "k": k, "examples": cfg.examples,
                "parent_k": ks[i - 1] if i else None, "child_k": ks[i + 1] if i + 1 < len(ks) else None}
        name = f"assignments_k{k}.npy"
        if ldir.have(name, kkey) and store.has_concepts(layer, k):
            continue
        assignments = tree.assignments(k)
        if tokens is None:
            tokens, sentences = _tables(store, n)
        parent, children = links[k]
        table = concept_table(assignments, sums / sizes[:, None], tokens, sentences, parent=parent,
                              children=children, settings=settings_key(kkey), seed=cfg.seed,
                              n_examples=cfg.examples)
        store.write_concepts(layer, k, table)
        ldir.save(name, assignments, kkey)
        ldir.forget(f"labels_k{k}.npy")  # this file's name before the rename
        log_event(log, "concepts written", layer=layer, k=k, path=store.where(store.concepts_key(layer, k)))
    return per_k


def _tables(store: RunStore, n: int):
    tokens = store.read_tokens(["row", "sentence_id", "position", "word"]).sort_by("row")
    rows = tokens.column("row").to_numpy()
    if len(rows) != n or (n and (rows[0] != 0 or rows[-1] != n - 1 or len(np.unique(rows)) != n)):
        raise UserError(f"{store.where(TOKENS)}: rows do not match the layer's {n} rows (0..{n - 1}); "
                        f"re-run extraction")
    return tokens, store.read_sentences()


def _quality(source: ZarrSource, cfg: ClusterConfig, ks: list[int], ldir: LayerDir, base: dict,
             where: str) -> list[dict]:
    size = min(cfg.evaluate, source.n)
    key = {**base, "evaluate": size, "k": ks, "micro": cfg.micro, "iters": cfg.kmeans_iters,
           "sample_per_micro": cfg.sample_per_micro, "graph_max": cfg.graph_max, "dense_max": cfg.dense_max,
           "neighbors": cfg.neighbors}
    if ldir.have("quality.json", key):
        return ldir.load_json("quality.json")
    x = read_rows(source, sample_indices(source.n, size, cfg.seed), where)
    params = cfg.approx_params()
    if params.micro > size:  # more leaves than the sample has tokens: the default rule on the sample
        params = dataclasses.replace(params, micro=0)
    rows = evaluate(x, [k for k in ks if k <= size], params)
    ldir.save_json("quality.json", rows, key)
    for r in rows:
        log_event(log, "quality", layer=where, k=r["k"], ari=r["ari_vs_exact"], nmi=r["nmi_vs_exact"],
                  sse_ratio=r["sse_ratio_vs_exact"], kmeans_ari=r["kmeans_ari_vs_exact"],
                  exact_stability_ari=r["ari_exact_subsample"])
    return rows


def cluster_run(store: RunStore, cfg: ClusterConfig) -> dict:
    """Cluster every configured layer of a run store; returns ``{"L": summary}`` (the config is in run.json)."""
    check_k(cfg.k, max(cfg.k, default=1))
    layers = cfg.layers or store.stored_layers()
    if not layers:
        raise UserError(f"{store.where(ACTIVATIONS)}: no layers stored; run `cluster-service extract` first")
    use_ray = _ray(cfg)
    store.record_config("cluster", dataclasses.asdict(cfg))
    plan = layer_plan(cfg, len(layers)) if use_ray else None
    if plan is None:
        return {str(layer): cluster_layer(store, layer, cfg, use_ray=use_ray) for layer in layers}
    return _cluster_as_tasks(store, layers, cfg, *plan)


def layer_plan(cfg: ClusterConfig, layers: int) -> tuple[int, dict[str, float]] | None:
    """(actors at once, each actor's Ray resources) for clustering ``layers`` layers on Ray actors, or None
    for one after another in this process (``ClusterConfig.layer_tasks``). Ray must be initialised."""
    import ray

    if layers < 2 or cfg.layer_tasks == 1:
        return None
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0)) if cfg.device not in ("cpu", "torch-cpu") else 0
    cpus = max(1, int(resources.get("CPU", 1)))
    if gpus:  # one GPU each; the node's CPUs shared among them (reading the store, the tree's tail)
        return min(cfg.layer_tasks or gpus, layers), {"num_gpus": 1, "num_cpus": max(1, cpus // gpus)}
    if not cfg.layer_tasks:
        return None
    n = min(cfg.layer_tasks, layers)
    return n, {"num_cpus": max(1, cpus // n)}


class LayerWorker:
    """A Ray actor that clusters layers one after another on its GPU (or its share of the CPUs).

    An actor, not a task per layer: Ray starts a fresh worker process for every task that holds a GPU
    (a reused one would keep the CUDA context of the GPU it first saw), so each layer paid the process
    start, torch's import and the CUDA and kernel warm-up again, ~9.5 s of 56.5 s a layer on an H200.
    run.json is left to the driver."""

    def cluster(self, store: RunStore, layer: int, cfg: ClusterConfig) -> dict:
        try:
            return cluster_layer(store, layer, cfg, record=False)
        finally:
            import torch

            if torch.cuda.is_available():  # the next layer's arrays differ in shape: give the cache back
                torch.cuda.empty_cache()


def _cluster_as_tasks(store: RunStore, layers: list[int], cfg: ClusterConfig, at_once: int,
                      resources: dict[str, float]) -> dict:
    """Every layer on one of ``at_once`` LayerWorker actors; the layers that succeed keep their results
    when another fails (its actor lost included), and the stage then fails naming each failed layer."""
    import ray
    from tqdm import tqdm

    workers = [ray.remote(LayerWorker).options(max_restarts=0, **resources).remote() for _ in range(at_once)]
    log_event(log, "clustering layers on Ray actors", layers=layers, actors=at_once, **resources)
    todo = list(layers)
    running: dict[Any, tuple[int, Any]] = {}  # ref -> (layer, actor)
    idle = list(workers)
    done: dict[str, dict] = {}
    failed: dict[int, str] = {}
    bar = tqdm(total=len(layers), desc="cluster layers", unit="layer")
    try:
        while todo or running:
            while todo and idle:
                layer, actor = todo.pop(0), idle.pop(0)
                store.set_stage(f"cluster:layer_{layer}", "running", k=sorted(cfg.k), method=cfg.method)
                running[actor.cluster.remote(store, layer, cfg)] = (layer, actor)
            if not running:  # every actor was lost: the layers left cannot run
                for layer in todo:
                    failed[layer] = "no Ray actor left to cluster it (every one was lost)"
                    store.set_stage(f"cluster:layer_{layer}", "failed", error=failed[layer])
                break
            (ref,), _ = ray.wait(list(running), num_returns=1)
            layer, actor = running.pop(ref)
            try:
                summary = ray.get(ref)
            except ray.exceptions.RayError as exc:  # the layer's own error, or its actor lost
                lost = isinstance(exc, ray.exceptions.RayActorError)
                cause = exc.as_instanceof_cause() if isinstance(exc, ray.exceptions.RayTaskError) else exc
                cause = getattr(cause, "cause", None) or cause
                text = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
                failed[layer] = text if isinstance(cause, UserError) else f"{type(cause).__name__}: {text}"
                store.set_stage(f"cluster:layer_{layer}", "failed", error=failed[layer][:500])
                log_event(log, "layer failed", layer=layer, error=failed[layer][:200])
                if not lost:
                    idle.append(actor)
            else:
                _record_done(store, summary)
                done[str(layer)] = summary
                idle.append(actor)
                log_event(log, "layer clustered", layer=layer, tokens=summary["tokens"],
                          seconds=round(summary["seconds"], 1))
            bar.update()
    finally:
        bar.close()
        for actor in workers:
            ray.kill(actor)
    if failed:
        first = min(failed)
        raise UserError(f"cluster: layer{'s' if len(failed) > 1 else ''} {', '.join(map(str, sorted(failed)))} "
                        f"failed ({len(done)} of {len(layers)} clustered and kept); layer {first}: {failed[first]}")
    return {str(layer): done[str(layer)] for layer in layers}
