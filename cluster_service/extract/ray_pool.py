"""Extraction over Ray actors: one per GPU (or CPU workers), the model loaded once per actor.

The driver keeps at most IN_FLIGHT shards in flight per actor and writes
nothing: actors own whole shards and mark them done after the data is durable. An actor that dies
is restarted by Ray (model reloaded) and the calls it held are retried on it; a shard whose queued
write died with the actor has no marker, so after every actor has flushed, the shards still without
one get another round. Shards are idempotent, so at-least-once execution is safe. Each shard is
prepared (tokenized, batched) in a Ray task of its own and reaches its actor as finished batches.

When a whole node is lost, Ray restarts its actors elsewhere, but only where their resources are
free: on a cluster whose every GPU (or CPU) holds an actor, the restart waits for capacity that never
comes, and the calls queued on it with it. So once the other actors have run out of work and an
actor holding shards has not been ALIVE for LOST_S, it is killed for good (no process of it runs, so
nothing of it can still write) and its shards go to the actors left.
"""

from __future__ import annotations

import logging
import os
import time

import ray

from ..logs import log_event
from ..progress import progress_bar
from ..store import RunStore
from .config import ExtractConfig
from .prepare import prepare_shard
from .tasks import ShardTasks
from .writer import done_shards

log = logging.getLogger("cluster_service.extract")
MAX_ATTEMPTS = 4
# shards handed to an actor before it finishes one: one computing, one whose second thread waits for
# the model, and one more whose batches are being prepared meanwhile (with two, the model idled ~30%)
IN_FLIGHT = 4
#: seconds between looks at the actors' states while no result comes back
POLL_S = 5.0
#: an actor not ALIVE (restarting, waiting for a node with free resources) this long while the others
#: have nothing left to do is given up, and its shards are handed to them
LOST_S = 30.0
# no CPU reserved: actors may hold every CPU Ray reports; the driver bounds these to IN_FLIGHT per actor
prepare = ray.remote(num_cpus=0, max_retries=3)(prepare_shard)


