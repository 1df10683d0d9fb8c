"""The cluster stage over a run store: per layer, build (or resume) the tree and the concept tables.

Files under ``clusters/layer_{L}/`` (each written whole through the run store, recorded in ``state.json`` with the
settings that produced it, so a rerun with the same settings skips it and a changed setting redoes
only what depends on it):

- ``kmeans_centroids.npy``  float32 [M, D]  k-means centroids (only when M < N)
- ``token_micro.npy``       int32 [N]       token → leaf of the tree (the identity when every token is a
                                            leaf: exact Ward, or approx with M = N)
- ``micro_sizes.npy``       int64 [M]       tokens per leaf
- ``micro_sums.npy``, ``micro_centroids.npy`` float64 [M, D] (only when M < N: else the tokens themselves)
- ``linkage.npy``           float64 [M−1, 4] scipy-format Ward linkage over the leaves
- ``labels_k{K}.npy``       int32 [N]       token → concept at K (concept 0 is the largest)
- ``quality.json``          the ``--evaluate`` report
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from ..errors import UserError
from ..logs import log_event
from ..store import ACTIVATIONS, TOKENS, RunStore
from .approx import micro_centroids
from .concepts import concept_table
from .config import ClusterConfig
from .cut import check_k, cut
from .exact import exact_ward
from .graph import hybrid_ward
from .micro import MicroPartition, compact, default_micro, identity_partition, sample_indices
from .parallel import assign_all
from .quality import evaluate
from .source import ZarrSource, read_rows
from .torch_ops import backend_name, resolve_device

if TYPE_CHECKING:
    import torch

log = logging.getLogger("cluster_service.cluster")


class LayerDir:
    """Whole .npy and .json files in the run store plus a state file of the settings each was made with."""

    def __init__(self, store: RunStore, layer: int):
        self.store = store
        self.prefix = store.clusters_key(layer)
        self.state: dict[str, Any] = (json.loads(store.read_bytes(self.key("state.json")))
                                      if store.has(self.key("state.json")) else {})

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    def have(self, name: str, key: dict) -> bool:
        return self.state.get(name) == key and self.store.has(self.key(name))

    def load(self, name: str) -> np.ndarray:
        return np.load(io.BytesIO(self.store.read_bytes(self.key(name))))

    def save(self, name: str, array: np.ndarray, key: dict) -> None:
        buf = io.BytesIO()
        np.save(buf, array)
        self.store.write_bytes(self.key(name), buf.getvalue())
        self.mark(name, key)

    def load_json(self, name: str) -> Any:
        return json.loads(self.store.read_bytes(self.key(name)))

    def save_json(self, name: str, value: Any, key: dict) -> None:
        self.store.write_bytes(self.key(name), json.dumps(value, indent=1).encode())
        self.mark(name, key)

    def mark(self, name: str, key: dict) -> None:
        self.state[name] = key
        self.store.write_bytes(self.key("state.json"), json.dumps(self.state, indent=1, sort_keys=True).encode())


def stored_layers(store: RunStore) -> list[int]:
    group = store.open_activations("r")
    return sorted(int(name.split("_")[1]) for name in group.array_keys() if name.startswith("layer_"))


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


def _micro_partition(source: ZarrSource, cfg: ClusterConfig, m: int, ldir: LayerDir, base: dict,
                     use_ray: bool, where: str, device: torch.device | None) -> tuple[MicroPartition, dict]:
    key = {**base, "m": m, "method": cfg.method}
    if cfg.method == "approx" and m < source.n:
        key |= {"sample_per_micro": cfg.sample_per_micro, "kmeans_iters": cfg.kmeans_iters}
    names = ("token_micro.npy", "micro_sizes.npy", "micro_sums.npy", "micro_centroids.npy")
    if all(ldir.have(n, key) for n in names) and ldir.state.get("sq_norm", {}).get("key") == key:
        log_event(log, "micro partition reused", layer=where)
        part = MicroPartition(ldir.load(names[0]), ldir.load(names[3]), ldir.load(names[1]),
                              ldir.load(names[2]), ldir.state["sq_norm"]["value"])
        return part, key
    if cfg.method == "exact" or m >= source.n:
        part = identity_partition(read_rows(source, np.arange(source.n), where))
        for name in names[:2]:
            if not ldir.have(name, key):
                ldir.save(name, part.token_micro if name == names[0] else part.sizes, key)
        return part, key
    if ldir.have("kmeans_centroids.npy", key):
        cents = ldir.load("kmeans_centroids.npy")
    else:
        t0 = time.perf_counter()
        cents = micro_centroids(source, m, seed=cfg.seed, iters=cfg.kmeans_iters,
                                per_micro=cfg.sample_per_micro, where=where, device=device)
        ldir.save("kmeans_centroids.npy", cents, key)
        log_event(log, "k-means done", layer=where, m=m, seconds=time.perf_counter() - t0)
    t0 = time.perf_counter()
    part = compact(assign_all(source, cents, where=where, use_ray=use_ray, workers=cfg.workers, device=device))
    log_event(log, "assignment done", layer=where, micro=len(part.sizes), ray=use_ray and device is None,
              seconds=time.perf_counter() - t0)
    for name, arr in zip(names, (part.token_micro, part.sizes, part.sums, part.centroids), strict=True):
        ldir.save(name, arr, key)
    ldir.mark("sq_norm", {"key": key, "value": part.sq_norm})
    return part, key


def _linkage(part: MicroPartition, cfg: ClusterConfig, ldir: LayerDir, key: dict,
             where: str, device: torch.device | None) -> tuple[np.ndarray, dict]:
    key = {**key, "dense_max": cfg.dense_max, "neighbors": cfg.neighbors} if cfg.method == "approx" else key
    if ldir.have("linkage.npy", key):
        return ldir.load("linkage.npy"), key
    t0 = time.perf_counter()
    if cfg.method == "exact":
        z = exact_ward(part.centroids)
    else:
        z = hybrid_ward(part.centroids, part.sizes, dense_max=cfg.dense_max, k=cfg.neighbors, device=device)
    ldir.save("linkage.npy", z, key)
    log_event(log, "ward done", layer=where, leaves=len(part.sizes), seconds=time.perf_counter() - t0)
    return z, key


def cluster_layer(store: RunStore, layer: int, cfg: ClusterConfig, *, use_ray: bool = False) -> dict:
    """Tree, cuts and concept tables of one layer; returns a summary (sizes, SSE per K, timings)."""
    device = resolve_device(cfg.device)
    store.layer_array(layer)  # clear error when the layer is missing
    where = store.where(f"{ACTIVATIONS}/{store.layer_name(layer)}")
    source = ZarrSource(store.where(ACTIVATIONS), store.layer_name(layer))
    if source.n == 0:
        raise UserError(f"{where}: empty layer (0 tokens); nothing to cluster")
    ks = check_k(cfg.k, source.n, f"tokens in layer {layer}")
    if cfg.method == "exact":
        if source.n > cfg.exact_max:
            raise UserError(f"{where}: {source.n} tokens is above --exact-max {cfg.exact_max} for exact "
                            f"Ward; use --method approx")
        m = source.n
    else:
        m = cfg.micro or default_micro(source.n, max(ks), cfg.graph_max)
        if not max(ks) <= m <= source.n:
            raise UserError(f"--micro {m}: must lie between the largest K ({max(ks)}) and the number of "
                            f"tokens ({source.n})")
    t_start = time.perf_counter()
    store.set_stage(f"cluster:layer_{layer}", "running", k=ks, method=cfg.method, m=m)
    ldir = LayerDir(store, layer)
    base = {"fingerprint": _fingerprint(source), "seed": cfg.seed}
    if device is not None:  # the FAISS path's keys stay as they were, so existing stores resume
        base["backend"] = backend_name(device)
    part, key = _micro_partition(source, cfg, m, ldir, base, use_ray, where, device)
    z, key = _linkage(part, cfg, ldir, key, where, device)
    micro_labels = cut(z, ks, part.sizes)
    tokens = sentences = None
    per_k: dict[int, dict] = {}
    for k in ks:
        onehot = sp.csr_matrix((np.ones(len(part.sizes)), (micro_labels[k], np.arange(len(part.sizes)))),
                               shape=(k, len(part.sizes)))
        sizes = np.asarray(onehot @ part.sizes.astype(np.float64))
        sums = np.asarray(onehot @ part.sums)
        sse = part.sq_norm - float((np.einsum("ij,ij->i", sums, sums) / sizes).sum())
        per_k[k] = {"sse": sse, "largest": int(sizes.max()), "smallest": int(sizes.min())}
        kkey = {**key, "k": k, "examples": cfg.examples}
        if ldir.have(f"labels_k{k}.npy", kkey) and store.has_concepts(layer, k):
            continue
        labels = micro_labels[k][part.token_micro]
        if tokens is None:
            tokens, sentences = _tables(store, source.n)
        table = concept_table(labels, sums / sizes[:, None], tokens, sentences, seed=cfg.seed,
                              n_examples=cfg.examples)
        store.write_concepts(layer, k, table)
        ldir.save(f"labels_k{k}.npy", labels, kkey)
        log_event(log, "concepts written", layer=layer, k=k, path=store.where(store.concepts_key(layer, k)))
    summary: dict[str, Any] = {"layer": layer, "tokens": source.n, "dim": source.d, "method": cfg.method,
                               "backend": backend_name(device),
                               "micro": len(part.sizes), "k": ks, "per_k": per_k,
                               "seconds": time.perf_counter() - t_start}
    if cfg.evaluate:
        summary["quality"] = _quality(source, cfg, ks, ldir, base, where)
    store.set_stage(f"cluster:layer_{layer}", "done", k=ks, method=cfg.method, m=len(part.sizes),
                    tokens=source.n, seconds=round(summary["seconds"], 2))
    return summary


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
    micro = cfg.micro if cfg.micro and cfg.micro <= size else default_micro(size, max(ks), cfg.graph_max)
    rows = evaluate(x, [k for k in ks if k <= size], seed=cfg.seed, micro=micro, iters=cfg.kmeans_iters,
                    per_micro=cfg.sample_per_micro, dense_max=cfg.dense_max, neighbors=cfg.neighbors)
    ldir.save_json("quality.json", rows, key)
    for r in rows:
        log_event(log, "quality", layer=where, k=r["k"], ari=r["ari_vs_exact"], nmi=r["nmi_vs_exact"],
                  sse_ratio=r["sse_ratio_vs_exact"], kmeans_ari=r["kmeans_ari_vs_exact"],
                  exact_stability_ari=r["ari_exact_subsample"])
    return rows


def cluster_run(store: RunStore, cfg: ClusterConfig) -> dict:
    """Cluster every configured layer of a run store; returns {"layers": {L: summary}, "config": ...}."""
    check_k(cfg.k, max(cfg.k, default=1))
    layers = cfg.layers or stored_layers(store)
    if not layers:
        raise UserError(f"{store.where(ACTIVATIONS)}: no layers stored; run `cluster-service extract` first")
    use_ray = _ray(cfg)
    store.record_config("cluster", dataclasses.asdict(cfg))
    out = {str(layer): cluster_layer(store, layer, cfg, use_ray=use_ray) for layer in layers}
    return {"layers": out, "config": dataclasses.asdict(cfg)}
