"""Corpus ingestion: readers for every format, tokenizers, ConceptX filters, determinism, bad input."""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster_service.configs import add_dataclass_arguments, build, field_docs
from cluster_service.corpus import SENTENCES_SCHEMA, TOKENS_SCHEMA, CorpusConfig, ingest, sentence_words
from cluster_service.corpus.filters import reservoir_sample
from cluster_service.corpus.tokenize import chunked, tokenize_chunks
from cluster_service.errors import UserError

SENTENCES = [
    "The cat sat on the mat.",
    "",
    "A dog doesn't like the cat, and the cat knows it.",
    "   ",
    "The mat is red.",
    "Birds fly south in the winter; the cat watches them.",
]
NON_EMPTY = [s for s in SENTENCES if s.strip()]


def write_corpus(path: Path, lines: list[str], fmt: str, field: str = "text") -> Path:
    """Write ``lines`` as text / jsonl / parquet; gzip when the name ends in .gz."""
    if fmt == "parquet":
        table = pa.table({field: lines, "other": list(range(len(lines)))})
        if path.suffix == ".gz":
            raw = path.with_suffix("")
            pq.write_table(table, raw)
            path.write_bytes(gzip.compress(raw.read_bytes()))
            raw.unlink()
        else:
            pq.write_table(table, path)
        return path
    if fmt == "jsonl":
        body = "".join(json.dumps({field: line, "n": i}) + "\n" for i, line in enumerate(lines))
    else:
        body = "".join(line + "\n" for line in lines)
    data = body.encode("utf-8")
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def reference_occurrences(words: list[str]) -> list[int]:
    """ConceptX's numbering, written the way create_data_single_layer.py does it."""
    seen: Counter[str] = Counter()
    out = []
    for word in words:
        seen[word] += 1
        out.append(seen[word])
    return out


def check_invariants(corpus) -> None:
    """What every later stage relies on, whatever the config."""
    s, t = corpus.sentences, corpus.tokens
    assert s.schema == SENTENCES_SCHEMA and t.schema == TOKENS_SCHEMA
    assert s.column("sentence_id").to_pylist() == list(range(s.num_rows))
    assert t.column("row").to_pylist() == list(range(t.num_rows))
    keys = list(zip(t.column("sentence_id").to_pylist(), t.column("position").to_pylist(), strict=True))
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert set(t.column("sentence_id").to_pylist()) == set(range(s.num_rows)), "sentence without token"
    words = sentence_words(s)
    for sid, pos, word in zip(t.column("sentence_id").to_pylist(), t.column("position").to_pylist(),
                              t.column("word").to_pylist(), strict=True):
        assert words[sid][pos] == word
    assert all(w for sent in words for w in sent), "empty word: text is not single-space joined"
    assert t.column("occurrence").to_pylist() == reference_occurrences(t.column("word").to_pylist())


# ---------------------------------------------------------------- readers


@pytest.mark.unit
@pytest.mark.parametrize("fmt,name", [
    ("text", "c.txt"), ("text", "c.txt.gz"), ("jsonl", "c.jsonl"), ("jsonl", "c.jsonl.gz"),
    ("parquet", "c.parquet"), ("parquet", "c.parquet.gz"),
])
def test_every_format_gives_the_same_tables(tmp_path, fmt, name):
    plain = ingest(CorpusConfig(path=str(write_corpus(tmp_path / "ref.txt", SENTENCES, "text"))))
    corpus = ingest(CorpusConfig(path=str(write_corpus(tmp_path / name, SENTENCES, fmt))))
    check_invariants(corpus)
    assert corpus.sentences.equals(plain.sentences)
    assert corpus.tokens.equals(plain.tokens)
    assert corpus.sentences.num_rows == len(NON_EMPTY)


@pytest.mark.unit
def test_named_field_and_explicit_format(tmp_path):
    path = write_corpus(tmp_path / "corpus.data", NON_EMPTY, "jsonl", field="sentence")
    corpus = ingest(CorpusConfig(path=str(path), format="jsonl", field="sentence"))
    assert corpus.sentences.num_rows == len(NON_EMPTY)
    ppath = write_corpus(tmp_path / "c.parquet", NON_EMPTY, "parquet", field="body")
    assert ingest(CorpusConfig(path=str(ppath), field="body")).tokens.equals(corpus.tokens)


