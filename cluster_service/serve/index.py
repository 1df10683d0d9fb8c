"""A concept index per (layer, K): a word vector in, the run's concept for it out.

Three ways to find the concept, all over what the cluster stage wrote:

- ``knn``: FAISS search over the layer's stored token vectors, and a vote of the nearest neighbours'
  concepts (``assignments_k{K}.npy``); the confidence is the winner's share of the votes, the distance
  the one to the winner's nearest member. A vector within ``match_tolerance`` of a stored one is that
  stored token (a corpus sentence sent back), and gets the concept the run gave it, not the vote's:
  a token near a concept's edge may be outvoted by its neighbours.
- ``micro``: the nearest micro-centroid (``micro_centroids.npy``, the leaves of the Ward tree) and the
  concept its tokens were cut into (every leaf lies in one concept); confidence 1. It needs no
  activations, so it serves runs that freed them, and holds M rows instead of N (a 5M x 768 layer of
  token vectors is 7.7 GB per flat index).
- ``centroid``: the nearest concept centroid (the concept table's ``centroid``; K rows); confidence 1.
  It needs neither activations nor micro-centroids. Ward's merge cost of adding a vector to a
  concept grows with the distance to its centroid, so on the held-out test of the tests and
  ``benchmarks/bench_serve.py`` it agreed with a clustering that included the held-out words more
  often than the token vote did (at layer 0 of MiniLM, where neighbours are mostly the same word
  type, by 0.1-0.3), and it costs K distances per word where a flat knn search costs N.

Labels, sizes, top words and examples come from ``concepts_with_labels``, the one reader of labelled
concept tables.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..annotate.labels import concepts_with_labels
from ..cluster.checkpoint import LayerDir
from ..errors import UserError
from ..extract.stage import freed_message
from ..logs import log_event
from ..store import RunStore
from .config import ServeConfig

log = logging.getLogger("cluster_service.serve")
TOP_WORDS = 20  # word types a concept description lists


@dataclass
class Lookup:
    """The index's answer for n vectors."""

    concept: np.ndarray  # int32 [n]
    distance: np.ndarray  # float32 [n], Euclidean
    confidence: np.ndarray  # float32 [n], the winner's vote share (1 for micro and stored tokens)
    via: np.ndarray  # str [n]: "stored" (a stored token's own concept), "knn" (the vote), "micro" or "centroid"

    def take(self, rows) -> Lookup:
        return Lookup(self.concept[rows], self.distance[rows], self.confidence[rows], self.via[rows])


def choose_kind(cfg: ServeConfig, tokens: int, freed: bool) -> str:
    if cfg.index != "auto":
        return cfg.index
    return "micro" if freed or tokens > cfg.knn_max else "knn"


def vote(neighbour_concepts: np.ndarray, distances: np.ndarray) -> Lookup:
    """Majority vote per row of [n, k] neighbour concepts (ties: the concept with the nearer member)."""
    n, k = neighbour_concepts.shape
    rows = np.arange(n)
    # votes each neighbour's concept got in its row; a nearer member breaks ties (columns are sorted)
    same = neighbour_concepts[:, :, None] == neighbour_concepts[:, None, :]
    votes = same.sum(axis=2)
    score = votes * (k + 1) - np.arange(k)[None, :]  # most votes first, then the earliest column
    best = np.argmax(score, axis=1)
    return Lookup(neighbour_concepts[rows, best].astype(np.int32),
                  np.sqrt(np.maximum(distances[rows, best], 0)).astype(np.float32),
                  (votes[rows, best] / k).astype(np.float32), np.full(n, "knn", dtype="<U8"))


class ConceptIndex:
    """One (layer, K) of a run: a FAISS flat index over vectors, the concept of each row, the labels."""

    def __init__(self, layer: int, k: int, kind: str, vectors: np.ndarray, row_concept: np.ndarray,
                 concepts: list[dict[str, Any]], neighbors: int = 1, match_tolerance: float = 0.0):
        import faiss

        self.layer, self.k, self.kind = layer, k, kind
        self.rows = len(vectors)
        self.neighbors = min(neighbors, self.rows) if kind == "knn" else 1
        self.match_tolerance = match_tolerance
        self.index = faiss.IndexFlatL2(vectors.shape[1])
        self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        self.row_concept = row_concept.astype(np.int32)
        self.concepts = {int(c["concept"]): c for c in concepts}

    @property
    def dims(self) -> int:
        return self.index.d

    def lookup(self, vectors: np.ndarray) -> Lookup:
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if len(x) == 0:
            empty = np.zeros(0, np.float32)
            return Lookup(np.zeros(0, np.int32), empty, empty, np.zeros(0, dtype="<U8"))
        distances, ids = self.index.search(x, self.neighbors)
        if self.kind != "knn":
            return Lookup(self.row_concept[ids[:, 0]], np.sqrt(np.maximum(distances[:, 0], 0)).astype(np.float32),
                          np.ones(len(x), np.float32), np.full(len(x), self.kind, dtype="<U8"))
        found = vote(self.row_concept[ids], distances)
        nearest = np.sqrt(np.maximum(distances[:, 0], 0))
        stored = nearest <= self.match_tolerance * np.linalg.norm(x, axis=1)
        found.concept[stored] = self.row_concept[ids[stored, 0]]
        found.distance[stored] = nearest[stored]
        found.confidence[stored] = 1.0
        found.via[stored] = "stored"
        return found

    def label(self, concept: int) -> str | None:
        return self.concepts[concept]["label"]

    def describe(self, concept: int) -> dict[str, Any] | None:
        """The concept's label, size, top words, examples and tree neighbours (None if there is no such id)."""
        c = self.concepts.get(concept)
        if c is None:
            return None
        return {"layer": self.layer, "k": self.k, "concept": concept, "label": c["label"],
                "label_status": c.get("label_status"), "size": c["size"],
                "top_words": [{"word": t["word"], "count": t["count"]} for t in c["top_types"][:TOP_WORDS]],
                "examples": [{"word": e["word"], "position": e["position"], "sentence": e["sentence"]}
                             for e in c["examples"]],
                "parent": c.get("parent"), "children": list(c.get("children") or [])}

    def info(self) -> dict[str, Any]:
        return {"layer": self.layer, "k": self.k, "index": self.kind, "rows": self.rows,
                "neighbors": self.neighbors, "concepts": len(self.concepts), "match_tolerance": self.match_tolerance}


