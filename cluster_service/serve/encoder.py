"""New text to word vectors by the run's own recipe: words as ingest split them, vectors as extract
computed them.

Nothing here re-implements a step: word tokenization is ``corpus.tokenize.tokenize_texts`` with the
run's recorded ``[corpus]`` tokenizer and lowercasing, and the vectors come from the extract stage's
``ShardComputer`` (same subword pieces, special tokens, windows for long texts, packing and pooling)
over a ``ShardTask`` that holds every word of the request's texts, so a corpus sentence sent to the
service gets the vectors the run stored (within float16 rounding).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..corpus.tokenize import tokenize_texts
from ..errors import UserError
from ..extract.config import ExtractConfig
from ..extract.sequences import ShardTask
from ..store import RunStore


@dataclass(frozen=True)
class Recipe:
    """What a run recorded about how it made its words and vectors (run.json's configs), picklable so
    that every replica builds the same encoder."""

    tokenizer: str
    lowercase: bool
    extract: dict[str, Any]
    model_name: str
    stored_layers: tuple[int, ...]

    @classmethod
    def of(cls, store: RunStore) -> Recipe:
        if not store.exists():
            raise UserError(f"{store.where()}: no run store here")
        manifest = store.read_manifest()
        config = manifest.get("config", {})
        if "extract" not in config or "corpus" not in config:
            missing = "extract" if "corpus" in config else "corpus"
            raise UserError(f"{store.where('run.json')}: config.{missing} missing: the run was not "
                            f"{'extracted' if missing == 'extract' else 'ingested'} here, so new text cannot "
                            "be made into vectors the same way (imported runs have no model)")
        corpus = config["corpus"]
        return cls(tokenizer=corpus.get("tokenizer", "moses"), lowercase=bool(corpus.get("lowercase", False)),
                   extract=config["extract"], model_name=manifest.get("model", {}).get("name", ""),
                   stored_layers=tuple(manifest.get("layers", [])))

    def extract_config(self, device: str = "auto") -> ExtractConfig:
        """The run's extract config (the fields a run records; runtime fields at their defaults)."""
        known = {f.name for f in dataclasses.fields(ExtractConfig)}
        fields = {k: v for k, v in self.extract.items() if k in known}
        return ExtractConfig(**{**fields, "device": device, "engine": "local"})

    def words(self, texts: list[str]) -> list[str]:
        """Each text word-tokenized as ingest does it: words joined by single spaces ('' if none)."""
        return tokenize_texts(texts, self.tokenizer, self.lowercase).to_pylist()


def words_task(sentences: list[str]) -> ShardTask:
    """A shard of every word of these tokenized sentences (none empty), in order."""
    counts = np.fromiter((s.count(" ") + 1 for s in sentences), dtype=np.int64, count=len(sentences))
    n = int(counts.sum())
    row_sentence = np.repeat(np.arange(len(sentences), dtype=np.int64), counts)
    row_position = np.arange(n, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    return ShardTask(0, 0, n, "\n".join(sentences), row_sentence, row_position)


class TextEncoder:
    """The run's model, loaded once, computing the requested layers of words the way extract does."""

    def __init__(self, recipe: Recipe, layers: list[int], device: str = "auto", threads: int = 0):
        import torch

        from ..extract.engine import ShardComputer
        from ..extract.model import load_model

        if threads:
            torch.set_num_threads(threads)
        cfg = recipe.extract_config(device)
        self.layers = list(layers)
        self.lm = load_model(cfg.model, cfg.device, cfg.dtype, cfg.max_length, cfg.trust_remote_code, cfg.packed)
        self.computer = ShardComputer(self.lm, self.layers, cfg.pooling, cfg.batch_tokens, cfg.pack_length)

    @property
    def hidden_size(self) -> int:
        return self.lm.hidden_size

    def encode(self, sentences: list[str]) -> np.ndarray:
        """float16 [len(layers), words, hidden] for the words of these tokenized sentences, in order."""
        if not sentences:
            return np.zeros((len(self.layers), 0, self.lm.hidden_size), dtype=np.float16)
        return self.computer.compute(words_task(sentences)).cpu().numpy()