@pytest.mark.unit
def test_crlf_and_bom_are_not_part_of_words(tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes(b"\xef\xbb\xbfhello world\r\nsecond line\r\n")
    corpus = ingest(CorpusConfig(path=str(path), tokenizer="whitespace"))
    assert corpus.sentences.column("text").to_pylist() == ["hello world", "second line"]


# ---------------------------------------------------------------- tokenizers


@pytest.mark.unit
def test_moses_splits_punctuation_and_clitics(tmp_path):
    path = write_corpus(tmp_path / "c.txt", ["A dog doesn't like the cat, and I'm sure."], "text")
    words = sentence_words(ingest(CorpusConfig(path=str(path))).sentences)[0]
    assert words == ["A", "dog", "doesn", "'t", "like", "the", "cat", ",", "and", "I", "'m", "sure", "."]


@pytest.mark.unit
def test_whitespace_mode_keeps_pretokenized_words(tmp_path):
    path = write_corpus(tmp_path / "c.txt", ["A  dog doesn't\tlike cats,really ."], "text")
    words = sentence_words(ingest(CorpusConfig(path=str(path), tokenizer="whitespace")).sentences)[0]
    assert words == ["A", "dog", "doesn't", "like", "cats,really", "."]


@pytest.mark.unit
def test_moses_does_not_escape_and_lowercase_applies(tmp_path):
    path = write_corpus(tmp_path / "c.txt", ['He said "R&D" <b>Ünïcode</b>'], "text")
    words = sentence_words(ingest(CorpusConfig(path=str(path), lowercase=True)).sentences)[0]
    assert "&" in words and '"' in words and "&amp;" not in words and "&quot;" not in words
    assert all(w == w.lower() for w in words) and any("ünïcode" in w for w in words)


@pytest.mark.unit
def test_pool_tokenization_equals_in_process(caplog):
    lines = [f"Sentence {i}: the {i % 7}th cat isn't here, is it?" for i in range(500)]
    one = list(tokenize_chunks(chunked(lines, 40), "moses", False, workers=1))
    assert "tokenizer pool started" not in caplog.text
    with caplog.at_level(logging.INFO, logger="cluster_service"):
        pooled = list(tokenize_chunks(chunked(lines, 40), "moses", False, workers=2))
    assert "tokenizer pool started" in caplog.text and "failed" not in caplog.text
    assert len(pooled) == len(one) == 13
    assert all(a.equals(b) for a, b in zip(one, pooled, strict=True))


@pytest.mark.unit
def test_pool_that_cannot_start_falls_back_without_losing_chunks(tmp_path):
    """A script without a __main__ guard: spawned workers re-run it and die; the parent carries on."""
    script = tmp_path / "no_guard.py"
    script.write_text(
        "from cluster_service.corpus.tokenize import chunked, tokenize_chunks\n"
        "lines = [f'Sentence {i}: the cat isn\\'t here.' for i in range(500)]\n"
        "out = list(tokenize_chunks(chunked(lines, 40), 'moses', False, workers=2))\n"
        "print('RESULT', len(out), sum(len(a) for a in out), out[-1][-1])\n"
    )
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                          cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "RESULT 13 500 Sentence 499 : the cat isn 't here ." in done.stdout
    assert "tokenizer pool failed" in done.stderr


# ---------------------------------------------------------------- filters


@pytest.mark.unit
def test_max_sentence_words_drops_whole_sentences(tmp_path):
    lines = ["one two three", "one two three four", "one two"]
    path = write_corpus(tmp_path / "c.txt", lines, "text")
    corpus = ingest(CorpusConfig(path=str(path), tokenizer="whitespace", max_sentence_words=3))
    check_invariants(corpus)
    assert corpus.sentences.column("text").to_pylist() == ["one two three", "one two"]
    assert corpus.tokens.num_rows == 5


@pytest.mark.unit
def test_min_word_freq_drops_rare_types_and_sentences_left_without_tokens(tmp_path):
    lines = ["a b c", "x y z", "a b", "a q"]
    path = write_corpus(tmp_path / "c.txt", lines, "text")
    corpus = ingest(CorpusConfig(path=str(path), tokenizer="whitespace", min_word_freq=2))
    check_invariants(corpus)
    # "x y z" keeps nothing: dropped, and ids stay dense
    assert corpus.sentences.column("text").to_pylist() == ["a b c", "a b", "a q"]
    t = corpus.tokens
    assert t.column("word").to_pylist() == ["a", "b", "a", "b", "a"]
    assert t.column("sentence_id").to_pylist() == [0, 0, 1, 1, 2]
    # the sentence text keeps every word: positions index into it, filtered words are context
    assert t.column("position").to_pylist() == [0, 1, 0, 1, 0]


@pytest.mark.unit
def test_max_occurrences_keeps_first_occurrences_in_corpus_order(tmp_path):
    lines = ["the cat", "the dog the end", "a cat", "the cat"]
    path = write_corpus(tmp_path / "c.txt", lines, "text")
    corpus = ingest(CorpusConfig(path=str(path), tokenizer="whitespace", max_occurrences=2))
    check_invariants(corpus)
    rows = [(r["sentence_id"], r["position"], r["word"], r["occurrence"]) for r in corpus.tokens.to_pylist()]
    assert rows == [
        (0, 0, "the", 1), (0, 1, "cat", 1),
        (1, 0, "the", 2), (1, 1, "dog", 1), (1, 3, "end", 1),
        (2, 0, "a", 1), (2, 1, "cat", 2),
    ]
    # the last sentence keeps no token ("the" and "cat" are capped): dropped
    assert corpus.sentences.num_rows == 3


@pytest.mark.unit
def test_conceptx_filters_together_on_a_real_corpus_slice(tmp_path):
    lines = Path(demo_path()).read_text(encoding="utf-8").splitlines()[:3000]
    path = write_corpus(tmp_path / "c.txt", lines, "text")
    cfg = CorpusConfig(path=str(path), min_word_freq=10, max_occurrences=10, max_sentence_words=20)
    corpus = ingest(cfg)
    check_invariants(corpus)
    everything = ingest(CorpusConfig(path=str(path), max_sentence_words=20))
    counts = Counter(everything.tokens.column("word").to_pylist())
    kept = Counter(corpus.tokens.column("word").to_pylist())
    assert kept and all(counts[w] >= 10 for w in kept)
    assert kept == {w: min(c, 10) for w, c in counts.items() if c >= 10}
    assert max(len(w) for w in sentence_words(corpus.sentences)) <= 20


@pytest.mark.unit
def test_sampling_is_seeded_uniform_and_keeps_file_order(tmp_path):
    lines = [f"sentence number {i}" for i in range(200)]
    path = write_corpus(tmp_path / "c.txt", lines, "text")

    def texts(seed: int) -> list[str]:
        cfg = CorpusConfig(path=str(path), tokenizer="whitespace", max_sentences=50, seed=seed)
        return ingest(cfg).sentences.column("text").to_pylist()

    a, b, c = texts(1), texts(1), texts(2)
    assert a == b and a != c and len(a) == 50
    numbers = [int(t.split()[-1]) for t in a]
    assert numbers == sorted(numbers) and set(a) <= set(lines)
    assert len(texts(1)) == 50
    all_of_it = CorpusConfig(path=str(path), tokenizer="whitespace", max_sentences=500)
    assert ingest(all_of_it).sentences.num_rows == 200


@pytest.mark.unit
def test_reservoir_sample_is_close_to_uniform():
    hits: Counter[int] = Counter()
    for seed in range(400):
        sample, n = reservoir_sample(map(str, range(20)), 5, seed)
        hits.update(int(x) for x in sample)
    assert n == 20
    # each item is expected 100 times; a biased sampler (e.g. always the head) fails this
    assert min(hits.values()) > 60 and max(hits.values()) < 140


# ---------------------------------------------------------------- determinism and fingerprint


@pytest.mark.unit
def test_same_input_and_config_give_identical_tables_and_fingerprint(tmp_path):
    path = write_corpus(tmp_path / "c.jsonl.gz", SENTENCES * 5, "jsonl")
    cfg = CorpusConfig(path=str(path), max_occurrences=3, max_sentences=12, seed=3)
    a, b = ingest(cfg), ingest(cfg)
    assert a.sentences.equals(b.sentences) and a.tokens.equals(b.tokens)
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 64


@pytest.mark.unit
def test_fingerprint_follows_bytes_and_shaping_config_not_the_path(tmp_path):
    one = write_corpus(tmp_path / "one.txt", NON_EMPTY, "text")
    two = write_corpus(tmp_path / "two.txt", NON_EMPTY, "text")
    changed = write_corpus(tmp_path / "changed.txt", NON_EMPTY + ["One more."], "text")
    base = ingest(CorpusConfig(path=str(one))).fingerprint
    assert ingest(CorpusConfig(path=str(two))).fingerprint == base
    assert ingest(CorpusConfig(path=str(changed))).fingerprint != base
    assert ingest(CorpusConfig(path=str(one), lowercase=True)).fingerprint != base
    assert ingest(CorpusConfig(path=str(one), max_occurrences=1)).fingerprint != base


# ---------------------------------------------------------------- config


@pytest.mark.unit
def test_config_fields_are_documented_flags_and_validated():
    docs = field_docs(CorpusConfig)
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, CorpusConfig)
    help_text = " ".join(parser.format_help().split())
    for name in ("path", "format", "field", "tokenizer", "lowercase", "min_word_freq", "max_occurrences",
                 "max_sentence_words", "max_sentences", "seed"):
        assert docs.get(name), f"{name} has no docstring"
        assert "--" + name.replace("_", "-") in help_text
    with pytest.raises(UserError, match="max_occurrences"):
        build(CorpusConfig, {"max_occurrences": -1})


