"""Shard tasks built on demand from the run store's tables, so the driver never holds them all.

A task carries only what its worker needs (the shard's sentences as one string and each row's
sentence and position); it is made when the shard is handed out, so driver memory stays at the
tables plus the shards in flight, whatever the corpus size.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ..store import RunStore
from .sequences import ShardTask


class ShardTasks:
    def __init__(self, store: RunStore, shard_rows: int):
        tokens = store.read_tokens(["sentence_id", "position"])
        self.sent_ids = tokens.column("sentence_id").to_numpy()
        self.positions = tokens.column("position").to_numpy()
        sentences = store.read_sentences()
        ids = sentences.column("sentence_id").to_numpy()
        # sentence ids are dense 0..S-1 as ingestion writes them; any other numbering goes through an index
        self.row_of = None if np.array_equal(ids, np.arange(len(ids))) else {int(s): i for i, s in enumerate(ids)}
        self.texts = sentences.column("text").combine_chunks()
        self.shard_rows = shard_rows
        self.n_rows = len(self.sent_ids)

    def rows(self, shard: int) -> int:
        return min((shard + 1) * self.shard_rows, self.n_rows) - shard * self.shard_rows

    def task(self, shard: int) -> ShardTask:
        start, stop = shard * self.shard_rows, min((shard + 1) * self.shard_rows, self.n_rows)
        uniq, local = np.unique(self.sent_ids[start:stop], return_inverse=True)
        where = uniq if self.row_of is None else np.asarray([self.row_of[int(s)] for s in uniq])
        text = "\n".join(self.texts.take(pa.array(where)).to_pylist())
        return ShardTask(shard, start, stop, text, local.astype(np.int64),
                         self.positions[start:stop].astype(np.int64))