def init_ray(address: str = "") -> None:
    """Join ``address`` or start a local Ray bound to loopback."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_ACCEPT_CLUSTER_CONFIG_UNSAFE", "1")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(include_dashboard=False, log_to_driver=True, _node_ip_address="127.0.0.1",
                 runtime_env={"env_vars": {"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
                                           "TOKENIZERS_PARALLELISM": "true"}})


def plan_workers(cfg: ExtractConfig) -> tuple[int, dict]:
    """How many actors and the resources each asks for, from what Ray reports (never hard-coded)."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    cpus = int(resources.get("CPU", 1))
    if gpus and cfg.device != "cpu":
        n = cfg.workers or gpus
        return n, {"num_gpus": 1, "num_cpus": max(1, min(4, cpus // max(n, 1)))}
    n = cfg.workers or 1
    per = cfg.cpus_per_worker or max(1, cpus // n)
    return n, {"num_cpus": per}


def run_ray(store: RunStore, cfg: ExtractConfig, layers: list[int], tasks: ShardTasks, shards: list[int],
            rows: int) -> dict:
    """Run ``tasks`` on actors; returns the steady-state rate (rows after each actor's first shard)."""
    from .worker import ExtractWorker

    init_ray(cfg.address)
    n, resources = plan_workers(cfg)
    threads = int(resources["num_cpus"]) if "num_gpus" not in resources else 0
    actor_cls = ray.remote(ExtractWorker).options(max_restarts=3, max_task_retries=3, max_concurrency=2, **resources)
    actors = [actor_cls.remote(store.where(), cfg, layers, threads) for _ in range(n)]
    log_event(log, "ray workers", actors=n, **resources)
    attempts: dict[int, int] = {}
    todo = list(shards)
    clock = Clock(warm=len(actors))
    with progress_bar(total=rows, desc="extract", unit="tok") as bar:
        while todo:
            actors = _run_round(actors, tasks, todo, attempts, bar, clock, cfg)
            finished = done_shards(store)
            todo = [s for s in todo if s not in finished]
            for s in todo:
                if attempts.get(s, 0) >= MAX_ATTEMPTS:
                    raise RuntimeError(f"shard {s} failed {MAX_ATTEMPTS} times; see the worker logs")
            if todo:
                log_event(log, "retrying shards", level=logging.WARNING, shards=todo)
    timing = worker_timing(actors)
    for a in actors:
        ray.kill(a)
    return {"steady_tokens_per_s": clock.rate(), "worker_timing": timing}


def worker_timing(actors: list) -> list[dict]:
    """Each live actor's time split (see ExtractWorker.stats), logged: the first place to look when
    adding GPUs stops adding throughput."""
    out = []
    for i, actor in enumerate(actors):
        try:
            stats = ray.get(actor.stats.remote(), timeout=30)
        except (ray.exceptions.RayError, TimeoutError):
            continue
        log_event(log, "worker timing", actor=i, **{k: round(v, 2) if isinstance(v, float) else v
                                                   for k, v in stats.items()})
        out.append(stats)
    return out


class Clock:
    """Rows per second after start-up: counted from the moment every actor has finished a shard."""

    def __init__(self, warm: int):
        self.warm = warm
        self.seen = 0
        self.t0: float | None = None
        self.rows = 0

    def tick(self, rows: int) -> None:
        self.seen += 1
        if self.t0 is None:
            if self.seen >= self.warm:
                self.t0 = time.perf_counter()
        else:
            self.rows += rows
            self.t1 = time.perf_counter()

    def rate(self) -> float | None:
        if self.t0 is None or not self.rows:
            return None
        return round(self.rows / (self.t1 - self.t0), 1)


def _run_round(actors: list, tasks: ShardTasks, todo: list[int], attempts: dict[int, int], bar,
               clock: Clock, cfg: ExtractConfig) -> list:
    queue = list(todo)
    inflight: dict = {}  # ref -> (actor index, shard)
    load = [0] * len(actors)
    alive = set(range(len(actors)))
    strikes = [0] * len(actors)

    def submit() -> None:
        for i in sorted(alive, key=lambda j: load[j]):
            while queue and load[i] < IN_FLIGHT:
                shard = queue.pop(0)
                attempts[shard] = attempts.get(shard, 0) + 1
                task = tasks.task(shard)
                # prepared in a task of its own, so the actor's process only drives the model
                batches = prepare.remote(cfg, task)
                inflight[actors[i].process.remote(task.header(), batches)] = (i, shard)
                load[i] += 1

    def give_up_stuck() -> None:
        """Kill actors Ray cannot bring back while the rest idle; requeue what they held."""
        now = time.monotonic()
        holders = {i for i, _ in inflight.values()}
        idle = [j for j in alive if load[j] == 0 and actor_state(actors[j]) == "ALIVE"]
        for i in sorted(holders):
            state = actor_state(actors[i])
            if state in ("ALIVE", None):
                stuck.pop(i, None)
                continue
            since = stuck.setdefault(i, now)
            if queue or not idle or now - since < LOST_S:
                continue
            ray.kill(actors[i], no_restart=True)
            alive.discard(i)
            held = [ref for ref, (j, _) in inflight.items() if j == i]
            shards = [inflight.pop(ref)[1] for ref in held]
            load[i] = 0
            log_event(log, "extraction actor lost", level=logging.WARNING, actor=i, state=state,
                      waited_s=round(now - since, 1), shards=shards)
            for s in shards:
                _requeue(queue, s, attempts)

    stuck: dict[int, float] = {}  # actor index -> when it was first seen not ALIVE
    submit()
    while inflight:
        ready, _ = ray.wait(list(inflight), num_returns=1, timeout=POLL_S)
        if not ready:
            give_up_stuck()
            if not alive:
                raise RuntimeError("every extraction actor died; see the worker logs")
            submit()
            continue
        i, shard = inflight.pop(ready[0])
        load[i] -= 1
        try:
            n_rows = ray.get(ready[0])
            bar.update(n_rows)
            clock.tick(n_rows)
            strikes[i] = 0
        except ray.exceptions.RayError as exc:
            # a killed actor is restarted by Ray and its calls resume; one that keeps failing is dropped
            strikes[i] += 1
            log_event(log, "shard failed", level=logging.WARNING, shard=shard, actor=i,
                      error=type(exc).__name__)
            if strikes[i] > 2 * MAX_ATTEMPTS:
                alive.discard(i)
            _requeue(queue, shard, attempts)
        if not alive:
            raise RuntimeError("every extraction actor died; see the worker logs")
        submit()
    for i in list(alive):
        try:
            ray.get(actors[i].flush.remote())
        except ray.exceptions.RayError as exc:  # its unwritten shards have no marker: next round
            log_event(log, "flush failed", level=logging.WARNING, actor=i, error=type(exc).__name__)
    return [actors[i] for i in sorted(alive)]


def actor_state(actor) -> str | None:
    """Ray's state of ``actor`` (ALIVE, RESTARTING, PENDING_CREATION, DEAD ...), read from the GCS (no
    dashboard needed); None when it cannot be read, which counts as ALIVE: never give up on a guess."""
    try:
        from ray._private.state import actors

        return actors(actor_id=actor._actor_id.hex()).get("State")
    except Exception:  # noqa: BLE001 - a private API: any failure means "unknown"
        return None


def _requeue(queue: list[int], shard: int, attempts: dict[int, int]) -> None:
    if attempts.get(shard, 0) >= MAX_ATTEMPTS:
        raise RuntimeError(f"shard {shard} failed {MAX_ATTEMPTS} times; see the worker logs")
    queue.append(shard)
