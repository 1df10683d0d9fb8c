"""Padding-free batches: several sentences (or windows) per sequence row, attention kept inside each.

Sorted, padded batches still spend much of a forward pass on padding and per-batch overhead when
sentences are short (most corpus sentences are). Packing lays whole sequences (each with its own
special tokens) side by side in rows of ``pack_length`` subwords, restarts the position ids at every
sequence, and passes the model a block-diagonal 4-D attention mask (causal inside each block for
decoders), so each sequence sees exactly what it would see alone: the vectors equal the padded
path's within float tolerance.

The mask goes through the model's own attention (SDPA, or eager with an additive mask), which
every device supports. Only models whose attention is a function of absolute position ids and a
mask can be packed; the others (XLNet's relative attention, DeBERTa's relative positions, any
unknown architecture) run padded, and run.json records which path ran and why.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

from .sequences import Batch, ShardPlan, group_by_width, padded_width

#: model types known to take restarted position ids and a 4-D mask, and whether they attend causally
PACKABLE: dict[str, bool] = {
    "bert": False, "roberta": False, "xlm-roberta": False, "camembert": False, "albert": False,
    "electra": False, "gpt2": True,
}
#: position ids of these start after the padding index (RoBERTa's create_position_ids_from_input_ids)
POSITIONS_AFTER_PAD = {"roberta", "xlm-roberta", "camembert"}
NOT_PACKABLE_REASONS = {
    "xlnet": "XLNet's relative attention (two-stream, memory) has no block-diagonal form",
    "deberta": "DeBERTa's relative position attention ignores position ids",
    "deberta-v2": "DeBERTa's relative position attention ignores position ids",
}


@dataclass(frozen=True)
class Packing:
    """Which forward path a model runs, decided from its config alone (driver, preparers and workers
    reach the same answer without loading weights)."""

    packed: bool
    reason: str  # why it runs padded; empty when packed
    causal: bool = False
    position_offset: int = 0  # added to every restarted position id

    def record(self, pack_length: int) -> dict:
        """What run.json keeps: the path that ran and, when padded, why."""
        if self.packed:
            return {"path": "packed", "pack_length": pack_length}
        return {"path": "padded", "reason": self.reason}


def packing_for(config, wanted: bool) -> Packing:
    """The path a model of this config runs when packing is ``wanted``."""
    if not wanted:
        return Packing(False, "packing turned off (--no-packed)")
    import transformers

    major = int(transformers.__version__.split(".")[0])
    if major < 5:
        return Packing(False, f"transformers {transformers.__version__}: 4-D masks are taken as-is only from 5.0")
    kind = getattr(config, "model_type", "")
    if kind not in PACKABLE:
        why = NOT_PACKABLE_REASONS.get(kind, "not known to take restarted position ids with a 4-D attention mask")
        return Packing(False, f"{kind or 'this model'}: {why}")
    causal = PACKABLE[kind] or bool(getattr(config, "is_decoder", False))
    offset = int(getattr(config, "pad_token_id", 0) or 0) + 1 if kind in POSITIONS_AFTER_PAD else 0
    return Packing(True, "", causal, offset)


def pack_sequences(lengths: np.ndarray, capacity: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best-fit decreasing: every sequence into the fullest row it still fits in.

    Returns each sequence's row and offset in it, and each row's fill. A sequence longer than
    ``capacity`` gets a row of its own. Deterministic (ties go to the lowest row), so a shard packs
    the same way on every run and a resumed store equals an uninterrupted one.
    """
    n = len(lengths)
    row_of = np.empty(n, dtype=np.int64)
    offset = np.empty(n, dtype=np.int64)
    fills: list[int] = []
    free: list[tuple[int, int]] = []  # (room left, row), sorted
    for s in np.argsort(-lengths, kind="stable").tolist():
        size = int(lengths[s])
        i = bisect.bisect_left(free, (size, -1))
        if i < len(free):
            room, row = free.pop(i)
        else:
            row, room = len(fills), max(capacity, size)
            fills.append(0)
        row_of[s], offset[s] = row, fills[row]
        fills[row] += size
        if room - size > 0:
            bisect.insort(free, (room - size, row))
    return row_of, offset, np.asarray(fills, dtype=np.int64)


