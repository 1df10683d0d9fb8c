"""One extraction worker: the model loaded once, writer threads, and (on a GPU) async host copies.

The same class runs in-process (the local engine) and as a Ray actor (one per GPU). ``process``
returns once a shard is computed and its write is queued, so the model starts the next shard while
writer threads store this one; ``flush`` waits until every queued shard is durable and marked.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

import torch

from ..logs import log_event
from ..store import RunStore
from .config import ExtractConfig
from .engine import ShardComputer
from .model import load_model
from .sequences import Batch, ShardTask
from .writer import ShardSink, ShardWriter

log = logging.getLogger("cluster_service.extract")


class ExtractWorker:
    def __init__(self, run_dir: str, cfg: ExtractConfig, layers: list[int], threads: int = 0,
                 sink: Callable[[RunStore, list[int]], ShardSink] = ShardWriter):
        """``sink`` makes what finished shards go to (the run store's Zarr arrays; a benchmark passes
        one that drops them, to measure the pipeline without storage)."""
        if threads:
            torch.set_num_threads(threads)
        self.cfg = cfg
        self.lm = load_model(cfg.model, cfg.device, cfg.dtype, cfg.max_length, cfg.trust_remote_code, cfg.packed)
        self.computer = ShardComputer(self.lm, layers, cfg.pooling, cfg.batch_tokens, cfg.pack_length)
        self.writer = sink(RunStore(run_dir), layers)
        n_writers = max(1, cfg.writer_threads)
        self.pool = ThreadPoolExecutor(max_workers=n_writers, thread_name_prefix="zarr-writer")
        self.slots = threading.BoundedSemaphore(n_writers + 1)  # shards computed but not yet written
        self.pending: list[Future] = []
        self.model_lock = threading.Lock()
        # the queued writes have a lock of their own: a shard that has left the model must return at
        # once, not wait for the next shard's forward passes (its caller's slot would idle the model)
        self.pending_lock = threading.Lock()
        # where an actor's time goes, so a scaling run can tell CPU preparation from the model from storage
        self.timing = {"shards": 0, "prep_s": 0.0, "model_s": 0.0, "write_wait_s": 0.0}
        self.timing_lock = threading.Lock()
        self.cuda = self.lm.device.type == "cuda"
        if self.cuda:
            self.copy_stream = torch.cuda.Stream(device=self.lm.device)
            self.host_buffers: queue.Queue = queue.Queue()
            for _ in range(n_writers + 1):
                self.host_buffers.put(None)  # allocated lazily at the shard size seen
        log_event(log, "worker ready", pid=os.getpid(), device=str(self.lm.device), dtype=str(self.lm.dtype),
                  forward="packed" if self.lm.packing.packed else "padded")

    def pid(self) -> int:
        return os.getpid()

    def process(self, task: ShardTask, batches: list[Batch] | None = None) -> int:
        """Compute one shard and queue its write; returns the shard's row count.

        ``batches`` are the shard's prepared batches when another process made them (Ray runs);
        otherwise they are prepared here. Thread-safe: preparation runs outside the model lock, so
        with two callers one shard is prepared on the CPU while the other is on the model.
        """
        t0 = time.perf_counter()
        if batches is None:
            batches = self.computer.batches(task)
        t1 = time.perf_counter()
        self.slots.acquire()
        t2 = time.perf_counter()
        try:
            with self.model_lock:
                t3 = time.perf_counter()
                out = self.computer.compute(task, batches)
                host = self._to_host(out) if self.cuda else None
                t4 = time.perf_counter()
            with self.timing_lock:
                self._add(shards=1, prep_s=t1 - t0, write_wait_s=t2 - t1, model_s=t4 - t3)
            if host is not None:
                fut = self.pool.submit(self._write_from_host, task, *host)
            else:
                fut = self.pool.submit(self._write, task, out.numpy())
        except BaseException:
            self.slots.release()
            raise
        fut.add_done_callback(lambda _: self.slots.release())
        with self.pending_lock:
            self.pending.append(fut)
            self._raise_failed()
        return task.stop - task.start

    def process_all(self, tasks: Iterable[ShardTask], progress=None) -> None:
        """Run shards two at a time (one preparing while the other computes), then wait until all
        are durable. Tasks are drawn from ``tasks`` only as slots free up."""
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="shard") as pool:
            running: set[Future] = set()
            for task in tasks:
                running.add(pool.submit(self.process, task))
                if len(running) >= 2:
                    finished, running = wait(running, return_when=FIRST_COMPLETED)
                    self._count(finished, progress)
            self._count(running, progress)
        self.flush()

    def _add(self, **amounts: float) -> None:
        for key, value in amounts.items():
            self.timing[key] += value

    def stats(self, reset: bool = False) -> dict[str, float]:
        """Seconds spent preparing shards on the CPU, holding the model (forward, pooling, launching
        the host copy; GPU work is asynchronous, so this is a lower bound on its time) and waiting for
        a free write slot, summed over shards."""
        with self.timing_lock:
            out = {"pid": os.getpid(), **self.timing}
            if reset:
                self.timing = dict.fromkeys(self.timing, 0)
            return out

    @staticmethod
    def _count(futures, progress) -> None:
        for fut in futures:
            n = fut.result()
            if progress is not None:
                progress.update(n)

    def _to_host(self, out: torch.Tensor):
        buf = self.host_buffers.get()
        if buf is None or buf.numel() < out.numel():
            buf = torch.empty(out.numel(), dtype=torch.float16, pin_memory=True)
        view = buf[: out.numel()].view(out.shape)
        self.copy_stream.wait_stream(torch.cuda.current_stream(self.lm.device))
        with torch.cuda.stream(self.copy_stream):
            view.copy_(out, non_blocking=True)
            out.record_stream(self.copy_stream)  # keep the allocator off it until the copy ends
            done = torch.cuda.Event()
            done.record(self.copy_stream)
        return buf, view, done

    def _write_from_host(self, task: ShardTask, buf, view, done) -> None:
        try:
            done.synchronize()
            self._write(task, view.numpy())
        finally:
            self.host_buffers.put(buf)

    def _write(self, task: ShardTask, data) -> None:
        self.writer.write(task.shard, task.start, task.stop, data)

    def _raise_failed(self) -> None:
        still = []
        for fut in self.pending:
            if fut.done():
                fut.result()  # re-raises a writer's error in the caller
            else:
                still.append(fut)
        self.pending = still

    def flush(self) -> int:
        """Block until every queued shard is written and marked; returns how many were pending."""
        with self.pending_lock:
            pending, self.pending = self.pending, []
        for fut in pending:
            fut.result()
        return len(pending)
