"""Where a layer's rows come from: a Zarr array streamed shard by shard, or an array in memory.

Both expose the same shard-by-shard reading so the scalable path runs unchanged (and gives
bit-identical results) on a run store or on a sample held in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError
from ..store import shard_ranges


@dataclass
class ArraySource:
    """Rows of an in-memory array, cut into pseudo-shards of ``shard`` rows."""

    data: np.ndarray
    shard: int = 16384

    @property
    def n(self) -> int:
        return int(self.data.shape[0])

    @property
    def d(self) -> int:
        return int(self.data.shape[1])

    def read(self, start: int, stop: int, dtype: type | None = np.float32) -> np.ndarray:
        """Rows [start, stop) as ``dtype`` (None: as stored, e.g. float16 to convert on a GPU)."""
        return np.asarray(self.data[start:stop], dtype=dtype)


@dataclass
class ZarrSource:
    """One layer array of a run store; picklable (path or URL + name), opened lazily in each process, so a
    Ray task on another node reads an object store through its own credentials."""

    path: str
    name: str
    _array: object = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict:
        return {"path": self.path, "name": self.name, "_array": None}

    @property
    def array(self):
        if self._array is None:
            import zarr

            from ..store import zarr_store

            self._array = zarr.open_array(zarr_store(f"{self.path}/{self.name}", read_only=True), mode="r")
        return self._array

    @property
    def n(self) -> int:
        return int(self.array.shape[0])

    @property
    def d(self) -> int:
        return int(self.array.shape[1])

    @property
    def shard(self) -> int:
        shards = self.array.shards or self.array.chunks
        return int(shards[0])

    def read(self, start: int, stop: int, dtype: type | None = np.float32) -> np.ndarray:
        """Rows [start, stop) as ``dtype`` (None: as stored, e.g. float16 to convert on a GPU)."""
        return np.asarray(self.array[start:stop], dtype=dtype)


Source = ArraySource | ZarrSource


def check_finite(x: np.ndarray, offset: int, where: str) -> None:
    """Refuse NaN/inf rows with the first offending row number (they poison every centroid)."""
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        row = offset + int(np.argmax(bad))
        raise UserError(f"{where}: row {row} (and {int(bad.sum()) - 1} more in rows {offset}.."
                        f"{offset + len(x) - 1}) contains NaN or inf; re-extract this layer")


def read_rows(source: Source, rows: np.ndarray, where: str) -> np.ndarray:
    """Gather sorted row indices, one shard at a time (memory: one shard + the result); only the
    gathered rows are converted to float32. Every row of a float32 array in memory is that array
    itself, not a copy (1.5 GB at 1M × 384): its readers do not write into it."""
    if isinstance(source, ArraySource) and source.data.dtype == np.float32 and len(rows) == source.n:
        out = np.ascontiguousarray(source.data)
        for lo, hi in shard_ranges(source.n, source.shard):  # the NaN check without an N×D mask
            _check_rows(out[lo:hi], rows[lo:hi], where)
        return out
    out = np.empty((len(rows), source.d), dtype=np.float32)
    for lo, hi in shard_ranges(source.n, source.shard):
        a, b = np.searchsorted(rows, [lo, hi])
        if a == b:
            continue
        block = source.read(lo, hi, None)
        out[a:b] = block[rows[a:b] - lo]
    _check_rows(out, rows, where)
    return out


def _check_rows(x: np.ndarray, rows: np.ndarray, where: str) -> None:
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        row = int(rows[np.argmax(bad)])
        raise UserError(f"{where}: row {row} contains NaN or inf; re-extract this layer")
