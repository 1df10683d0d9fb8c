"""Corpus ingestion: text/JSONL/Parquet (optionally gzipped) → word-tokenized, ConceptX-filtered tables.

``ingest(CorpusConfig(...))`` returns a ``Corpus`` with a sentences table (the model's context) and a
tokens table (the word occurrences kept for extraction, one row each). See ``filters`` for how the
filters follow ConceptX.
"""

from ..stage import Stage
from .config import SENTENCES_SCHEMA, TOKENS_SCHEMA, Corpus, CorpusConfig
from .ingest import ingest, sentence_words

STAGE = Stage(
    name="ingest", config=CorpusConfig, section="corpus",
    reads=("the corpus file ([corpus] path; the demo corpus when empty)",),
    writes=("sentences.parquet", "tokens.parquet", "run.json: config.corpus, tokens, sentences, corpus_fingerprint"),
    entry="cluster_service.corpus.stage:ingest_run",
)

__all__ = ["SENTENCES_SCHEMA", "STAGE", "TOKENS_SCHEMA", "Corpus", "CorpusConfig", "ingest", "sentence_words"]
