"""The compute core: batches through the model, subwords pooled to words on the device.

Pooling happens where the hidden states are (the GPU when there is one), and only the pooled word
vectors of the requested layers ever leave it, once per shard. On a GPU the shard buffer is copied to
pinned host memory on a side stream, so the next shard's forward passes overlap the copy (a
synchronous ``.cpu()`` of every layer cut bert-base from ~1.9M to ~75K tokens/s on an H100).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from .model import LoadedModel
from .sequences import Sequence, ShardTask, build_sequences, make_batches


def _pad_id(tokenizer) -> int:
    for cand in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id):
        if cand is not None:
            return int(cand)
    return 0


def collate(batch: list[Sequence], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(s.ids) for s in batch)
    ids = np.full((len(batch), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(batch), width), dtype=np.int64)
    for i, s in enumerate(batch):
        ids[i, : len(s.ids)] = s.ids
        mask[i, : len(s.ids)] = 1
    return ids, mask


def pool_indices(batch: list[Sequence], width: int, pooling: str):
    """Flat subword indices into [B*T] and the output row each pooled vector goes to."""
    rows = np.concatenate([s.out_rows for s in batch])
    if pooling in ("first", "last"):
        flat = []
        for b, s in enumerate(batch):
            pos = s.span_start if pooling == "first" else s.span_stop - 1
            flat.append(b * width + pos)
        return np.concatenate(flat), None, rows
    # mean: every subword of every emitted word, with the index of the word it belongs to
    flat, seg = [], []
    word = 0
    for b, s in enumerate(batch):
        for a, z in zip(s.span_start.tolist(), s.span_stop.tolist(), strict=True):
            flat.append(np.arange(b * width + a, b * width + z))
            seg.append(np.full(z - a, word))
            word += 1
    return np.concatenate(flat), np.concatenate(seg), rows


class ShardComputer:
    """Holds a loaded model; turns a ShardTask into a [layers, rows, hidden] float16 tensor."""

    def __init__(self, lm: LoadedModel, layers: list[int], pooling: str, batch_tokens: int):
        self.lm = lm
        self.layers = layers
        self.pooling = pooling
        self.batch_tokens = batch_tokens
        self.pad_id = _pad_id(lm.tokenizer)

    def batches(self, task: ShardTask) -> Iterator[list[Sequence]]:
        seqs = build_sequences(task, self.lm.tokenizer, self.lm.max_length)
        yield from make_batches(seqs, self.batch_tokens)

    @torch.inference_mode()
    def forward(self, batch: list[Sequence]) -> tuple[tuple[torch.Tensor, ...], int]:
        ids, mask = collate(batch, self.pad_id)
        dev = self.lm.device
        out = self.lm.model(input_ids=torch.from_numpy(ids).to(dev, non_blocking=True),
                            attention_mask=torch.from_numpy(mask).to(dev, non_blocking=True),
                            output_hidden_states=True)
        return out.hidden_states, ids.shape[1]

    @torch.inference_mode()
    def compute(self, task: ShardTask, out: torch.Tensor | None = None) -> torch.Tensor:
        """Every row of the shard at every requested layer, float16, on the model's device."""
        n_rows = task.stop - task.start
        hidden = self.lm.hidden_size
        if out is None:
            out = torch.empty((len(self.layers), n_rows, hidden), dtype=torch.float16, device=self.lm.device)
        filled = np.zeros(n_rows, dtype=bool)
        for batch in self.batches(task):
            states, width = self.forward(batch)
            flat, seg, rows = pool_indices(batch, width, self.pooling)
            flat_t = torch.from_numpy(flat).to(self.lm.device)
            rows_t = torch.from_numpy(rows).to(self.lm.device)
            for li, layer in enumerate(self.layers):
                h = states[layer].reshape(-1, hidden).index_select(0, flat_t)
                if seg is not None:
                    seg_t = torch.from_numpy(seg).to(self.lm.device)
                    acc = torch.zeros((len(rows), hidden), dtype=torch.float32, device=self.lm.device)
                    acc.index_add_(0, seg_t, h.float())
                    counts = torch.bincount(seg_t, minlength=len(rows)).clamp_min(1).unsqueeze(1)
                    h = acc / counts
                out[li].index_copy_(0, rows_t, h.to(torch.float16))
            filled[rows] = True
        if not filled.all():
            missing = int((~filled).sum())
            raise RuntimeError(f"shard {task.shard}: {missing} rows got no vector (internal error)")
        return out