# ---------------------------------------------------------------- bad input


def error_of(cfg: CorpusConfig) -> str:
    with pytest.raises(UserError) as info:
        ingest(cfg)
    return str(info.value)


@pytest.mark.unit
def test_missing_file(tmp_path):
    msg = error_of(CorpusConfig(path=str(tmp_path / "nope.txt")))
    assert "nope.txt" in msg and "not found" in msg


@pytest.mark.unit
def test_unknown_suffix(tmp_path):
    path = write_corpus(tmp_path / "c.csv", NON_EMPTY, "text")
    msg = error_of(CorpusConfig(path=str(path)))
    assert "c.csv" in msg and "--format" in msg


@pytest.mark.unit
@pytest.mark.parametrize("name,fmt", [("e.txt", "text"), ("e.jsonl.gz", "jsonl")])
def test_empty_corpus(tmp_path, name, fmt):
    path = write_corpus(tmp_path / name, ["", "  "], fmt)
    msg = error_of(CorpusConfig(path=str(path)))
    assert name in msg and "empty corpus" in msg


@pytest.mark.unit
def test_empty_after_length_filter_names_the_filter(tmp_path):
    path = write_corpus(tmp_path / "c.txt", ["one two three", "four five six seven"], "text")
    msg = error_of(CorpusConfig(path=str(path), max_sentence_words=2))
    assert "c.txt" in msg and "max_sentence_words=2" in msg and "all 2 sentences" in msg