def make_packed_batches(plan: ShardPlan, batch_tokens: int, pack_length: int, pad_id: int,
                        position_offset: int = 0) -> list[Batch]:
    """A shard's sequences packed into rows, rows grouped into batches of at most ``batch_tokens``
    positions. Each batch carries position ids and a segment id per position (the sequence's index in
    its row, -1 for padding) from which the device builds the block-diagonal mask."""
    lengths = plan.lengths
    row_of, offset, fills = pack_sequences(lengths, pack_length)
    # each sequence's index within its row, in placement order
    order = np.lexsort((offset, row_of))
    first_of_row = np.searchsorted(row_of[order], np.arange(len(fills)))
    rank = np.empty(len(lengths), dtype=np.int64)
    rank[order] = np.arange(len(order)) - first_of_row[row_of[order]]

    groups = group_by_width(fills, batch_tokens)
    group_of_row = np.empty(len(fills), dtype=np.int64)
    slot_of_row = np.empty(len(fills), dtype=np.int64)
    for g, rows_in in enumerate(groups):
        group_of_row[rows_in] = g
        slot_of_row[rows_in] = np.arange(len(rows_in))
    seq_group = group_of_row[row_of]
    seq_order = np.argsort(seq_group, kind="stable")
    seq_bounds = np.searchsorted(seq_group[seq_order], np.arange(len(groups) + 1))
    word_group = seq_group[plan.row_seq]
    word_order = np.argsort(word_group, kind="stable")
    word_bounds = np.searchsorted(word_group[word_order], np.arange(len(groups) + 1))

    out = []
    for g, rows_in in enumerate(groups):
        width = padded_width(int(fills[rows_in].max()))
        ids = np.full((len(rows_in), width), pad_id, dtype=np.int64)
        positions = np.zeros((len(rows_in), width), dtype=np.int64)
        segments = np.full((len(rows_in), width), -1, dtype=np.int32)
        seqs = seq_order[seq_bounds[g]: seq_bounds[g + 1]]
        lens = lengths[seqs]
        within = np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens)
        slot = np.repeat(slot_of_row[row_of[seqs]], lens)
        col = np.repeat(offset[seqs], lens) + within
        ids[slot, col] = plan.ids[np.repeat(plan.seq_start[seqs], lens) + within]
        positions[slot, col] = within + position_offset
        segments[slot, col] = np.repeat(rank[seqs], lens)
        words = word_order[word_bounds[g]: word_bounds[g + 1]]
        seq_of_word = plan.row_seq[words]
        base = slot_of_row[row_of[seq_of_word]] * width + offset[seq_of_word]
        out.append(Batch(ids, None, words, base + plan.row_a[words], base + plan.row_b[words] - 1,
                         positions, segments))
    return out


def padding_fraction(batches: list[Batch]) -> float:
    """Share of the positions a forward pass computes that hold no subword of any sequence."""
    total = sum(b.ids.size for b in batches)
    real = sum(int((b.segments >= 0).sum()) if b.segments is not None else int(b.mask.sum()) for b in batches)
    return 1 - real / total if total else 0.0


def block_mask(segments, causal: bool, additive_dtype=None):
    """[B, 1, T, T] attention mask from [B, T] segment ids: a position attends to its own sequence
    only (and to earlier positions only, when ``causal``). Padding attends to padding, so no query
    row is empty (an all-masked row would make SDPA return NaN).

    Boolean (True = attend) for SDPA; with ``additive_dtype`` an additive float mask (0 or the
    dtype's minimum) for models on eager attention, which add the mask to the scores.
    """
    import torch

    mask = segments[:, None, :, None] == segments[:, None, None, :]
    if causal:
        t = segments.shape[1]
        mask &= torch.ones((t, t), dtype=torch.bool, device=segments.device).tril()
    if additive_dtype is None:
        return mask
    out = torch.zeros(mask.shape, dtype=additive_dtype, device=segments.device)
    return out.masked_fill_(~mask, torch.finfo(additive_dtype).min)

