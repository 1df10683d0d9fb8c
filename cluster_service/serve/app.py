"""The concept service as a Ray Serve application: one ingress that holds the model, one index per (layer, K).

- ``Concepts`` (the ingress, FastAPI, one replica per GPU or CPU replicas): checks each request and
  word-tokenizes it (``Front``), joins concurrent requests with ``@serve.batch`` so they share forward
  passes, asks each (layer, K) index once per batch, and assembles the body; it answers GET
  /v1/concepts/{layer}/{k}/{id}, /v1/run and /healthz from the indexes. Indexes small enough
  (``local_index_mb``) it holds itself and searches without any call. Every error is one line of JSON
  naming the field; nothing a client sends raises inside a replica. The model lives in the ingress, not
  in a deployment of its own: on the 2-core box the extra hop (a Ray call per request each way, and a
  second replica's event loop) took CPU the forward passes needed.
- ``Index``: a ``ConceptIndex`` of one (layer, K).

``build`` makes the application from a run and a ``ServeConfig``; it is also the builder that
``serve run`` / ``serve deploy`` config YAML names (``import_path: cluster_service.serve.app:build``,
``args: {run: ..., layers: ..., k: ...}``), so the CLI and a cluster deploy the same thing.
"""

import asyncio
import hashlib
import hmac
import logging
import os
import time
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve

from ..configs import build as build_config
from ..errors import UserError
from ..logs import log_event
from ..store import RunStore
from . import schema
from .config import ServeConfig
from .encoder import TextEncoder
from .index import Lookup, index_plan, load_index
from .schema import RequestError
from .service import Front, answers, unknown_concept

log = logging.getLogger("cluster_service.serve")

api = FastAPI(title="cluster_service concepts",
              description="The latent concepts of a cluster_service run: new text in, every word's concept "
                          "at each served layer out.", version="1")