@pytest.mark.unit
def test_empty_after_frequency_filter_names_the_filter(tmp_path):
    path = write_corpus(tmp_path / "c.txt", ["one two three", "one five six"], "text")
    msg = error_of(CorpusConfig(path=str(path), min_word_freq=3))
    assert "c.txt" in msg and "min_word_freq=3" in msg and "'one' 2 times" in msg


@pytest.mark.unit
@pytest.mark.parametrize("name", ["bad.txt", "bad.txt.gz", "bad.jsonl"])
def test_undecodable_bytes_name_the_line(tmp_path, name):
    if name.startswith("bad.jsonl"):
        body = b'{"text": "fine"}\n{"text": "fine too"}\n{"text": "caf\xe9"}\n'
    else:
        body = b"fine\nfine too\ncaf\xe9 au lait\nlast\n"
    path = tmp_path / name
    path.write_bytes(gzip.compress(body) if name.endswith(".gz") else body)
    msg = error_of(CorpusConfig(path=str(path)))
    assert f"{name}:3:" in msg and "line 3" in msg and "UTF-8" in msg and "0xe9" in msg


@pytest.mark.unit
def test_invalid_json_names_the_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "ok"}\n\n{"text": "broken"\n')
    msg = error_of(CorpusConfig(path=str(path)))
    assert "c.jsonl:3:" in msg and "invalid JSON on line 3" in msg


@pytest.mark.unit
def test_missing_jsonl_field_names_line_and_field(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "ok"}\n{"body": "no text here", "id": 2}\n')
    msg = error_of(CorpusConfig(path=str(path)))
    assert "c.jsonl:2:" in msg and "'text' missing on line 2" in msg and "body, id" in msg


@pytest.mark.unit
@pytest.mark.parametrize("value,shown", [(3, "int"), (None, "null"), (["a"], "list")])
def test_non_string_jsonl_value(tmp_path, value, shown):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"text": value}) + "\n")
    msg = error_of(CorpusConfig(path=str(path)))
    assert "c.jsonl:2:" in msg and "line 2" in msg and shown in msg and "expected a string" in msg


