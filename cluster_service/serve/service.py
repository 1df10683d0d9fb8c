"""What the service answers, independent of where its parts run.

A request goes through three steps: ``Front.prepare`` (check the body, word-tokenize its texts as
ingest did), the model (``TextEncoder``: the words' vectors at every asked layer), and one concept
index per (layer, K) (``ConceptIndex.answer``); ``Front.assemble`` puts the answers back in word order.
The Serve app (``app.py``) runs the steps in separate deployments; ``LocalService`` runs them in this
process, for the offline `concepts` verb and the benchmark's one-request-at-a-time baseline. Both give
the same JSON body.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..annotate.stage import concept_tables
from ..errors import UserError
from ..store import RunStore
from .config import ServeConfig
from .encoder import Recipe, TextEncoder
from .index import Lookup, load_index
from .schema import Limits, Query, RequestError, check_query, check_words


def served_tables(store: RunStore, cfg: ServeConfig) -> dict[int, list[int]]:
    """K → the layers served at it: the run's concept tables, narrowed by --layers and --k."""
    tables = concept_tables(store)
    if not tables:
        raise UserError(f"{store.where('concepts')}: no concept tables; run `cluster-service cluster "
                        f"{store.where()}` (and `annotate`) first")
    for name, asked, have in (("--layers", cfg.layers, {t[0] for t in tables}), ("--k", cfg.k, {t[1] for t in tables})):
        missing = sorted(set(asked) - have)
        if missing:
            raise UserError(f"{name} {','.join(map(str, missing))}: the run has no concept table there "
                            f"(clustered: {', '.join(f'layer {layer} k={k}' for layer, k in tables)})")
    served: dict[int, list[int]] = {}
    for layer, k in tables:
        if (not cfg.layers or layer in cfg.layers) and (not cfg.k or k in cfg.k):
            served.setdefault(k, []).append(layer)
    if not served:
        raise UserError(f"--layers {cfg.layers} --k {cfg.k}: no concept table of the run has both "
                        f"(clustered: {', '.join(f'layer {layer} k={k}' for layer, k in tables)})")
    return served


def limits_of(cfg: ServeConfig) -> Limits:
    return Limits(max_chars=cfg.max_chars, max_words=cfg.max_words, max_texts=cfg.max_texts)


@dataclass
class Front:
    """The request side: checks, word tokenization, the response body. Light: no model, no index."""

    run: str
    recipe: Recipe
    served: dict[int, list[int]]
    limits: Limits

    @classmethod
    def of(cls, store: RunStore, cfg: ServeConfig) -> Front:
        return cls(store.where(), Recipe.of(store), served_tables(store, cfg), limits_of(cfg))

    @property
    def layers(self) -> list[int]:
        return sorted({layer for layers in self.served.values() for layer in layers})

    @property
    def tables(self) -> list[tuple[int, int]]:
        return sorted((layer, k) for k, layers in self.served.items() for layer in layers)

    def prepare(self, body: Any) -> tuple[Query, list[str]]:
        """The checked query and each text's words (joined by spaces), or a RequestError."""
        query = check_query(body, self.served, self.limits)
        tokenized = self.recipe.words(query.texts)
        check_words(query, tokenized, self.limits)
        return query, tokenized

    def assemble(self, query: Query, tokenized: list[str], per_layer: dict[int, list[dict[str, Any]]]) -> dict:
        """The POST /v1/concepts body: per text, per word, its concept at each asked layer."""
        results, row = [], 0
        for text, words in zip(query.texts, tokenized, strict=True):
            out = []
            for word in words.split(" "):
                out.append({"word": word, "concepts": [per_layer[layer][row] for layer in query.layers]})
                row += 1
            results.append({"text": text, "words": out})
        return {"model": self.recipe.model_name, "k": query.k, "layers": query.layers, "results": results}

    def run_info(self, indexes: list[dict[str, Any]]) -> dict[str, Any]:
        return {"run": self.run, "model": self.recipe.model_name, "layers": self.layers, "k": sorted(self.served),
                "indexes": indexes, "limits": vars(self.limits)}


def answers(found: Lookup, layer: int, labels: dict[int, str | None]) -> list[dict[str, Any]]:
    """One concept answer per looked-up vector, as the response lists it."""
    return [{"layer": layer, "concept": int(c), "label": labels[int(c)], "distance": round(float(d), 4),
             "confidence": round(float(p), 4), "via": str(v)}
            for c, d, p, v in zip(found.concept, found.distance, found.confidence, found.via, strict=True)]


def unknown_concept(layer: int, k: int, concept: int, count: int | None) -> RequestError:
    """GET /v1/concepts/{layer}/{k}/{id} of no concept; ``count``: the concepts at (layer, k), if served."""
    if count is None:
        return RequestError(404, "layer", f"layer {layer} at k={k} is not served")
    return RequestError(404, "id", f"no concept {concept} at layer {layer}, k={k} (ids 0..{count - 1})")


class LocalService:
    """Every part of the service in this process: model and indexes loaded once."""

    def __init__(self, store: RunStore, cfg: ServeConfig):
        self.front = Front.of(store, cfg)
        self.indexes = {(layer, k): load_index(store, layer, k, cfg) for layer, k in self.front.tables}
        self.labels = {key: {c: index.label(c) for c in index.concepts} for key, index in self.indexes.items()}
        self.encoder = TextEncoder(self.front.recipe, self.front.layers, cfg.device, cfg.cpus_per_replica)

    def answer(self, body: Any) -> dict[str, Any]:
        query, tokenized = self.front.prepare(body)
        vectors = self.encoder.encode(tokenized)
        per_layer = {layer: answers(self.indexes[(layer, query.k)].lookup(vectors[self.front.layers.index(layer)]),
                                    layer, self.labels[(layer, query.k)])
                     for layer in query.layers}
        return self.front.assemble(query, tokenized, per_layer)

    def describe(self, layer: int, k: int, concept: int) -> dict[str, Any]:
        index = self.indexes.get((layer, k))
        found = index.describe(concept) if index else None
        if found is None:
            raise unknown_concept(layer, k, concept, None if index is None else len(index.concepts))
        return found

    def run_info(self) -> dict[str, Any]:
        return self.front.run_info([i.info() for _, i in sorted(self.indexes.items())])
