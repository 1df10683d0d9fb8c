"""Ingestion: read → sample → tokenize → length filter → frequency / occurrence filters → tables."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
from tqdm import tqdm

from ..errors import UserError
from ..logs import log_event
from . import readers
from .config import Corpus, CorpusConfig
from .filters import drop_long_and_empty, reservoir_sample, select_tokens
from .tokenize import chunked, tokenize_chunks, tokenizer_version

logger = logging.getLogger("cluster_service.corpus")

#: Bump when a change to this package changes the tables for the same input and config.
TABLES_VERSION = 1


def corpus_path(cfg: CorpusConfig) -> Path:
    if cfg.path:
        return Path(cfg.path).expanduser()
    from ..demo import fetch_demo_corpus

    return fetch_demo_corpus()


def fingerprint(file_digest: str, cfg: CorpusConfig, fmt: str) -> str:
    """The path is left out: the same bytes read from another place give the same tables."""
    shaping = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "path"}
    shaping.update(format=fmt, tokenizer_version=tokenizer_version(cfg.tokenizer), tables=TABLES_VERSION)
    digest = hashlib.sha256(file_digest.encode())
    digest.update(json.dumps(shaping, sort_keys=True).encode())
    return digest.hexdigest()


def _sentence_stream(path: Path, cfg: CorpusConfig, fmt: str, counts: dict[str, int]) -> Iterator[str]:
    """Non-empty raw sentences, sampled when asked; ``counts`` learns how many lines there were."""
    def nonempty() -> Iterator[str]:
        for text in readers.read_sentences(path, fmt, cfg.field):
            if text.strip():
                counts["lines"] += 1
                yield text

    if cfg.max_sentences <= 0:
        return nonempty()
    sample, _ = reservoir_sample(nonempty(), cfg.max_sentences, cfg.seed)
    return iter(sample)


def ingest(cfg: CorpusConfig) -> Corpus:
    """Read, tokenize and filter a corpus into the sentences and tokens tables (deterministic)."""
    started = time.perf_counter()
    path = corpus_path(cfg)
    readers.check_file(path)
    fmt = readers.resolve_format(path, cfg.format)
    counts = {"lines": 0}
    kept: list[pa.Array] = []
    empty = long = 0
    with tqdm(desc="tokenize", unit="sent", disable=None) as bar:
        stream = _sentence_stream(path, cfg, fmt, counts)
        for tokenized in tokenize_chunks(chunked(stream), cfg.tokenizer, cfg.lowercase):
            texts, n_empty, n_long = drop_long_and_empty(tokenized, cfg.max_sentence_words)
            kept.append(texts)
            empty += n_empty
            long += n_long
            bar.update(len(tokenized))
    sampled = counts["lines"] if cfg.max_sentences <= 0 else min(cfg.max_sentences, counts["lines"])
    if counts["lines"] == 0:
        raise UserError(f"{path}: empty corpus: no non-empty sentence in the file"
                        + (f" (field '{cfg.field}')" if fmt != "text" else ""))
    texts = pa.concat_arrays(kept) if kept else pa.array([], pa.string())
    if len(texts) == 0:
        if long:
            raise UserError(f"{path}: empty corpus after filters: all {long} sentences are longer than "
                            f"max_sentence_words={cfg.max_sentence_words}"
                            + (f" ({empty} more had no word after tokenization)" if empty else ""))
        raise UserError(f"{path}: empty corpus: none of the {sampled} sentences has a word after "
                        f"{cfg.tokenizer} tokenization")
    sentences, tokens, stats = select_tokens(texts, cfg.min_word_freq, cfg.max_occurrences)
    if tokens.num_rows == 0:
        word, count = stats.most_frequent or ("", 0)
        raise UserError(f"{path}: empty corpus after filters: no word type occurs at least "
                        f"min_word_freq={cfg.min_word_freq} times in {stats.sentences_in} sentences "
                        f"(most frequent: '{word}' {count} times)")
    result = Corpus(sentences=sentences, tokens=tokens,
                    fingerprint=fingerprint(readers.file_sha256(path), cfg, fmt))
    log_event(logger, "corpus ingested", path=str(path), format=fmt, lines=counts["lines"],
              sampled=sampled, empty_after_tokenization=empty, too_long=long,
              sentences=sentences.num_rows, tokens_seen=stats.tokens_in, tokens=tokens.num_rows,
              types=stats.types_in, types_below_min_freq=stats.types_below_min_freq,
              tokens_over_max_occurrences=stats.tokens_over_max_occurrences,
              seconds=round(time.perf_counter() - started, 2))
    return result


def sentence_words(sentences: pa.Table) -> list[list[str]]:
    """The words of each sentence, in table order; ``position`` in the tokens table indexes these."""
    return [text.split(" ") for text in sentences.column("text").to_pylist()]