def error_response(exc: RequestError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


@api.exception_handler(RequestValidationError)
async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    """Path parameters of the wrong type (``/v1/concepts/x/8/1``): one line, like every other error."""
    first = exc.errors()[0]
    field = str(first["loc"][-1]) if first.get("loc") else "request"
    return error_response(RequestError(422, field, first.get("msg", "invalid")))


@api.exception_handler(Exception)
async def _internal(request: Request, exc: Exception) -> JSONResponse:
    """A fault of ours, not the client's: still one line of JSON (the traceback goes to the replica's log)."""
    log.exception("request failed: %s %s", request.method, request.url.path)
    return error_response(RequestError(500, "server", f"internal error ({type(exc).__name__})"))


@api.middleware("http")
async def _authorize(request: Request, call_next):
    """With an API key, every route (the schema included) needs ``Authorization: Bearer <key>``. The
    replica holds only the key's SHA-256, so the key is in no deployment's arguments."""
    digest = getattr(request.app.state, "key_sha256", None)
    if digest:
        sent = request.headers.get("authorization", "")
        token = sent[7:] if sent[:7].lower() == "bearer " else ""
        if not hmac.compare_digest(hashlib.sha256(token.encode()).hexdigest(), digest):
            return JSONResponse({"error": "authorization: missing or wrong bearer token", "field": "authorization"},
                                status_code=401, headers={"WWW-Authenticate": "Bearer"})
    return await call_next(request)


REQUEST_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": schema.ConceptsRequest.model_json_schema()}}}}
ERRORS = {status: {"model": schema.ErrorResponse} for status in (400, 401, 404, 413, 422, 500, 503)}


@serve.deployment
class Index:
    """Concept indexes of one or more (layer, K): the concept of each vector, and the concept descriptions.

    Large runs get one deployment per (layer, K), each scaling on its own. When the indexes are small
    enough for the model replicas to search themselves (``ServeConfig.local_index_mb``), one deployment
    holds them all, for descriptions and run info only: every idle Serve replica costs CPU of its own
    (about 6% of a core each on the 2-core box, 0.4 of a core for MiniLM's 7 layers).
    """

    def __init__(self, run: str, tables: list[tuple[int, int]], cfg: ServeConfig):
        store = RunStore(run)
        self.indexes = {f"{layer}:{k}": load_index(store, layer, k, cfg) for layer, k in tables}

    def lookup(self, key: str, vectors: np.ndarray) -> Lookup:
        return self.indexes[key].lookup(vectors)

    def describe(self, key: str, concept: int) -> dict[str, Any] | None:
        return self.indexes[key].describe(concept)

    def info(self, key: str) -> dict[str, Any]:
        return self.indexes[key].info()


@serve.deployment
@serve.ingress(api)
class Concepts:
    """HTTP (POST /v1/concepts, GET /v1/concepts/{layer}/{k}/{id}, GET /v1/run, GET /healthz) and the
    run's model behind dynamic batching; each batch's vectors go to each (layer, K) index once."""

    def __init__(self, front: Front, layers: list[int], cfg: ServeConfig, indexes: dict[str, Any],
                 labels: dict[str, dict[int, str | None]], key_sha256: str | None, threads: int,
                 local: tuple[str, list[tuple[int, int]]] | None = None):
        self.front = front
        self.labels = labels  # "layer:k" -> concept -> label
        self.indexes = indexes  # "layer:k" -> handle of its Index deployment
        api.state.key_sha256 = key_sha256
        self.info: list[dict[str, Any]] | None = None
        self.encoder = TextEncoder(front.recipe, layers, cfg.device, threads)
        self.layers = layers
        # (run, tables) when the indexes are small enough to search here (ServeConfig.local_index_mb)
        self.local = None if local is None else {
            f"{layer}:{k}": load_index(RunStore(local[0]), layer, k, cfg) for layer, k in local[1]}
        self.batched.set_max_batch_size(cfg.batch_size)
        self.batch_wait_s = cfg.batch_wait_s
        self.in_flight = 0  # POST /v1/concepts requests between their arrival and their answer
        self.batches = {"batches": 0, "requests": 0, "largest": 0, "words": 0, "model_s": 0.0, "index_s": 0.0}
        log_event(log, "model replica ready", pid=os.getpid(), device=str(self.encoder.lm.device),
                  layers=layers, threads=threads)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.01)
    async def batched(self, requests: list[tuple[list[str], list[int], int]]) -> list[dict[int, Lookup]]:
        """Per request (its tokenized texts, layers, K): each asked layer's lookup, in word order."""
        sentences = [s for texts, _, _ in requests for s in texts]
        self.batches["batches"] += 1
        self.batches["requests"] += len(requests)
        self.batches["largest"] = max(self.batches["largest"], len(requests))
        counts = [sum(s.count(" ") + 1 for s in texts) for texts, _, _ in requests]
        self.batches["words"] += sum(counts)
        starts = np.concatenate([[0], np.cumsum(counts)])
        wanted: dict[tuple[int, int], list[int]] = {}  # (layer, k) -> requests asking for it
        for i, (_, layers, k) in enumerate(requests):
            for layer in layers:
                wanted.setdefault((layer, k), []).append(i)
        keys = sorted(wanted)
        rows = {key: np.concatenate([np.arange(starts[i], starts[i + 1]) for i in wanted[key]]) for key in keys}

        def vectors_of(vectors: np.ndarray, layer: int, k: int) -> np.ndarray:
            return vectors[self.layers.index(layer)][rows[(layer, k)]]

        def compute() -> tuple[np.ndarray, list[Lookup] | None, float]:
            vectors = self.encoder.encode(sentences)
            t = time.perf_counter()
            if self.local is None:
                return vectors, None, t
            return vectors, [self.local[f"{layer}:{k}"].lookup(vectors_of(vectors, layer, k)) for layer, k in keys], t

        t0 = time.perf_counter()
        # in a thread: the event loop keeps taking requests and forming the next batch meanwhile
        vectors, found, t1 = await asyncio.to_thread(compute)
        if found is None:
            found = await asyncio.gather(*(self.indexes[f"{layer}:{k}"].lookup.remote(f"{layer}:{k}",
                                                                                       vectors_of(vectors, layer, k))
                                           for layer, k in keys))
        self.batches["model_s"] += t1 - t0
        self.batches["index_s"] += time.perf_counter() - t1
        out: list[dict[int, Lookup]] = [{} for _ in requests]
        for (layer, k), looked_up in zip(keys, found, strict=True):
            at = 0
            for i in wanted[(layer, k)]:
                out[i][layer] = looked_up.take(slice(at, at + counts[i]))
                at += counts[i]
        return out

    def stats(self) -> dict[str, float]:
        """Batches this replica ran, the requests and words in them, the most requests in one, and the
        seconds spent in forward passes and waiting for the indexes; ``pid`` tells the replicas apart."""
        return {**self.batches, "pid": os.getpid()}

    # responses are documented, not validated: the body is built here to the schema, and validating it
    # again cost the 2-core box CPU the model needs
    @api.post("/v1/concepts", responses={200: {"model": schema.ConceptsResponse}, **ERRORS},
              openapi_extra=REQUEST_BODY, summary="The concept of every word of new text, at each asked layer")
    async def concepts(self, request: Request):
        try:
            query, tokenized = self.front.prepare(schema.parse_body(await request.body()))
        except RequestError as exc:
            return error_response(exc)
        # a request alone in the replica runs at once: waiting for others only pays when some are coming
        self.batched.set_batch_wait_timeout_s(self.batch_wait_s if self.in_flight else 0.0)
        self.in_flight += 1
        try:
            found = await self.batched((tokenized, query.layers, query.k))
        finally:
            self.in_flight -= 1
        per_layer = {layer: answers(f, layer, self.labels[f"{layer}:{query.k}"]) for layer, f in found.items()}
        return JSONResponse(self.front.assemble(query, tokenized, per_layer))

    @api.get("/v1/concepts/{layer}/{k}/{id}", response_model=schema.ConceptResponse, responses=ERRORS,
             summary="A concept's label, size, top words and examples")
    async def concept(self, layer: int, k: int, id: int):
        handle = self.indexes.get(f"{layer}:{k}")
        key = f"{layer}:{k}"
        found = await handle.describe.remote(key, id) if handle else None
        if found is None:
            count = None if handle is None else (await handle.info.remote(key))["concepts"]
            return error_response(unknown_concept(layer, k, id, count))
        return found

    @api.get("/v1/run", response_model=schema.RunResponse, responses=ERRORS,
             summary="The run served: model, layers, K, the index of each (layer, K)")
    async def run(self):
        if self.info is None:
            self.info = list(await asyncio.gather(*(h.info.remote(key) for key, h in sorted(self.indexes.items()))))
        return self.front.run_info(self.info)

    @api.get("/healthz", responses=ERRORS, summary="200 while the ingress answers")
    async def healthz(self):
        return {"status": "ok", "run": self.front.run}


