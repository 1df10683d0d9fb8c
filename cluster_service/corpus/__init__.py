"""Corpus ingestion: text/JSONL/Parquet (optionally gzipped) → word-tokenized, ConceptX-filtered tables.

``ingest(CorpusConfig(...))`` returns a ``Corpus`` with a sentences table (the model's context) and a
tokens table (the word occurrences kept for extraction, one row each). See ``filters`` for how the
filters follow ConceptX.
"""

from .config import SENTENCES_SCHEMA, TOKENS_SCHEMA, Corpus, CorpusConfig
from .ingest import ingest, sentence_words

__all__ = ["SENTENCES_SCHEMA", "TOKENS_SCHEMA", "Corpus", "CorpusConfig", "ingest", "sentence_words"]
