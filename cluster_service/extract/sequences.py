"""From sentences of words to padded subword batches, with windows for sentences too long for the model.

A shard's work is a set of rows (word occurrences) in sentences. Every sentence is tokenized once as
pre-split words, so each word's subwords are known; a sentence longer than the model allows is cut
into half-overlapping windows of whole words, and each word is read from the window in which it has
the most context on both sides. Nothing is truncated.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..logs import log_event

log = logging.getLogger("cluster_service.extract")


@dataclass
class ShardTask:
    """What one worker needs to compute one shard: no access to the run store's tables."""

    shard: int
    start: int  # first row of the shard
    stop: int  # one past the last row
    sentences: list[list[str]]  # the words of every sentence the shard's rows fall in
    row_sentence: np.ndarray  # [rows] index into ``sentences``
    row_position: np.ndarray  # [rows] word index in its sentence


@dataclass
class Sequence:
    """One forward-pass input and the words it must emit."""

    ids: np.ndarray  # subword ids with special tokens
    span_start: np.ndarray  # [w] first subword position of each emitted word
    span_stop: np.ndarray  # [w] one past its last subword
    out_rows: np.ndarray  # [w] row within the shard


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The special token ids the model's tokenizer puts before and after a sequence.

    Read off a tokenized probe word rather than a tokenizer method, since that API differs between
    transformers releases and tokenizer kinds (BERT adds [CLS]/[SEP], GPT-2 nothing, Llama a BOS).
    """
    plain = tokenizer(["a"], is_split_into_words=True, add_special_tokens=False)["input_ids"]
    full = tokenizer(["a"], is_split_into_words=True, add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(plain) + 1):
        if full[i : i + len(plain)] == plain:
            return list(full[:i]), list(full[i + len(plain):])
    raise ValueError("cannot locate the sequence inside its special tokens")


def word_pieces(tokenizer, sentences: list[list[str]]) -> list[list[np.ndarray]]:
    """Subword ids of every word of every sentence, in one batched (Rust, parallel) tokenizer call."""
    enc = tokenizer(sentences, is_split_into_words=True, add_special_tokens=False)
    fallback = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else tokenizer.eos_token_id
    out: list[list[np.ndarray]] = []
    for i, words in enumerate(sentences):
        ids = np.asarray(enc["input_ids"][i], dtype=np.int64)
        wid = np.asarray([-1 if w is None else w for w in enc.word_ids(i)], dtype=np.int64)
        bounds = np.searchsorted(wid, np.arange(len(words) + 1))
        pieces = [ids[bounds[j]:bounds[j + 1]] for j in range(len(words))]
        # a word that tokenizes to nothing (stray control characters) still gets a vector
        out.append([p if len(p) else np.asarray([fallback], dtype=np.int64) for p in pieces])
    return out


def windows(lengths: np.ndarray, budget: int) -> list[tuple[int, int]]:
    """Half-overlapping windows [a, b) of whole words, each at most ``budget`` subwords."""
    n = len(lengths)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    out: list[tuple[int, int]] = []
    a = 0
    while True:
        b = int(np.searchsorted(ends, starts[a] + budget, side="right"))
        b = max(b, a + 1)  # a single word longer than the budget gets a window of its own
        out.append((a, b))
        if b >= n:
            return out
        a = max(a + 1, (a + b) // 2)


def best_window(position: int, spans: list[tuple[int, int]]) -> int:
    """The window in which ``position`` has the most context on its shorter side (earliest on ties)."""
    best, best_score = 0, -1
    for i, (a, b) in enumerate(spans):
        if a <= position < b:
            score = min(position - a, b - 1 - position)
            if score > best_score:
                best, best_score = i, score
    return best


def build_sequences(task: ShardTask, tokenizer, max_length: int) -> list[Sequence]:
    prefix, suffix = special_tokens(tokenizer)
    before = len(prefix)
    budget = max_length - len(prefix) - len(suffix)
    pieces = word_pieces(tokenizer, task.sentences)
    rows_of: dict[int, list[tuple[int, int]]] = {}
    for row, (s, p) in enumerate(zip(task.row_sentence.tolist(), task.row_position.tolist(), strict=True)):
        rows_of.setdefault(s, []).append((p, row))
    seqs: list[Sequence] = []
    for s, wanted in rows_of.items():
        words = pieces[s]
        lengths = np.asarray([len(p) for p in words])
        spans = [(0, len(words))] if lengths.sum() <= budget else windows(lengths, budget)
        if len(spans) > 1:
            log_event(log, "sentence windowed", level=logging.DEBUG, words=len(words), windows=len(spans))
        per_window: dict[int, list[tuple[int, int]]] = {}
        for p, row in wanted:
            per_window.setdefault(best_window(p, spans) if len(spans) > 1 else 0, []).append((p, row))
        for w, emit in per_window.items():
            a, b = spans[w]
            chunk = [x[:budget] for x in words[a:b]]  # only a single over-long word is ever cut
            offs = np.concatenate([[0], np.cumsum([len(x) for x in chunk])]) + before
            ids = np.concatenate([prefix, np.concatenate(chunk), suffix]).astype(np.int64)
            pos = np.asarray([p - a for p, _ in emit])
            seqs.append(Sequence(ids, offs[pos], offs[pos + 1], np.asarray([r for _, r in emit])))
    return seqs


def make_batches(seqs: list[Sequence], batch_tokens: int) -> list[list[Sequence]]:
    """Sort by length and fill batches up to ``batch_tokens`` padded positions."""
    order = sorted(range(len(seqs)), key=lambda i: (len(seqs[i].ids), i))
    batches: list[list[Sequence]] = []
    current: list[Sequence] = []
    for i in order:
        seq = seqs[i]
        width = len(seq.ids)  # the longest so far, since sorted
        if current and (len(current) + 1) * width > batch_tokens:
            batches.append(current)
            current = []
        current.append(seq)
    if current:
        batches.append(current)
    return batches
