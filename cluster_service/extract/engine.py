"""The compute core: batches through the model, subwords pooled to words on the device.

Packed batches (``packing``) reach the model with restarted position ids and a block-diagonal mask
built on the device from one segment id per position (a [B, T, T] mask would be T times the data
to ship).

Pooling happens where the hidden states are (the GPU when there is one), and only the pooled word
vectors of the requested layers ever leave it, once per shard. On a GPU the shard buffer is copied to
pinned host memory on a side stream, so the next shard's forward passes overlap the copy (a
synchronous ``.cpu()`` of every layer cut bert-base from ~1.9M to ~75K tokens/s on an H100).
"""

from __future__ import annotations

import torch

from .model import LoadedModel
from .packing import block_mask
from .prepare import Preparer
from .sequences import Batch, ShardTask


class ShardComputer:
    """Holds a loaded model; turns a ShardTask into a [layers, rows, hidden] float16 tensor."""

    def __init__(self, lm: LoadedModel, layers: list[int], pooling: str, batch_tokens: int, pack_length: int = 64):
        self.lm = lm
        self.layers = layers
        self.pooling = pooling
        self.preparer = Preparer(lm.tokenizer, lm.max_length, batch_tokens, lm.packing, pack_length)
        self.mask_dtype = lm.dtype if lm.additive_mask else None

    def batches(self, task: ShardTask) -> list[Batch]:
        """CPU-only preparation; safe to run in another thread while the model computes."""
        return self.preparer.batches(task)

    def _tensor(self, array):
        # batches prepared in another Ray task arrive as read-only views of the object store
        t = torch.from_numpy(array) if array.flags.writeable else torch.tensor(array)
        if self.lm.device.type == "cuda":
            t = t.pin_memory().to(self.lm.device, non_blocking=True)
        return t

    @torch.inference_mode()
    def forward(self, batch: Batch) -> tuple[torch.Tensor, ...]:
        if batch.segments is None:
            out = self.lm.model(input_ids=self._tensor(batch.ids), attention_mask=self._tensor(batch.mask),
                                output_hidden_states=True)
        else:  # packed: the mask is built where attention runs, from one int per position
            mask = block_mask(self._tensor(batch.segments), self.lm.packing.causal, self.mask_dtype)
            out = self.lm.model(input_ids=self._tensor(batch.ids), attention_mask=mask,
                                position_ids=self._tensor(batch.positions), output_hidden_states=True)
        return out.hidden_states

    @torch.inference_mode()
    def compute(self, task: ShardTask, batches: list[Batch] | None = None) -> torch.Tensor:
        """Every row of the shard at every requested layer, float16, on the model's device."""
        if batches is None:
            batches = self.batches(task)
        n_rows = task.stop - task.start
        hidden = self.lm.hidden_size
        out = torch.empty((len(self.layers), n_rows, hidden), dtype=torch.float16, device=self.lm.device)
        filled = 0
        for batch in batches:
            states = self.forward(batch)
            rows = self._tensor(batch.rows)
            if self.pooling == "mean":
                flat, seg = batch.mean_segments()
                flat_t, seg_t = self._tensor(flat), self._tensor(seg)
                counts = torch.bincount(seg_t, minlength=len(batch.rows)).clamp_min(1).unsqueeze(1)
            else:
                flat_t = self._tensor(batch.first if self.pooling == "first" else batch.last)
            for li, layer in enumerate(self.layers):
                h = states[layer].reshape(-1, hidden).index_select(0, flat_t)
                if self.pooling == "mean":
                    acc = torch.zeros((len(batch.rows), hidden), dtype=torch.float32, device=self.lm.device)
                    h = acc.index_add_(0, seg_t, h.float()) / counts
                out[li].index_copy_(0, rows, h.to(torch.float16))
            filled += len(batch.rows)
        if filled != n_rows:
            raise RuntimeError(f"shard {task.shard}: {n_rows - filled} rows got no vector (internal error)")
        return out
