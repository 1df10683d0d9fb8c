"""Label scoring without humans (detection scoring, as in automated interpretability / delphi).

For each labelled concept a shuffled mix of member and non-member occurrences (each its sentence with the
word marked), ``per_prompt`` to a prompt; non-members half random, half hard (from the concept's siblings
in the dendrogram and its nearest concepts by centroid). The scorer LLM gets the label and answers a list
of 0/1. Per concept: precision, recall, F1 and balanced accuracy; and the same with another concept's
label (the shuffled-label control), which real labels must beat for the scores to mean anything.

This module holds the pure parts: choosing occurrences, rendering prompts, parsing answers, metrics. The
calls go through the annotation pool (``scoring.run_scorer``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: how a prompt names the label and marks the word: the fake server in cluster_service.testing reads both
LABEL_LINE = "Concept label: "
MARK_OPEN, MARK_CLOSE = "<<", ">>"
SYSTEM = ("You check whether words in context fit a description of a concept found in a language model. "
          "Answer only with a JSON list of 0s and 1s.")
RETRY_NOTE = "Your previous answer could not be read. Reply with the list only, for example {example}."
_LIST = re.compile(r"\[[^\[\]]*\]")


@dataclass(frozen=True)
class Shown:
    """One occurrence shown to the scorer: its row and whether it belongs to the concept."""

    row: int
    member: bool


def hard_pool(concept: int, parent: np.ndarray | None, centroids: np.ndarray, nearest: int = 3) -> list[int]:
    """Concepts whose tokens make hard non-members: siblings under the same parent, then the nearest by
    centroid (excluding the concept itself)."""
    out: list[int] = []
    if parent is not None:
        out = [int(c) for c in np.flatnonzero(parent == parent[concept]) if c != concept]
    dist = ((centroids - centroids[concept]) ** 2).sum(axis=1)
    dist[concept] = np.inf
    for c in np.argsort(dist, kind="stable")[:nearest]:
        if int(c) not in out and np.isfinite(dist[c]):
            out.append(int(c))
    return out


def choose(concept: int, members_of: Sequence[np.ndarray], n_tokens: int, assignments: np.ndarray,
           hard: Sequence[int], n_members: int, n_nonmembers: int, rng: np.random.Generator) -> list[Shown]:
    """Members (all when fewer than asked) and non-members (half from ``hard`` concepts, the rest random
    outside the concept), shuffled."""
    own = members_of[concept]
    members = rng.choice(own, min(n_members, len(own)), replace=False)
    pool = np.concatenate([members_of[c] for c in hard]) if hard else np.empty(0, dtype=np.int64)
    n_hard = min(n_nonmembers // 2, len(pool))
    hard_rows = rng.choice(pool, n_hard, replace=False) if n_hard else pool[:0]
    random_rows: list[int] = []
    taken = set(hard_rows.tolist())
    for _ in range(64 * n_nonmembers):
        if len(random_rows) >= n_nonmembers - n_hard or len(taken) + len(own) >= n_tokens:
            break
        row = int(rng.integers(n_tokens))
        if assignments[row] != concept and row not in taken:
            taken.add(row)
            random_rows.append(row)
    shown = [Shown(int(r), True) for r in members] + [Shown(int(r), False) for r in (*hard_rows, *random_rows)]
    return [shown[i] for i in rng.permutation(len(shown))]


def marked(words: Sequence[str], position: int) -> str:
    return " ".join(f"{MARK_OPEN}{w}{MARK_CLOSE}" if i == position else w for i, w in enumerate(words))


def messages(label: str, sentences: Sequence[str], retry: bool = False) -> list[dict[str, str]]:
    """The scoring prompt: the label, the numbered sentences with the word marked, the answer format."""
    example = json.dumps([i % 2 for i in range(len(sentences))])
    lines = [f"{LABEL_LINE}{label}", "",
             f"For each sentence, does the word marked {MARK_OPEN}like this{MARK_CLOSE} belong to the concept?"]
    lines += [f"{i + 1}. {s}" for i, s in enumerate(sentences)]
    lines += ["", f"Answer with a JSON list of {len(sentences)} numbers, 1 if it belongs and 0 if not, e.g. "
              f"{example}."]
    out = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n".join(lines)}]
    if retry:
        out.append({"role": "user", "content": RETRY_NOTE.format(example=example)})
    return out


def parse_answer(raw: str | None, n: int) -> list[int] | None:
    """The list of ``n`` 0/1 answers in a reply (the first bracketed list), None if there is none."""
    for match in _LIST.findall(raw or ""):
        try:
            values = json.loads(match)
        except json.JSONDecodeError:
            continue
        if isinstance(values, list) and len(values) == n and all(v in (0, 1) and not isinstance(v, float)
                                                                 for v in values):
            return [int(v) for v in values]
    return None


def metrics(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Precision, recall, F1 and balanced accuracy of 0/1 predictions (NaN where undefined)."""
    truth, pred = truth.astype(bool), pred.astype(bool)
    tp, fp = float((truth & pred).sum()), float((~truth & pred).sum())
    fn, tn = float((truth & ~pred).sum()), float((~truth & ~pred).sum())
    nan = float("nan")
    precision = tp / (tp + fp) if tp + fp else nan
    recall = tp / (tp + fn) if tp + fn else nan
    tnr = tn / (tn + fp) if tn + fp else nan
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else nan
    balanced = (recall + tnr) / 2 if tp + fn and tn + fp else nan
    return {"precision": precision, "recall": recall, "f1": f1, "balanced_accuracy": balanced}


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A permutation with no fixed point (the shuffled-label control: no concept keeps its own label)."""
    if n < 2:
        return np.arange(n)
    while True:
        perm = rng.permutation(n)
        if not (perm == np.arange(n)).any():
            return perm