#: CPU replicas of the ingress at most, by default: each holds the model and the small indexes.
CPU_REPLICAS_MAX = 8


def model_replicas(cfg: ServeConfig) -> tuple[int, dict[str, Any], int]:
    """(replicas, ray_actor_options, torch threads) of the ingress that holds the model, from the
    resources Ray sees.

    On CPUs the default is many replicas of few threads (up to ``CPU_REPLICAS_MAX``, the CPUs divided
    among them): on the 2-core box two replicas of one thread served 1.3x the words/s of one replica of
    two threads, because a forward pass spread over both cores stalls whenever the HTTP proxy or the
    other replica's event loop takes one of them, while two one-thread passes each go on alone.
    """
    import ray

    resources = ray.cluster_resources() if ray.is_initialized() else {}
    gpus = int(resources.get("GPU", 0)) if cfg.device != "cpu" else 0
    if gpus:
        return cfg.model_replicas or gpus, {"num_gpus": 1, "num_cpus": 1}, 0
    cpus_seen = max(1, int(resources.get("CPU", os.cpu_count() or 1)))
    threads = cfg.cpus_per_replica or (max(1, cpus_seen // cfg.model_replicas) if cfg.model_replicas
                                       else -(-cpus_seen // CPU_REPLICAS_MAX))
    replicas = cfg.model_replicas or max(1, cpus_seen // threads)
    return replicas, {"num_cpus": threads}, threads


def key_digest(cfg: ServeConfig) -> str | None:
    """The SHA-256 of the API key in $api_key_env (None without --api-key-env)."""
    if not cfg.api_key_env:
        return None
    key = os.environ.get(cfg.api_key_env, "")
    if not key:
        raise UserError(f"--api-key-env {cfg.api_key_env}: the environment variable is unset or empty")
    return hashlib.sha256(key.encode()).hexdigest()


def application(run: str, cfg: ServeConfig):
    """The bound Serve application of ``run`` (checks the run first: one line for what it lacks)."""
    store = RunStore(run)
    front = Front.of(store, cfg)
    # what a replica would fail on, said here as one line (no vectors are read)
    plans = {f"{layer}:{k}": index_plan(store, layer, k, cfg) for layer, k in front.tables}
    labels = {key: plan.labels for key, plan in plans.items()}
    dims = int(store.read_manifest().get("model", {}).get("hidden_size", 0))
    small = sum(plan.bytes(dims) for plan in plans.values()) <= cfg.local_index_mb * 2**20
    local = (run, front.tables) if small else None
    replicas, options, threads = model_replicas(cfg)
    light = {"num_cpus": 0}  # the indexes wait on the model; they must not take its cores
    if small:  # the model replicas search; one deployment answers descriptions for every table
        every = Index.options(name="Index", ray_actor_options=light,
                              max_ongoing_requests=cfg.max_ongoing_requests).bind(run, front.tables, cfg)
        indexes = {f"{layer}:{k}": every for layer, k in front.tables}
    else:
        indexes = {f"{layer}:{k}": Index.options(name=f"Index_layer{layer}_k{k}", ray_actor_options=light,
                                                 max_ongoing_requests=cfg.max_ongoing_requests).bind(
                                                     run, [(layer, k)], cfg)
                   for layer, k in front.tables}
    return Concepts.options(num_replicas=replicas, ray_actor_options=options,
                            max_ongoing_requests=cfg.max_ongoing_requests).bind(
        front, front.layers, cfg, indexes, labels, key_digest(cfg), threads, local)


def build(args: dict[str, Any]):
    """The builder ``serve run`` / ``serve deploy`` call with the config YAML's ``args``: ``run`` plus any
    ServeConfig field (host, port and address belong to the Serve config itself there)."""
    args = dict(args)
    run = args.pop("run", None)
    if not run:
        raise UserError("serve config args: run: required (the run directory or object-store URL)")
    return application(str(run), build_config(ServeConfig, args, where="serve config args"))
