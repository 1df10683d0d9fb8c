"""Configuration of the extract stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..configs import NonNegativeInt, PositiveInt


@dataclass
class ExtractConfig:
    """How activations are computed and stored."""

    model: str = ""
    """Hugging Face model name or local path; empty means the packaged all-MiniLM-L6-v2 (loads offline)."""
    layers: list[int] = field(default_factory=list)
    """Layers to store, 0 = embeddings as in hidden_states; empty or 'all' means every layer."""
    pooling: Literal["first", "last", "mean"] = "last"
    """How a word's subword vectors become one vector: first, last (NeuroX's default) or mean."""
    batch_tokens: PositiveInt = 16384
    """Padded subword tokens per forward batch; sequences are sorted by length to limit padding."""
    max_length: NonNegativeInt = 0
    """Longest subword sequence per forward pass, specials included; 0 = the model's maximum. Longer
    sentences are split into overlapping windows, never truncated."""
    shard_rows: PositiveInt = 16384
    """Rows (word occurrences) per Zarr shard: the unit of work, resume and ownership."""
    chunk_rows: PositiveInt = 1024
    """Rows per Zarr chunk inside a shard (the unit a reader fetches)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the model runs; auto picks CUDA when present."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Compute dtype; auto = bfloat16 on GPUs that support it, float32 on CPU. Vectors are stored as float16."""
    engine: Literal["ray", "local"] = "ray"
    """ray: one actor per GPU (or CPU workers) that loads the model once; local: one process, for debugging."""
    workers: NonNegativeInt = 0
    """Ray actors; 0 = one per GPU Ray sees, or one CPU actor when there is no GPU."""
    cpus_per_worker: NonNegativeInt = 0
    """CPU cores per CPU actor (torch threads); 0 = all cores Ray sees divided among the CPU actors."""
    writer_threads: PositiveInt = 2
    """Threads per worker that write finished shards to Zarr while the model computes the next."""
    address: str = ""
    """Ray cluster address to join ('auto' or host:port); empty starts a local Ray."""
    trust_remote_code: bool = False
    """Allow model repositories that ship their own modelling code."""
