"""From sentences of words to subword sequences and padded batches (packed ones: ``packing``), with
windows for sentences too long for the model.

A shard's sentences are tokenized in one batched call as pre-split words, so each word's subwords
are known. A sentence longer than the model allows is cut into half-overlapping windows of whole
words, and each word is read from the window in which it has the most context on both sides.
Nothing is truncated.

The plan is built with flat numpy arrays, not per-word Python objects: on a GPU the model consumes
well over a million words a second, and per-word Python work would be the bottleneck.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ..logs import log_event

log = logging.getLogger("cluster_service.extract")
PAD_MULTIPLE = 8  # padded widths in multiples of 8: fewer distinct shapes, tensor-core friendly


@dataclass
class ShardTask:
    """What one worker needs to compute one shard: no access to the run store's tables.

    The sentences travel as one newline-joined string: pickling one string is a copy, pickling a
    list of word lists is per-object work that saturated the driver at four GPUs.
    """

    shard: int
    start: int  # first row of the shard
    stop: int  # one past the last row
    text: str  # the sentences the shard's rows fall in, words joined by " ", sentences by "\n"
    row_sentence: np.ndarray  # [rows] index into the sentences of ``text``
    row_position: np.ndarray  # [rows] word index in its sentence

    def header(self) -> ShardTask:
        """The task without its text: all a worker needs once the batches are prepared elsewhere."""
        empty = np.zeros(0, dtype=np.int64)
        return ShardTask(self.shard, self.start, self.stop, "", empty, empty)


@dataclass
class ShardPlan:
    """Every forward-pass sequence of a shard and where each row's subwords sit in it."""

    ids: np.ndarray  # flat subword ids of all sequences, special tokens included
    seq_start: np.ndarray  # [sequences + 1] offsets into ``ids``
    row_seq: np.ndarray  # [rows] the sequence each row is read from
    row_a: np.ndarray  # [rows] its first subword's position in that sequence
    row_b: np.ndarray  # [rows] one past its last subword

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.seq_start)


@dataclass
class Batch:
    """One forward pass: padded (one sequence per row, ``mask``) or packed (several per row, with
    ``positions`` restarting per sequence and ``segments`` naming each position's sequence)."""

    ids: np.ndarray  # [B, T]
    mask: np.ndarray | None  # [B, T] 1 = subword, 0 = padding; None when packed
    rows: np.ndarray  # [w] shard rows this batch fills
    first: np.ndarray  # [w] flat index (b*T + t) of each row's first subword
    last: np.ndarray  # [w] flat index of its last subword
    positions: np.ndarray | None = None  # [B, T] position ids (packed only)
    segments: np.ndarray | None = None  # [B, T] index of the position's sequence in its row, -1 = padding

    def mean_segments(self) -> tuple[np.ndarray, np.ndarray]:
        """Flat indices of every subword of every row, and the row-in-batch each belongs to."""
        counts = self.last - self.first + 1
        seg = np.repeat(np.arange(len(counts)), counts)
        within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        return np.repeat(self.first, counts) + within, seg


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


def first_token_id(tokenizer, *names: str) -> int:
    """The id of the first of these special tokens the tokenizer defines (0 if it has none)."""
    for name in names:
        cand = getattr(tokenizer, name, None)
        if cand is not None:
            return int(cand)
    return 0


