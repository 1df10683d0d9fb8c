"""Corpus ingestion throughput: the demo corpus end to end, and Moses tokenization by worker count.

Modes: ``ingest_demo`` (the 42.5K WordNet sentences, default config, read → tokens table),
``tokenize`` (Moses over a larger corpus made of seeded pairs of demo sentences, by pool size),
``ingest_large`` (that larger corpus written to a file and ingested with the default pool choice),
``ingest_large_whitespace`` (the same file with the whitespace tokenizer, which never uses the pool).
Prints a table and merges rows into ``benchmarks/results/corpus.json`` (../shared/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_io import merge_rows, print_table  # noqa: E402

from cluster_service.corpus import CorpusConfig, ingest  # noqa: E402
from cluster_service.corpus.filters import word_counts  # noqa: E402
from cluster_service.corpus.tokenize import chunked, tokenize_chunks  # noqa: E402
from cluster_service.demo import fetch_demo_corpus  # noqa: E402


def larger_corpus(lines: list[str], n: int, seed: int = 0) -> list[str]:
    """``n`` sentences of ~16 words, each two demo sentences joined: real English, few duplicates."""
    rng = random.Random(seed)
    return [f"{rng.choice(lines)} ; {rng.choice(lines)}" for _ in range(n)]


def row(machine: str, mode: str, workers: int | str, sentences: int, words: int, seconds: float,
        data: str) -> dict:
    return {"machine": machine, "mode": mode, "workers": workers, "sentences": sentences, "words": words,
            "seconds": round(seconds, 2), "sentences_per_s": round(sentences / seconds),
            "words_per_s": round(words / seconds), "data": data,
            # other jobs share the box: a 1-minute load above the core count slows every row
            "load_avg_1m": round(os.getloadavg()[0], 1), "cpus": os.cpu_count()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--machine", default="2-core CPU box")
    parser.add_argument("--sentences", type=int, default=200_000, help="size of the larger corpus")
    parser.add_argument("--workers", default="1,2", help="pool sizes for the tokenize mode")
    parser.add_argument("--no-save", action="store_true", help="print only")
    args = parser.parse_args()

    demo = fetch_demo_corpus()
    lines = [line for line in demo.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = []

    started = time.perf_counter()
    corpus = ingest(CorpusConfig(path=str(demo)))
    rows.append(row(args.machine, "ingest_demo", "auto", corpus.sentences.num_rows, corpus.tokens.num_rows,
                    time.perf_counter() - started, "real:wordnet_examples"))

    big = larger_corpus(lines, args.sentences)
    for workers in (int(w) for w in args.workers.split(",")):
        started = time.perf_counter()
        out = list(tokenize_chunks(chunked(big), "moses", False, workers=workers))
        seconds = time.perf_counter() - started
        words = int(sum(word_counts(a).sum() for a in out))
        rows.append(row(args.machine, "tokenize", workers, len(big), words, seconds,
                        "real:wordnet_examples pairs"))

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "large.txt"
        path.write_text("\n".join(big) + "\n", encoding="utf-8")
        started = time.perf_counter()
        corpus = ingest(CorpusConfig(path=str(path)))
        rows.append(row(args.machine, "ingest_large", "auto", corpus.sentences.num_rows,
                        corpus.tokens.num_rows, time.perf_counter() - started, "real:wordnet_examples pairs"))
        started = time.perf_counter()  # pre-tokenized input: split on whitespace, in-process
        corpus = ingest(CorpusConfig(path=str(path), tokenizer="whitespace"))
        rows.append(row(args.machine, "ingest_large_whitespace", "in-process", corpus.sentences.num_rows,
                        corpus.tokens.num_rows, time.perf_counter() - started, "real:wordnet_examples pairs"))

    print_table(rows, ["machine", "mode", "workers", "sentences", "words", "seconds", "sentences_per_s",
                       "words_per_s"])
    if not args.no_save:
        print(merge_rows("corpus", rows, ("mode", "workers", "sentences")))


if __name__ == "__main__":
    main()
