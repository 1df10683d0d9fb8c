"""Neuron ranking per concept: Probeless (Antverg & Belinkov, 2022) and the probe's weight mass, and the
overlap of a concept's top neurons with its super-concept's (the paper's super-/sub-concept table).

Pure array code: the stage hands in per-concept sums of the layer's vectors (made while reading the layer
once) and gets arrays back.
"""

from __future__ import annotations

import numpy as np


def concept_sums(x: np.ndarray, assignments: np.ndarray, k: int, sums: np.ndarray | None = None,
                 counts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Add the rows of ``x`` into per-concept sums (float64 [K, D]) and counts (int64 [K]); called once per
    shard, so the layer is read once."""
    d = x.shape[1]
    sums = np.zeros((k, d), dtype=np.float64) if sums is None else sums
    counts = np.zeros(k, dtype=np.int64) if counts is None else counts
    np.add.at(sums, assignments, x) if len(x) < 4096 else _add_sorted(sums, x, assignments)
    counts += np.bincount(assignments, minlength=k)
    return sums, counts


def _add_sorted(sums: np.ndarray, x: np.ndarray, assignments: np.ndarray) -> None:
    """``np.add.at`` is slow on large blocks: sort by concept and reduce contiguous runs instead."""
    order = np.argsort(assignments, kind="stable")
    ids = assignments[order]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    sums[ids[starts]] += np.add.reduceat(x[order].astype(np.float64), starts, axis=0)


def probeless(sums: np.ndarray, counts: np.ndarray, std: np.ndarray | None = None) -> np.ndarray:
    """|mean activation inside the concept − mean outside| per concept and neuron (float64 [K, D]), in
    units of each neuron's standard deviation when ``std`` is given: raw differences rank a layer's few
    outlier neurons (of large range) first for every concept, and the probes see standardized neurons."""
    total, n = sums.sum(axis=0), counts.sum()
    inside = sums / np.maximum(counts, 1)[:, None]
    outside = (total[None, :] - sums) / np.maximum(n - counts, 1)[:, None]
    diff = np.abs(inside - outside)
    return diff if std is None else diff / np.maximum(std, 1e-12)[None, :]


def top_neurons(scores: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` highest-scoring neurons of every row, best first (int32 [K, n]); ties go to the lower index."""
    n = min(n, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")
    return order[:, :n].astype(np.int32)


def weight_mass(weights: np.ndarray) -> np.ndarray:
    """Each neuron's share of a probe's absolute weight (NeuroX's weight-mass ranking), per concept."""
    mass = np.abs(weights)
    return mass / np.maximum(mass.sum(axis=1, keepdims=True), 1e-12)


def parent_sums(sums: np.ndarray, counts: np.ndarray, parent: np.ndarray,
                k_parent: int) -> tuple[np.ndarray, np.ndarray]:
    """Sums and counts of the super-concepts (the same tree cut at the next smaller K): the tree is nested,
    so a parent's tokens are exactly its children's."""
    psums = np.zeros((k_parent, sums.shape[1]), dtype=np.float64)
    np.add.at(psums, parent, sums)
    return psums, np.bincount(parent, weights=counts, minlength=k_parent).astype(np.int64)


def overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise share of ``a``'s top neurons that are also in ``b``'s (float64 [K])."""
    return np.array([len(set(x.tolist()) & set(y.tolist())) / max(len(x), 1) for x, y in zip(a, b, strict=True)])
