"""Configuration of the extract stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..configs import NonNegativeInt, PositiveInt


@dataclass
class ExtractConfig:
    """How activations are computed and stored."""

    model: str = ""
    """Hugging Face model name or local path; empty (or all-MiniLM-L6-v2) means the packaged
    all-MiniLM-L6-v2 (loads offline); random:<shape> an untrained network (random:bert-base-cased,
    random:roberta-base, random:xlm-roberta-base, random:albert-base-v2, random:xlnet-base-cased,
    random:tiny-<arch> ...)."""
    models: list[str] = field(default_factory=list)
    """Several models in one job (`run` only): the whole pipeline once per model, each into a sibling
    run RUN/<model with / and : as _>/, all sharing one ingestion; an error together with model."""
    parallel_models: NonNegativeInt = 1
    """Models whose pipelines run at the same time (`run --models` only; 0 = all of them). Above 1
    the job joins Ray first (--address, or a local Ray) and Ray schedules the models' extraction
    actors and clustering tasks side by side over the cluster's GPUs/CPUs; unless --workers /
    --cpus-per-worker say otherwise, each model then asks for its share (GPUs or CPUs ÷ N)."""
    keep_activations: Literal["all", "clustered-layers", "none"] = "all"
    """Storage budget (`run` only): once a run's pipeline is done, keep every layer's activations
    (all), only the clustered layers' (clustered-layers) or none; done-markers stay, a rerun with the
    same budget skips the freed run, and a rerun with --keep-activations all re-extracts them."""
    layers: list[int] = field(default_factory=list)
    """Layers to store, 0 = embeddings as in hidden_states; empty or 'all' means every layer."""
    pooling: Literal["first", "last", "mean"] = "last"
    """How a word's subword vectors become one vector: first, last (NeuroX's default) or mean."""
    batch_tokens: PositiveInt = 16384
    """Subword positions (padding included) per forward batch; sequences are sorted by length to limit padding."""
    packed: bool = True
    """Pack several sentences (or windows) into each sequence row, position ids restarting per sentence
    and attention kept inside each sentence (a block-diagonal mask, causal within a sentence for
    decoders), so almost no compute goes to padding; vectors equal the padded path's within float16
    tolerance. Models whose attention cannot be packed (XLNet, DeBERTa) run padded; run.json's
    `forward` says which path ran. --no-packed pads every sequence to its batch's longest."""
    pack_length: PositiveInt = 64
    """Subword positions per packed row (a sequence longer than this gets a row of its own). Attention
    costs grow with the row: on a 2-core CPU (MiniLM) 64 ran 1.5x the padded path's forward passes and
    128 or 256 slower than it; GPUs may gain from longer rows (bench_extract.py --pack-lengths)."""
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