@pytest.mark.unit
def test_jsonl_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "ok"}\n["a", "b"]\n')
    assert "c.jsonl:2:" in error_of(CorpusConfig(path=str(path)))


@pytest.mark.unit
def test_missing_parquet_column_lists_the_columns(tmp_path):
    path = write_corpus(tmp_path / "c.parquet", NON_EMPTY, "parquet", field="body")
    msg = error_of(CorpusConfig(path=str(path)))
    assert "c.parquet" in msg and "'text' not found" in msg and "body, other" in msg


@pytest.mark.unit
def test_non_string_parquet_column_and_null_row(tmp_path):
    path = tmp_path / "n.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), path)
    msg = error_of(CorpusConfig(path=str(path)))
    assert "n.parquet" in msg and "int64" in msg and "string" in msg
    nulls = tmp_path / "nulls.parquet"
    pq.write_table(pa.table({"text": ["ok", None, "fine"]}), nulls)
    msg = error_of(CorpusConfig(path=str(nulls)))
    assert "nulls.parquet" in msg and "row index 1" in msg


@pytest.mark.unit
def test_corrupt_gzip_and_not_parquet(tmp_path):
    path = tmp_path / "c.txt.gz"
    body = "".join(f"sentence {i} of {i * 7919 % 10007}\n" for i in range(5000)).encode()
    packed = gzip.compress(body)
    path.write_bytes(packed[: len(packed) // 2])
    msg = error_of(CorpusConfig(path=str(path)))
    assert "c.txt.gz" in msg and "gzip" in msg
    fake = tmp_path / "fake.parquet"
    fake.write_text("not parquet\n")
    assert "fake.parquet" in error_of(CorpusConfig(path=str(fake)))


# ---------------------------------------------------------------- the demo corpus


def demo_path() -> str:
    from cluster_service.demo import fetch_demo_corpus

    return str(fetch_demo_corpus())


@pytest.mark.acceptance
def test_demo_corpus_ingests_with_conceptx_filters():
    started = time.perf_counter()
    corpus = ingest(CorpusConfig())
    seconds = time.perf_counter() - started
    check_invariants(corpus)
    assert corpus.sentences.num_rows > 40_000 and corpus.tokens.num_rows > 250_000
    assert seconds < 60, f"demo ingestion took {seconds:.1f}s"
    filtered = ingest(CorpusConfig(min_word_freq=10, max_occurrences=10))
    check_invariants(filtered)
    counts = Counter(filtered.tokens.column("word").to_pylist())
    assert max(counts.values()) == 10 and filtered.tokens.num_rows < corpus.tokens.num_rows
