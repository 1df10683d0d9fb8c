"""The concept service's one config: every field is a `cluster-service serve` flag (and a key of the
``[serve]`` section of a config file, or of the application's ``args`` in a Serve config YAML)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from ..configs import NonNegativeInt, PositiveInt, Range


@dataclass
class ServeConfig:
    """New text in, the run's concept of each of its words out: which concepts are served, how they are
    looked up, the limits a request must keep, and where the HTTP API listens."""

    layers: list[NonNegativeInt] = field(default_factory=list)
    """Layers to serve (comma-separated); empty means every layer clustered at the served Ks."""
    k: list[PositiveInt] = field(default_factory=list)
    """Numbers of concepts to serve (comma-separated); empty means every K the run has a concept table of.
    A request that names no K gets the largest."""
    index: Literal["auto", "knn", "micro", "centroid"] = "auto"
    """How a vector finds its concept: knn = FAISS search over the run's stored token vectors and a vote
    of the nearest neighbours' concepts (confidence = the winner's vote share); micro = the nearest
    micro-centroid of the clustering, then its concept; centroid = the nearest concept centroid (needs
    only the concept table; on held-out words it agreed best with a clustering that included them,
    see benchmarks/results/serve.json); auto = knn up to --knn-max tokens per layer, micro above (a
    5M x 768 layer of vectors is 7.7 GB per index) or when the activations were freed."""
    neighbors: PositiveInt = 5
    """Neighbours that vote in the knn index (on MiniLM's layer 0, fewer agreed better with a clustering
    that included held-out words: 1 > 5 > 10; at layer 3 it made little difference)."""
    match_tolerance: Annotated[float, Range(min=0.0, max=1.0)] = 0.01
    """A vector this close to a stored token's (relative to its norm) is that token, in the concept the
    run gave it (knn index; float16 storage and packing move a recomputed vector by ~1e-3 of its norm)."""
    knn_max: PositiveInt = 100_000
    """With --index auto, layers with more tokens than this use the micro-centroid index."""
    index_threads: NonNegativeInt = 1
    """OpenMP threads of FAISS searches in the process that holds an index (0: FAISS's default, every
    core). After a search OpenMP threads spin-wait for a while; beside the model on the 2-core box they
    took its cores and made each request of the in-process path 4.8x slower (0.57 s vs 0.12 s)."""
    local_index_mb: NonNegativeInt = 256
    """When the served indexes' vectors take at most this many MB together, each model replica loads them
    too and searches them itself, instead of one call per (layer, K) deployment per batch (on the 2-core
    box those calls took longer than the forward passes); 0 = always call the Index deployments, which
    hold one (layer, K) each and scale on their own."""
    annotator: str = ""
    """Labels of this annotator (labels/layer_L_kK/<name>.parquet); empty means each table's default."""
    max_words: Annotated[int, Range(min=1, max=100_000)] = 512
    """Words a request may hold in all its texts together (after word tokenization); more is a 413."""
    max_chars: Annotated[int, Range(min=1, max=10_000_000)] = 20_000
    """Characters a request's texts may hold together; more is a 413 before any tokenization."""
    max_texts: Annotated[int, Range(min=1, max=10_000)] = 64
    """Texts one request may send as a list."""
    batch_size: PositiveInt = 64
    """Requests the model replica joins into one forward pass at most (Serve's dynamic batching)."""
    batch_wait_s: Annotated[float, Range(min=0.0, max=10.0)] = 0.1
    """Seconds the model replica waits for more requests before it runs a batch that is not full. Long
    against a forward pass on purpose: on the 2-core box requests reach the replica one by one while it
    computes, and at 64 clients 0.01 s gave batches of 1.2 requests (464 words/s, p99 3.3 s), 0.05 s
    of 4 (710, 2.0 s), 0.15 s of 10.6 (836, 1.8 s); one client pays the wait in its latency."""
    model_replicas: NonNegativeInt = 0
    """Replicas of the ingress that holds the model; 0 = one per GPU Ray sees, or without GPUs as many
    CPU replicas as the CPUs Ray sees allow at --cpus-per-replica each (8 at most)."""
    cpus_per_replica: NonNegativeInt = 0
    """Torch threads (and Ray CPUs) of a CPU model replica; 0 = the CPUs Ray sees divided among the
    replicas (one each up to 8 CPUs: several one-thread replicas outserve one replica of many threads)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the model runs; auto picks CUDA when the replica has a GPU."""
    host: str = "127.0.0.1"
    """Address the HTTP API binds to; anything but loopback exposes the API to the network (use
    --api-key-env then)."""
    port: Annotated[int, Range(min=1, max=65535)] = 8000
    """TCP port of the HTTP API."""
    address: str = ""
    """Ray cluster to deploy on ('auto' or host:port); empty starts a local Ray."""
    api_key_env: str = ""
    """Name of an environment variable that holds an API key: every request must then send
    'Authorization: Bearer <key>' (401 otherwise). No default; the key itself is never logged."""
    app_name: str = "concepts"
    """Name of the Serve application (`serve status` lists it under this name)."""
    route_prefix: str = "/"
    """URL prefix the API is mounted at."""
    access_log: bool = False
    """Serve's access log: a line per request in every replica it passes (the proxy, the ingress, the
    model, each index). Off by default: on a 2-core box the lines cost CPU the model needs."""
    max_ongoing_requests: PositiveInt = 256
    """Requests a replica accepts at once; more wait in Serve's queue."""