@dataclass
class IndexPlan:
    """What an index of one (layer, K) will be, decided without reading any vectors: the checks a
    deployment makes before a replica starts, and the labels the ingress needs."""

    layer: int
    k: int
    kind: str
    assignments: np.ndarray
    concepts: list[dict[str, Any]]
    centroids: np.ndarray
    freed: str | None

    def bytes(self, dims: int) -> int:
        """Upper bound of the index's float32 vectors (micro: at most one leaf per token)."""
        rows = len(self.centroids) if self.kind == "centroid" else len(self.assignments)
        return rows * dims * 4

    @property
    def labels(self) -> dict[int, str | None]:
        return {int(c["concept"]): c["label"] for c in self.concepts}


def index_plan(store: RunStore, layer: int, k: int, cfg: ServeConfig) -> IndexPlan:
    """The plan of ``layer``/``k`` as ``cfg`` asks for it, or one line saying what the run lacks."""
    ldir = LayerDir(store, layer)
    name = f"assignments_k{k}.npy"
    if not ldir.store.has(ldir.key(name)):
        raise UserError(f"{store.where(ldir.key(name))}: missing; run `cluster-service cluster {store.where()} "
                        f"--layers {layer} --k {k}` first")
    assignments = ldir.load(name)
    freed = freed_message(store, layer)
    kind = choose_kind(cfg, len(assignments), freed is not None)
    table = concepts_with_labels(store, layer, k, cfg.annotator or None)
    keep = ["concept", "label", "label_status", "size", "top_types", "examples", "parent", "children"]
    concepts = table.select([c for c in keep if c in table.column_names]).to_pylist()
    centroids = np.asarray(table.column("centroid").to_pylist(), dtype=np.float32)
    if kind == "knn":
        if freed:
            raise UserError(f"{freed}; or serve the micro-centroid or centroid index (--index micro|centroid)")
        rows = store.layer_array(layer).shape[0]
        if rows != len(assignments):
            raise UserError(f"{store.where(ldir.key(name))}: {len(assignments)} rows but layer {layer} stores "
                            f"{rows} vectors; recluster the run")
    elif kind == "micro" and freed and not ldir.store.has(ldir.key("micro_centroids.npy")):
        raise UserError(f"{freed}; the clustering of layer {layer} kept no micro-centroids (every token was a "
                        "leaf), so the micro index needs them; or serve the concept centroids (--index centroid)")
    return IndexPlan(layer, k, kind, assignments, concepts, centroids, freed)


def load_index(store: RunStore, layer: int, k: int, cfg: ServeConfig) -> ConceptIndex:
    """The index of ``layer``/``k`` as ``cfg`` asks for it (``index_plan``'s checks first)."""
    plan = index_plan(store, layer, k, cfg)
    if cfg.index_threads:
        import faiss

        faiss.omp_set_num_threads(cfg.index_threads)  # process-wide: see ServeConfig.index_threads
    if plan.kind == "centroid":
        index = ConceptIndex(layer, k, "centroid", plan.centroids, np.asarray([c["concept"] for c in plan.concepts]),
                             plan.concepts)
    elif plan.kind == "knn":
        index = ConceptIndex(layer, k, "knn", store.layer_array(layer)[:], plan.assignments, plan.concepts,
                             cfg.neighbors, cfg.match_tolerance)
    else:
        vectors, row_concept = micro_vectors(store, layer, plan.assignments)
        index = ConceptIndex(layer, k, "micro", vectors, row_concept, plan.concepts)
    log_event(log, "concept index loaded", **index.info())
    return index


def micro_vectors(store: RunStore, layer: int, assignments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The tree's leaves as vectors and the concept of each: micro-centroids when the tree has them, the
    token vectors themselves when every token was a leaf (M = N)."""
    ldir = LayerDir(store, layer)
    if ldir.store.has(ldir.key("micro_centroids.npy")):
        centroids = ldir.load("micro_centroids.npy")
        token_micro = ldir.load("token_micro.npy")
        micro_concept = np.full(len(centroids), -1, dtype=np.int64)
        micro_concept[token_micro] = assignments
        used = micro_concept >= 0  # a leaf no token fell into has no concept
        return centroids[used], micro_concept[used]
    return store.layer_array(layer)[:], assignments
