"""How well the service places words the run never saw: held-out agreement, and the bound it is judged by.

A run A is clustered without some held-out sentences, a run B with them (same settings). Each of A's
concepts is matched to the B concept most of its tokens fell into. The held-out agreement is the share
of held-out tokens whose served A concept is matched to the B concept they got; the same share over
A's own tokens is the clustering's stability under the added data (exact Ward's own stability when
both runs are exact): a perfect index still cannot agree more than the clustering agrees with itself.
"""

from __future__ import annotations

import numpy as np


def match(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each concept of ``a`` (ids 0..max), the concept of ``b`` most of its tokens have (-1: none)."""
    ka, kb = int(a.max()) + 1, int(b.max()) + 1
    counts = np.zeros((ka, kb), dtype=np.int64)
    np.add.at(counts, (a, b), 1)
    out = counts.argmax(axis=1)
    out[counts.sum(axis=1) == 0] = -1
    return out


def agreement(a_train: np.ndarray, b_train: np.ndarray, a_served: np.ndarray, b_held: np.ndarray) -> dict:
    """``a_train``/``b_train``: A's and B's concept of A's tokens; ``a_served``: the service's (A) concept
    of the held-out tokens; ``b_held``: B's concept of them."""
    mapping = match(a_train, b_train)
    return {"held_out_agreement": float(np.mean(mapping[a_served] == b_held)),
            "stability": float(np.mean(mapping[a_train] == b_train)),
            "held_out_tokens": int(len(b_held)), "train_tokens": int(len(a_train)),
            "chance": float(np.max(np.bincount(b_held)) / len(b_held))}
