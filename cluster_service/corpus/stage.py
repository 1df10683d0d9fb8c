"""The ingest stage: a corpus file → ``sentences.parquet`` and ``tokens.parquet`` in the run store.

Its own stage (``cluster-service ingest``) so that extraction only reads tables, and so that the
tables a run's every later stage keys on are made once. The corpus config is recorded in
``run.json`` after both tables are durable: a run killed before that is re-ingested from scratch, a
finished one is skipped, and one asked to ingest with another configuration refuses in one line.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from ..errors import UserError
from ..logs import log_event
from ..store import SENTENCES, TOKENS, RunStore
from .config import CorpusConfig
from .ingest import ingest

log = logging.getLogger("cluster_service.corpus")


def ingest_run(store: RunStore, cfg: CorpusConfig) -> dict[str, Any]:
    """Ingest ``cfg``'s corpus into ``store`` unless it already holds the same; returns a summary."""
    wanted = dataclasses.asdict(cfg)
    manifest = store.read_manifest() if store.exists() else {}
    have = manifest.get("config", {}).get("corpus")
    if have is not None and store.has(TOKENS) and store.has(SENTENCES):
        diffs = [f"corpus.{k}: stored {have.get(k)!r}, asked {v!r}" for k, v in wanted.items() if have.get(k) != v]
        if diffs:
            raise UserError(f"{store.where()}: exists with another configuration ({'; '.join(diffs)}); "
                            "use a new run directory")
        return {"tokens": manifest.get("tokens"), "sentences": manifest.get("sentences"), "ingested": False}
    t0 = time.perf_counter()
    data = ingest(cfg)
    store.create()
    store.write_parquet(SENTENCES, data.sentences)
    store.write_parquet(TOKENS, data.tokens)

    def record(m: dict[str, Any]) -> None:
        m.setdefault("config", {})["corpus"] = wanted
        m.update(tokens=data.tokens.num_rows, sentences=data.sentences.num_rows,
                 corpus_fingerprint=data.fingerprint)
        m.setdefault("stages", {})["ingest"] = {"status": "done"}

    store.update_manifest(record)
    seconds = round(time.perf_counter() - t0, 3)
    log_event(log, "ingest done", run=store.where(), tokens=data.tokens.num_rows,
              sentences=data.sentences.num_rows, seconds=seconds)
    return {"tokens": data.tokens.num_rows, "sentences": data.sentences.num_rows, "ingested": True,
            "seconds": seconds}