class WordPieces:
    """Subword ids per word type, cached: a corpus is Zipfian, so most words of a shard were seen before.

    Fast tokenizers split pre-split input word by word, so a word's pieces do not depend on its
    neighbours and a cache is exact (the tests compare against transformers' own word_ids).
    """

    def __init__(self, tokenizer, max_entries: int = 2_000_000):
        self.backend = tokenizer.backend_tokenizer
        self.cache: dict[str, np.ndarray] = {}
        self.max_entries = max_entries
        self.fallback = np.asarray([first_token_id(tokenizer, "unk_token_id", "eos_token_id", "pad_token_id")],
                                   dtype=np.int64)
        self.lock = threading.Lock()  # two shards may be prepared at once

    def pieces(self, words: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Every word's subword count and all subword ids, flat in word order.

        Per-word work is C: pyarrow finds the shard's distinct words, only those touch the Python
        cache, and numpy gathers the flat ids (per-word Python here capped a GPU actor's rate).
        """
        encoded = pa.array(words, type=pa.string()).dictionary_encode()
        idx = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        uniq = encoded.dictionary.to_pylist()
        with self.lock:
            arrays = self._lookup(uniq)
        u_len = np.fromiter(map(len, arrays), dtype=np.int64, count=len(arrays))
        u_flat = np.concatenate(arrays) if arrays else np.zeros(0, np.int64)
        u_off = np.cumsum(u_len) - u_len
        piece_len = u_len[idx]
        piece_off = np.cumsum(piece_len) - piece_len
        gather = np.arange(int(piece_len.sum())) + np.repeat(u_off[idx] - piece_off, piece_len)
        return piece_len, u_flat[gather]

    def _lookup(self, uniq: list[str]) -> list[np.ndarray]:
        cache = self.cache
        new = [w for w in uniq if w not in cache]
        if new:
            if len(cache) + len(new) > self.max_entries:
                cache.clear()
            # the Rust tokenizer directly: transformers' per-encoding Python conversion cost more than
            # the tokenization itself
            encs = self.backend.encode_batch([[w] for w in new], is_pretokenized=True, add_special_tokens=False)
            for w, e in zip(new, encs, strict=True):
                cache[w] = np.asarray(e.ids, dtype=np.int64)
        return [cache[w] for w in uniq]


def build_plan(task: ShardTask, pieces_of: WordPieces, prefix: list[int], suffix: list[int],
               max_length: int) -> ShardPlan:
    n_pre, n_suf = len(prefix), len(suffix)
    budget = max_length - n_pre - n_suf
    lines = task.text.split("\n")
    n_sents = len(lines)
    word_counts = np.fromiter((line.count(" ") + 1 for line in lines), dtype=np.int64, count=len(lines))
    piece_len, flat_ids = pieces_of.pieces(task.text.replace("\n", " ").split(" "))
    word_off = np.concatenate([[0], np.cumsum(word_counts)])
    piece_off = np.concatenate([[0], np.cumsum(piece_len)])
    sub_off = piece_off[word_off]
    sub_counts = np.diff(sub_off)
    sent_of_sub = np.repeat(np.arange(n_sents), sub_counts)
    first = piece_off[:-1]  # of every word, in the flat subword array
    last = piece_off[1:] - 1
    complete = np.ones(n_sents, dtype=bool)
    if (piece_len == 0).any():  # such sentences take the slow path, which substitutes a fallback id
        complete = np.minimum.reduceat(piece_len, word_off[:-1]) > 0 if n_sents else complete
    simple = complete & (sub_counts <= budget)  # one sequence, the common case

    # simple sentences: prefix + subwords + suffix, laid out with array arithmetic
    s_idx = np.flatnonzero(simple)
    s_len = sub_counts[s_idx] + n_pre + n_suf
    s_start = np.concatenate([[0], np.cumsum(s_len)])
    ids = np.empty(int(s_start[-1]), dtype=np.int64)
    for j, tok in enumerate(prefix):
        ids[s_start[:-1] + j] = tok
    for j, tok in enumerate(suffix):
        ids[s_start[1:] - n_suf + j] = tok
    body_mask = simple[sent_of_sub]
    shift = np.zeros(n_sents, dtype=np.int64)
    shift[s_idx] = s_start[:-1] + n_pre - sub_off[s_idx]
    ids[np.flatnonzero(body_mask) + shift[sent_of_sub[body_mask]]] = flat_ids[body_mask]
    seq_of_sentence = np.full(n_sents, -1, dtype=np.int64)
    seq_of_sentence[s_idx] = np.arange(len(s_idx))

    rows = len(task.row_sentence)
    row_seq = np.empty(rows, dtype=np.int64)
    row_a = np.empty(rows, dtype=np.int64)
    row_b = np.empty(rows, dtype=np.int64)
    rs, rp = task.row_sentence, task.row_position
    easy = simple[rs]
    k = word_off[rs[easy]] + rp[easy]
    row_seq[easy] = seq_of_sentence[rs[easy]]
    row_a[easy] = first[k] - sub_off[rs[easy]] + n_pre
    row_b[easy] = last[k] - sub_off[rs[easy]] + n_pre + 1

    # the rest: sentences over the budget (windows) or with words that tokenize to nothing
    extra_ids, extra_len = [ids], list(s_len)
    n_seq = len(s_idx)
    hard_rows = np.flatnonzero(~easy)
    by_sentence: dict[int, list[int]] = {}
    for r in hard_rows.tolist():
        by_sentence.setdefault(int(rs[r]), []).append(r)
    for s, srows in by_sentence.items():
        pieces = []
        for w in range(int(word_counts[s])):
            g = word_off[s] + w
            pieces.append(flat_ids[piece_off[g]:piece_off[g + 1]] if piece_len[g] else pieces_of.fallback)
        lengths = np.asarray([len(p) for p in pieces])
        spans = [(0, len(pieces))] if lengths.sum() <= budget else windows(lengths, budget)
        log_event(log, "sentence windowed", level=logging.DEBUG, words=len(pieces), windows=len(spans))
        per_window: dict[int, list[int]] = {}
        for r in srows:
            per_window.setdefault(best_window(int(rp[r]), spans), []).append(r)
        for w, wrows in sorted(per_window.items()):
            a, b = spans[w]
            chunk = [p[:budget] for p in pieces[a:b]]  # only a single over-long word is ever cut
            offs = np.concatenate([[0], np.cumsum([len(c) for c in chunk])]) + n_pre
            seq = np.concatenate([prefix, np.concatenate(chunk), suffix]).astype(np.int64)
            extra_ids.append(seq)
            extra_len.append(len(seq))
            pos = rp[wrows] - a
            row_seq[wrows] = n_seq
            row_a[wrows] = offs[pos]
            row_b[wrows] = offs[pos + 1]
            n_seq += 1
    seq_start = np.concatenate([[0], np.cumsum(np.asarray(extra_len, dtype=np.int64))])
    return ShardPlan(np.concatenate(extra_ids), seq_start, row_seq, row_a, row_b)


def padded_width(length: int) -> int:
    return -(-length // PAD_MULTIPLE) * PAD_MULTIPLE


def group_by_width(lengths: np.ndarray, batch_tokens: int) -> list[np.ndarray]:
    """Units (sequences, or packed rows) sorted by length and cut into batches of at most
    ``batch_tokens`` padded positions (a unit wider than that is a batch of its own)."""
    order = np.argsort(lengths, kind="stable")
    groups: list[np.ndarray] = []
    start = 0
    for i in range(len(order)):
        width = padded_width(int(lengths[order[i]]))  # the widest so far: sorted
        if i > start and (i - start + 1) * width > batch_tokens:
            groups.append(order[start:i])
            start = i
    if len(order):
        groups.append(order[start:])
    return groups


def make_batches(plan: ShardPlan, batch_tokens: int, pad_id: int) -> list[Batch]:
    """Sort sequences by length and fill batches up to ``batch_tokens`` padded positions."""
    lengths = plan.lengths
    groups = group_by_width(lengths, batch_tokens)
    batch_of_seq = np.empty(len(lengths), dtype=np.int64)
    slot_of_seq = np.empty(len(lengths), dtype=np.int64)
    for g, seqs in enumerate(groups):
        batch_of_seq[seqs] = g
        slot_of_seq[seqs] = np.arange(len(seqs))
    row_batch = batch_of_seq[plan.row_seq]
    row_order = np.argsort(row_batch, kind="stable")
    bounds = np.searchsorted(row_batch[row_order], np.arange(len(groups) + 1))
    out = []
    for g, seqs in enumerate(groups):
        lens = lengths[seqs]
        width = padded_width(int(lens.max()))
        ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(seqs), width), dtype=np.int64)
        b_of_tok = np.repeat(np.arange(len(seqs)), lens)
        t_of_tok = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
        src = np.repeat(plan.seq_start[seqs], lens) + t_of_tok
        ids[b_of_tok, t_of_tok] = plan.ids[src]
        mask[b_of_tok, t_of_tok] = 1
        rows = row_order[bounds[g]: bounds[g + 1]]
        base = slot_of_seq[plan.row_seq[rows]] * width
        out.append(Batch(ids, mask, rows, base + plan.row_a[rows], base + plan.row_b[rows] - 1))
    return out
