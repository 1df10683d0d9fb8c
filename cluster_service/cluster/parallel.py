"""FAISS-path assignment of every token, shard by shard: in this process, or as Ray tasks (one per shard).

Ray tasks read their own shard from the store (memory bounded by the shard size); the driver keeps
a bounded window of tasks in flight and folds results in shard order, so both paths agree bit for bit.
"""

from __future__ import annotations

from collections import deque

import numpy as np
from tqdm import tqdm

from ..store import shard_ranges
from .micro import Accumulator, ShardStats, assign_shard
from .source import Source


def assign_all(source: Source, centroids: np.ndarray, *, where: str, use_ray: bool = False,
               workers: int = 0, progress: bool = True) -> Accumulator:
    """Assign all rows of ``source`` to ``centroids`` (NumPy); Ray must be initialised when ``use_ray``."""
    acc = Accumulator(source.n, len(centroids), source.d)
    ranges = shard_ranges(source.n, source.shard)
    bar = tqdm(total=len(ranges), desc=f"assign {where}", unit="shard", disable=not progress)
    if not use_ray:
        for lo, hi in ranges:
            acc.add(lo, assign_shard(source, lo, hi, centroids, where))
            bar.update()
    else:
        import ray

        task = ray.remote(num_cpus=1)(assign_shard)
        cref = ray.put(centroids)
        window = max(1, workers or int(ray.available_resources().get("CPU", 1))) + 1
        pending: deque = deque()
        todo = iter(ranges)
        for lo, hi in todo:
            pending.append((lo, task.remote(source, lo, hi, cref, where)))
            if len(pending) >= window:
                first_lo, ref = pending.popleft()
                acc.add(first_lo, _get(ref))
                bar.update()
        while pending:
            first_lo, ref = pending.popleft()
            acc.add(first_lo, _get(ref))
            bar.update()
    bar.close()
    return acc


def _get(ref) -> ShardStats:
    """Fetch a task result, turning a user error raised in a worker back into itself."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = exc.as_instanceof_cause()
        raise getattr(cause, "cause", None) or cause from None
