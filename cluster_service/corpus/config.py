"""The corpus stage's config and its output: what the user asks for and what every later stage reads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pyarrow as pa

from ..configs import NonNegativeInt


@dataclass
class CorpusConfig:
    """Corpus ingestion: reading, word tokenization and ConceptX-style filters."""

    path: str = ""
    """Corpus file (.txt, .jsonl or .parquet, each optionally .gz); empty means the WordNet demo corpus."""
    format: Literal["auto", "text", "jsonl", "parquet"] = "auto"
    """File format; auto picks it from the suffix (.txt/.jsonl/.parquet, optionally followed by .gz)."""
    field: str = "text"
    """JSONL field or Parquet column that holds the sentence."""
    tokenizer: Literal["moses", "whitespace"] = "moses"
    """Word tokenizer: moses (sacremoses, English, no escaping, as ConceptX) or whitespace for
    pre-tokenized input."""
    lowercase: bool = False
    """Lowercase words after tokenization (the model then sees lowercased sentences too)."""
    min_word_freq: NonNegativeInt = 1
    """Keep only word types seen at least this often in the sampled, length-filtered corpus (ConceptX: 10)."""
    max_occurrences: NonNegativeInt = 0
    """Keep at most this many occurrences of each word type, the first ones in corpus order;
    0 keeps all (ConceptX: 10)."""
    max_sentence_words: NonNegativeInt = 0
    """Drop sentences with more words than this (after tokenization); 0 keeps all."""
    max_sentences: NonNegativeInt = 0
    """Seeded uniform sample of this many non-empty sentences, kept in file order, drawn before the
    length filter; 0 reads all."""
    seed: NonNegativeInt = 0
    """Seed of the sentence sample."""


#: sentences.parquet: the model's context, one row per sentence that keeps at least one token.
SENTENCES_SCHEMA = pa.schema([("sentence_id", pa.int64()), ("text", pa.string())])

#: tokens.parquet: one row per stored word occurrence (the rows of every activation array).
TOKENS_SCHEMA = pa.schema(
    [
        ("row", pa.int64()),
        ("sentence_id", pa.int64()),
        ("position", pa.int32()),
        ("word", pa.string()),
        ("occurrence", pa.int32()),
    ]
)


@dataclass
class Corpus:
    """Ingested corpus: sentences (context) and the word occurrences kept for extraction."""

    sentences: pa.Table
    """sentence_id int64 (dense 0..S-1), text string (tokenized words joined by single spaces)."""
    tokens: pa.Table
    """row int64 (0..N-1), sentence_id, position int32 (word index in the sentence), word,
    occurrence int32 (1-based running count of the word type, ConceptX's key)."""
    fingerprint: str
    """sha256 over the input file's bytes and the config fields that shape the tables."""
