"""Shard preparation: sentences to subword batches (packed or padded), with the tokenizer only (no weights).

On a GPU the model consumes a shard in tens of milliseconds, and preparing it in the actor's own
process took about half of that process's time, contending for its interpreter lock with the thread
that drives the model. Ray runs therefore prepare shards in separate tasks (``prepare_shard``) and
hand the actor finished batches; the local engine prepares in a thread of its one process.
"""

from __future__ import annotations

import threading

from .config import ExtractConfig
from .packing import Packing, make_packed_batches, packing_for
from .sequences import Batch, ShardTask, WordPieces, build_plan, first_token_id, make_batches, special_tokens


class Preparer:
    """Everything tokenizer-side a shard needs; its word-piece cache grows over the shards it sees."""

    def __init__(self, tokenizer, max_length: int, batch_tokens: int, packing: Packing | None = None,
                 pack_length: int = 64):
        self.max_length = max_length
        self.batch_tokens = batch_tokens
        self.packing = packing if packing is not None and packing.packed else None
        self.pack_length = pack_length
        self.pad_id = first_token_id(tokenizer, "pad_token_id", "eos_token_id", "unk_token_id")
        self.pieces = WordPieces(tokenizer)
        self.prefix, self.suffix = special_tokens(tokenizer)

    def batches(self, task: ShardTask) -> list[Batch]:
        plan = build_plan(task, self.pieces, self.prefix, self.suffix, self.max_length)
        if self.packing is not None:
            return make_packed_batches(plan, self.batch_tokens, self.pack_length, self.pad_id,
                                       self.packing.position_offset)
        return make_batches(plan, self.batch_tokens, self.pad_id)


_cached: dict[tuple, Preparer] = {}
_lock = threading.Lock()


def preparer_for(cfg: ExtractConfig) -> Preparer:
    """One Preparer per process and model settings: Ray reuses worker processes, so the tokenizer is
    loaded once and the word-piece cache stays warm across the shards a process prepares."""
    from .model import load_config_only, load_tokenizer, sequence_limit

    key = (cfg.model, cfg.max_length, cfg.batch_tokens, cfg.packed, cfg.pack_length, cfg.trust_remote_code)
    with _lock:
        if key not in _cached:
            tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
            config = load_config_only(cfg.model, cfg.trust_remote_code)
            limit, _ = sequence_limit(config, tokenizer, cfg.max_length)
            _cached[key] = Preparer(tokenizer, limit, cfg.batch_tokens, packing_for(config, cfg.packed),
                                    cfg.pack_length)
        return _cached[key]


def prepare_shard(cfg: ExtractConfig, task: ShardTask) -> list[Batch]:
    return preparer_for(cfg).batches(task)
