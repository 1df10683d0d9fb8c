"""The run store: one directory or object-store prefix that is the contract between stages (DESIGN.md).

Layout (keys relative to the root; the same on a local disk and on an object store)::

    RUN/
      run.json                      resolved configs, versions, model id, corpus fingerprint, stage status
      sentences.parquet             sentence_id, text
      tokens.parquet                row, sentence_id, position, word, occurrence
      activations.zarr/layer_{L}    float16 [N, D], sharded along rows only, full width
      extract_done/shard_{i}        done-marker of one row shard (written after its data is durable)
      clusters/layer_{L}/           leaves, linkage, assignments_k{K}.npy, state.json
      concepts/layer_{L}_k{K}.parquet   concept table (schema: cluster.concepts.CONCEPT_SCHEMA)
      labels/layer_{L}_k{K}/        one labels file per annotator, default.json (annotate.labels)
      annotations.sqlite            LLM reply cache (a copy uploaded now and then on object stores)

Which stage writes which key is declared with each stage (``cluster_service.stage.Stage``) and drawn
in ARCHITECTURE.md; the schemas are declared next to the stage that writes them.

RUN is a local path or an fsspec URL (``s3://bucket/prefix``, ``gs://``, ``az://`` ...: see
``jobs/paths.py`` for what is accepted). Stages never touch the filesystem themselves: every read and
write goes through the small methods below, addressed by key, over one fsspec filesystem (the local
one for a path), so both kinds of root take the same code path. Nothing outside this module builds a
path; ``local_path`` hands one out only where a tool needs a real file (SQLite).

Only the driver of a stage writes ``run.json``; workers own whole Zarr shards and write nothing else.
A reader never sees half a file and a killed writer leaves nothing that looks done:

- on a local path every file is written to a temporary name, fsynced and renamed into place;
- on an object store every write is one PUT (an object appears whole or not at all, and S3-style stores
  are read-after-write consistent), so no temporary name is needed; there is no rename, so order is what
  keeps data safe: a shard's done-marker is PUT only after that shard's data objects of every layer.

Credentials and endpoints come from each process's environment (for S3: AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_PROFILE, instance roles), never from the store or the
logs; a RunStore pickles as its location only, so a Ray worker opens the store with its own credentials.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import UserError

MANIFEST = "run.json"

#: Keys of the layout, relative to the root.
TOKENS = "tokens.parquet"
SENTENCES = "sentences.parquet"
ACTIVATIONS = "activations.zarr"
DONE = "extract_done"
ANNOTATIONS = "annotations.sqlite"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Temporary file beside ``path``, fsync, rename: a reader sees the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _access_errors() -> tuple[type[BaseException], ...]:
    """Exceptions meaning 'this process may not use the store' (botocore's own when s3fs is installed)."""
    try:
        from botocore.exceptions import NoCredentialsError, PartialCredentialsError
    except ImportError:
        return (PermissionError,)
    return (PermissionError, NoCredentialsError, PartialCredentialsError)


# ---- key names and their parsing: the one place that knows them -----------------------------------
def layer_name(layer: int) -> str:
    """A layer's array name in ``activations.zarr`` (also its folder under ``clusters/``)."""
    return f"layer_{layer}"


def layer_of(name: str) -> int | None:
    """The layer a ``layer_{L}`` name stands for, None for any other name."""
    prefix, _, number = name.partition("_")
    return int(number) if prefix == "layer" and number.isdigit() else None


def shard_ranges(n_rows: int, shard_rows: int) -> list[tuple[int, int]]:
    """Row ranges [start, stop) of the shards of an N-row array: the unit of extraction and assignment."""
    return [(s, min(s + shard_rows, n_rows)) for s in range(0, n_rows, shard_rows)]


def marker_key(shard: int) -> str:
    """The done-marker of one extraction shard (written after its data of every layer is durable)."""
    return f"{DONE}/shard_{shard:06d}"


def shard_of(name: str) -> int | None:
    """The shard a marker's file name stands for, None for any other name."""
    prefix, _, number = name.partition("_")
    return int(number) if prefix == "shard" and number.isdigit() else None


def zarr_store(location: str, read_only: bool = False):
    """What ``zarr.open_*`` takes for ``location``: a local store whose writes are durable when they
    return, or an FsspecStore for a URL (a PUT that returned is stored)."""
    from .jobs.paths import url_scheme

    if url_scheme(location) is None:
        return _durable_local_store(location, read_only)
    from zarr.storage import FsspecStore

    return FsspecStore.from_url(location, read_only=read_only)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _durable_local_store(location: str, read_only: bool):
    """Zarr's LocalStore with every ``set`` fsynced before it returns, so a done-marker written after a
    shard always means its bytes are on disk, whatever file layout Zarr picks for the shard."""
    import asyncio

    from zarr.storage import LocalStore

    class DurableLocalStore(LocalStore):
        async def set(self, key: str, value) -> None:  # type: ignore[override]
            await super().set(key, value)
            await asyncio.to_thread(_fsync_file, self.root / key)

    return DurableLocalStore(location, read_only=read_only)


class RunStore:
    """One run's root, local or remote, and the few I/O operations stages need, addressed by key.

    Both kinds of root go through one fsspec filesystem (``LocalFileSystem`` for a path); the only
    difference is how a whole file is written: on a local disk to a temporary name, fsynced and
    renamed, on an object store as one PUT."""

    def __init__(self, root: str | Path):
        from fsspec.core import url_to_fs
        from fsspec.implementations.local import LocalFileSystem

        from .jobs.paths import shared_run_path, url_scheme

        # an unknown scheme would otherwise silently become a local folder named 's3:'
        location = shared_run_path(str(root), absolute=False)
        local = url_scheme(location) is None
        self.location = location if local else location.rstrip("/")
        self.fs, base = url_to_fs(os.path.abspath(location) if local else self.location)
        self._base = base.rstrip("/") or "/"
        self._local = isinstance(self.fs, LocalFileSystem)

    def __reduce__(self):
        return (RunStore, (self.location,))

    def where(self, key: str = "") -> str:
        """Where ``key`` lives, as a path or URL: for messages, Zarr and other processes."""
        if self._local:
            return str(Path(self.location) / key) if key else self.location
        return f"{self.location}/{key}" if key else self.location

    def local_path(self, key: str = "") -> Path | None:
        """The file's path on this machine when the store is a local directory (for tools that need a
        real file, such as SQLite); None on an object store."""
        return Path(self.where(key)) if self._local else None

    def _path(self, key: str) -> str:
        return f"{self._base}/{key}" if key else self._base

    @staticmethod
    def clusters_key(layer: int) -> str:
        return f"clusters/{layer_name(layer)}"

    @staticmethod
    def concepts_key(layer: int, k: int) -> str:
        return f"concepts/layer_{layer}_k{k}.parquet"

    @staticmethod
    def layer_name(layer: int) -> str:
        return layer_name(layer)

    # ---- bytes, listings, removal ---------------------------------------------------------------
    def has(self, key: str) -> bool:
        self.fs.invalidate_cache(self._path(key))  # another process may have written it since
        with self._reach(key):
            return self.fs.exists(self._path(key))

    def read_bytes(self, key: str) -> bytes:
        with self._reach(key):
            return self.fs.cat_file(self._path(key))

    def write_bytes(self, key: str, data: bytes) -> None:
        """Local: temporary file, fsync, rename. Object store: one PUT (the object appears whole)."""
        if self._local:
            atomic_write_bytes(Path(self._path(key)), data)
            return
        with self._reach(key, writing=True):
            self.fs.pipe_file(self._path(key), data)

    @contextlib.contextmanager
    def _reach(self, key: str, writing: bool = False) -> Iterator[None]:
        """Missing credentials, refused access, or (on a write) a missing bucket become one clear line."""
        errors = _access_errors() + ((FileNotFoundError,) if writing and not self._local else ())
        try:
            yield
        except errors as exc:
            raise UserError(f"{self.where(key)}: cannot {'write' if writing else 'read'} ({type(exc).__name__}: "
                            f"{exc}); check that the bucket exists and that this environment's credentials (for S3: "
                            "AWS_* variables, AWS_PROFILE, an instance role) may use it") from None

    def listdir(self, folder: str) -> list[str]:
        """Names directly under ``folder`` (none if it does not exist), temporary files left out."""
        path = self._path(folder)
        self.fs.invalidate_cache(path)  # listings are cached per process; workers add markers meanwhile
        try:
            with self._reach(folder):
                names = self.fs.ls(path, detail=False)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(n for n in (name.rstrip("/").rsplit("/", 1)[-1] for name in names) if not n.startswith("."))

    def remove(self, key: str) -> None:
        """Delete a file or a whole folder; nothing if it is not there."""
        if self.has(key):
            with self._reach(key, writing=True):
                self.fs.rm(self._path(key), recursive=True)

    def create(self) -> None:
        """Make the root (object stores have no folders: the bucket must exist, nothing to do)."""
        if self._local:
            self.fs.makedirs(self._base, exist_ok=True)

    def size(self) -> int:
        """Bytes stored under the root."""
        with self._reach(""):
            return int(self.fs.du(self._base, total=True))

    # ---- parquet --------------------------------------------------------------------------------
    def read_parquet(self, key: str, columns: list[str] | None = None) -> pa.Table:
        if self._local:  # Arrow's own file reader: no Python file object in the way of a large table
            return pq.read_table(self._path(key), columns=columns)
        with self._reach(key), self.fs.open(self._path(key), "rb") as fh:  # seekable: wanted columns only
            return pq.read_table(fh, columns=columns)

    def write_parquet(self, key: str, table: pa.Table) -> None:
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        self.write_bytes(key, sink.getvalue().to_pybytes())

    # ---- manifest -----------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.has(MANIFEST)

    def read_manifest(self) -> dict[str, Any]:
        if not self.exists():
            raise UserError(f"{self.where()}: not a run store (no {MANIFEST}); run `cluster-service extract` first")
        try:
            return json.loads(self.read_bytes(MANIFEST))
        except json.JSONDecodeError as exc:
            raise UserError(f"{self.where(MANIFEST)}: corrupt JSON ({exc})") from None

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        self.write_bytes(MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode())

    def update_manifest(self, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        manifest = self.read_manifest() if self.exists() else {}
        change(manifest)
        self.write_manifest(manifest)
        return manifest

    def record_config(self, section: str, config: dict[str, Any]) -> None:
        """Keep the resolved config a stage ran with in run.json (the last one, per section)."""
        self.update_manifest(lambda m: m.setdefault("config", {}).__setitem__(section, config))

    def set_stage(self, stage: str, status: str, **info: Any) -> None:
        """Record a stage's status ("running" / "done") and facts about it in run.json."""

        def change(m: dict[str, Any]) -> None:
            entry = m.setdefault("stages", {}).setdefault(stage, {})
            entry.update(info)
            entry["status"] = status
            entry["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

        self.update_manifest(change)

    # ---- tables -------------------------------------------------------------------------------
    def read_tokens(self, columns: list[str] | None = None) -> pa.Table:
        if not self.has(TOKENS):
            raise UserError(f"{self.where(TOKENS)}: missing; run `cluster-service extract` first")
        return self.read_parquet(TOKENS, columns)

    def read_sentences(self) -> pa.Table:
        if not self.has(SENTENCES):
            raise UserError(f"{self.where(SENTENCES)}: missing; run `cluster-service extract` first")
        return self.read_parquet(SENTENCES)

    def has_concepts(self, layer: int, k: int) -> bool:
        return self.has(self.concepts_key(layer, k))

    def read_concepts(self, layer: int, k: int) -> pa.Table:
        if not self.has_concepts(layer, k):
            raise UserError(f"{self.where(self.concepts_key(layer, k))}: no concept table; run "
                            f"`cluster-service cluster {self.where()} --layer {layer} --k {k}` first")
        return self.read_parquet(self.concepts_key(layer, k))

    def write_concepts(self, layer: int, k: int, table: pa.Table) -> None:
        self.write_parquet(self.concepts_key(layer, k), table)

    # ---- activations --------------------------------------------------------------------------
    def zarr_store(self, read_only: bool = False):
        """The activations group's root as Zarr takes it (a path, or an FsspecStore on an object store)."""
        return zarr_store(self.where(ACTIVATIONS), read_only=read_only)

    def open_activations(self, mode: str = "r"):
        import zarr

        if not self.has(ACTIVATIONS):
            raise UserError(f"{self.where(ACTIVATIONS)}: missing; run `cluster-service extract` first")
        return zarr.open_group(self.zarr_store(read_only=mode == "r"), mode=mode)

    def stored_layers(self) -> list[int]:
        """The layers the activations group holds, ascending."""
        names = self.open_activations("r").array_keys()
        return sorted(layer for layer in map(layer_of, names) if layer is not None)

    def layer_array(self, layer: int):
        group = self.open_activations("r")
        name = self.layer_name(layer)
        if name not in group:
            raise UserError(f"{self.where(ACTIVATIONS)}: layer {layer} not stored (stored: {self.stored_layers()})")
        return group[name]
