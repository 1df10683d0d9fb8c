"""What the analysis reads of one layer and K, each read at most once and only when a step asks for it:
the concept table, the token → concept assignments, the tokens table, and the layer's vectors (one pass
over the Zarr shards, which also sums them per concept for Probeless)."""

from __future__ import annotations

import re
from functools import cached_property

import numpy as np
import pyarrow as pa

from ..cluster.checkpoint import LayerDir
from ..cluster.concepts import concept_settings_key
from ..cluster.source import ZarrSource
from ..errors import UserError
from ..extract.stage import require_activations
from ..progress import progress_bar
from ..store import ACTIVATIONS, RunStore, shard_ranges
from .neurons import concept_sums

_ASSIGNMENTS = re.compile(r"assignments_k(\d+)\.npy")


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def optional_bar(total: int, desc: str, unit: str, show: bool):
    """A progress bar, or nothing at all with ``--no-progress``."""
    return progress_bar(total, desc, unit) if show else _NoBar()


def assignments_name(k: int) -> str:
    return f"assignments_k{k}.npy"


def clustered_ks(store: RunStore, layer: int) -> list[int]:
    """The Ks this layer was cut at (those with an assignments file)."""
    names = store.listdir(store.clusters_key(layer))
    return sorted(int(m[1]) for n in names if (m := _ASSIGNMENTS.fullmatch(n)))


def has_assignments(store: RunStore, layer: int, k: int) -> bool:
    return store.has(f"{store.clusters_key(layer)}/{assignments_name(k)}")


def read_assignments(store: RunStore, layer: int, k: int) -> np.ndarray:
    key = f"{store.clusters_key(layer)}/{assignments_name(k)}"
    if not store.has(key):
        raise UserError(f"{store.where(key)}: no assignments; run `cluster-service cluster {store.where()} "
                        f"--layer {layer} --k {k}` first")
    return LayerDir(store, layer).load(assignments_name(k)).astype(np.int64)


class LayerInputs:
    """One layer and K of a run store, read lazily; ``layer_reads`` counts passes over the layer's vectors."""

    def __init__(self, store: RunStore, layer: int, k: int, progress: bool = True):
        self.store, self.layer, self.k, self.progress = store, layer, k, progress
        self.layer_reads = 0

    @cached_property
    def concepts(self) -> pa.Table:
        return self.store.read_concepts(self.layer, self.k)

    @property
    def concepts_key(self) -> str | None:
        return concept_settings_key(self.concepts)

    @cached_property
    def assignments(self) -> np.ndarray:
        a = read_assignments(self.store, self.layer, self.k)
        if len(a) and (a.min() < 0 or a.max() >= self.k):
            raise UserError(f"{self.store.where(self.store.clusters_key(self.layer))}/{assignments_name(self.k)}: "
                            f"concept ids outside 0..{self.k - 1}; re-run clustering")
        return a

    @cached_property
    def members(self) -> list[np.ndarray]:
        """Rows of every concept, sorted."""
        order = np.argsort(self.assignments, kind="stable")
        bounds = np.searchsorted(self.assignments[order], np.arange(self.k + 1))
        return [order[bounds[c]:bounds[c + 1]] for c in range(self.k)]

    @cached_property
    def tokens(self) -> pa.Table:
        tokens = self.store.read_tokens(["row", "sentence_id", "position", "word"]).sort_by("row")
        if len(tokens) != len(self.assignments):
            raise UserError(f"{self.store.where('tokens.parquet')}: {len(tokens)} tokens but "
                            f"{len(self.assignments)} assignments in layer {self.layer}; re-run clustering")
        return tokens

    @cached_property
    def types(self) -> np.ndarray:
        """Word type id of every row (for the probes' control task)."""
        return self.tokens.column("word").combine_chunks().dictionary_encode().indices.to_numpy().astype(np.int64)

    @cached_property
    def centroids(self) -> np.ndarray:
        return np.asarray(self.concepts.column("centroid").to_pylist(), dtype=np.float64)

    @cached_property
    def parent(self) -> np.ndarray | None:
        if "parent" not in self.concepts.column_names:
            return None
        parent = self.concepts.column("parent").to_pylist()
        return None if any(p is None for p in parent) else np.asarray(parent, dtype=np.int64)

    @property
    def source(self) -> ZarrSource:
        require_activations(self.store, self.layer)
        return ZarrSource(self.store.where(ACTIVATIONS), self.store.layer_name(self.layer))

    @cached_property
    def vectors(self) -> np.ndarray:
        """The whole layer as stored (float16 [N, D]), read once shard by shard; the per-concept sums and
        the per-neuron mean and variance are made in the same pass."""
        source = self.source
        if source.n != len(self.assignments):
            raise UserError(f"{self.store.where(ACTIVATIONS)}/{self.store.layer_name(self.layer)}: {source.n} "
                            f"rows but {len(self.assignments)} assignments; re-run clustering")
        out = np.empty((source.n, source.d), dtype=np.float16)
        sums = counts = None
        sq = np.zeros(source.d, dtype=np.float64)
        ranges = shard_ranges(source.n, source.shard)
        bar = optional_bar(len(ranges), f"read layer {self.layer}", "shard", self.progress)
        for lo, hi in ranges:
            block = source.read(lo, hi, None)
            out[lo:hi] = block
            x = block.astype(np.float32)
            sums, counts = concept_sums(x, self.assignments[lo:hi], self.k, sums, counts)
            sq += (x.astype(np.float64) ** 2).sum(axis=0)
            bar.update(1)
        bar.close()
        self.layer_reads += 1
        self._sums, self._counts = sums, counts
        n = max(source.n, 1)
        self._mean = sums.sum(axis=0) / n
        self._std = np.sqrt(np.maximum(sq / n - self._mean ** 2, 1e-12))
        return out

    @property
    def sums(self) -> tuple[np.ndarray, np.ndarray]:
        self.vectors  # noqa: B018 - the pass that makes them
        return self._sums, self._counts

    @property
    def scale(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-neuron mean and standard deviation of the layer."""
        self.vectors  # noqa: B018
        return self._mean, self._std
