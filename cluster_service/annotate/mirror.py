"""The reply cache of a run on an object store: a local SQLite file mirrored to the store's copy.

SQLite needs a local file (locks, WAL), and an object store has neither, so for a run at a URL the
cache lives on local disk: ``--cache-path``, or by default
``$XDG_CACHE_HOME/cluster_service/annotations/<sha256 of the URL>.sqlite`` (``~/.cache`` without it).
At start the store's ``annotations.sqlite``, if any, is merged in (replies already here are kept).
While the pool runs, a consistent snapshot is uploaded to the store with one PUT at most every
``UPLOAD_EVERY_S`` seconds of work (from a background thread, so calls go on meanwhile), and once more
at the end. A job killed and resubmitted on another node therefore repays at most the last ~30 s of
calls; every other reply comes from the store's copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..logs import log_event
from ..store import ANNOTATIONS, RunStore
from .cache import Reply, ReplyCache

log = logging.getLogger("cluster_service.annotate")

UPLOAD_EVERY_S = 30.0


def default_path(location: str) -> Path:
    """The local cache file of the run at ``location`` (one per run, stable across processes)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "cluster_service" / "annotations" / f"{hashlib.sha256(location.encode()).hexdigest()[:24]}.sqlite"


@contextlib.contextmanager
def store_copy(store: RunStore) -> Iterator[Path | None]:
    """The store's annotations.sqlite downloaded to a temporary file (None when the store has none)."""
    if not store.has(ANNOTATIONS):
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="cs-annotations-") as tmp:
        path = Path(tmp) / ANNOTATIONS
        path.write_bytes(store.read_bytes(ANNOTATIONS))
        yield path


class MirroredCache(ReplyCache):
    """A ReplyCache whose file is merged from the store at start and uploaded to it as it grows."""

    def __init__(self, path: str | Path, store: RunStore, every_s: float = UPLOAD_EVERY_S):
        super().__init__(path)
        self.store = store
        self.every_s = every_s
        with store_copy(store) as copy:
            if copy is not None:
                before = len(self)
                self.db.execute("ATTACH DATABASE ? AS stored", (str(copy),))
                try:
                    self.db.execute("INSERT OR IGNORE INTO replies SELECT * FROM stored.replies")
                finally:
                    self.db.execute("DETACH DATABASE stored")
                log_event(log, "reply cache merged from the store", run=store.where(), added=len(self) - before,
                          cached=len(self))
        self.uploader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cache-upload")
        self.upload: Future | None = None
        self.last = time.monotonic()
        self.dirty = False

    def put(self, key: str, backend: str, model: str, request: dict[str, Any], reply: Reply) -> None:
        super().put(key, backend, model, request, reply)
        self.dirty = True
        if time.monotonic() - self.last >= self.every_s and (self.upload is None or self.upload.done()):
            self._settle()
            self.upload = self.uploader.submit(self.store.write_bytes, ANNOTATIONS, self._snapshot())

    def _snapshot(self) -> bytes:
        """A consistent copy of the whole cache (the live file may have a WAL beside it)."""
        self.last, self.dirty = time.monotonic(), False
        with tempfile.TemporaryDirectory(prefix="cs-annotations-") as tmp:
            out = Path(tmp) / ANNOTATIONS
            self.db.execute("VACUUM INTO ?", (str(out),))
            return out.read_bytes()

    def _settle(self) -> None:
        """Wait for the upload in flight; a failed one is logged and repeated by the next upload."""
        if self.upload is None:
            return
        try:
            self.upload.result()
        except Exception as exc:  # noqa: BLE001 - the next upload carries the same replies
            self.dirty = True
            log_event(log, "reply cache upload failed; retrying later", level=logging.WARNING,
                      run=self.store.where(), error=type(exc).__name__)
        self.upload = None

    def close(self) -> None:
        """Upload what the store lacks (this one raises on failure), then close the file."""
        try:
            self._settle()
            self.uploader.shutdown()
            if self.dirty:
                self.store.write_bytes(ANNOTATIONS, self._snapshot())
        finally:
            super().close()
