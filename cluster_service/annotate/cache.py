"""The persistent reply cache: a call that succeeded once is never paid for again.

SQLite in WAL mode, one row per distinct request, committed as soon as the reply arrives: a process
killed at any moment loses at most the replies still in flight. The key is a hash of the backend,
model, messages and sampling parameters (never the endpoint's key or URL), so a rerun or a resume
rebuilds the same prompts and finds them.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS replies (
  key TEXT PRIMARY KEY,
  backend TEXT NOT NULL,
  model TEXT NOT NULL,
  request TEXT NOT NULL,
  content TEXT,
  finish_reason TEXT,
  response_model TEXT,
  prompt_tokens INTEGER,
  completion_tokens INTEGER,
  latency_s REAL,
  created REAL NOT NULL
)
"""


@dataclass(frozen=True)
class Reply:
    """A completed chat call: what the model said and what it cost."""

    content: str | None
    finish_reason: str | None
    response_model: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    cached: bool = False
    first_token_s: float | None = None  # time to the first streamed chunk (queue wait + prompt processing)


def request_key(backend: str, model: str, request: dict[str, Any]) -> str:
    blob = json.dumps({"backend": backend, "model": model, "request": request}, sort_keys=True,
                      ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class ReplyCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # durable across a process kill, cheap per commit
        self.db.execute(SCHEMA)

    def get(self, key: str) -> Reply | None:
        row = self.db.execute(
            "SELECT content, finish_reason, response_model, prompt_tokens, completion_tokens, latency_s "
            "FROM replies WHERE key = ?", (key,)).fetchone()
        return None if row is None else Reply(*row, cached=True)

    def put(self, key: str, backend: str, model: str, request: dict[str, Any], reply: Reply) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (key, backend, model, json.dumps(request, ensure_ascii=False), reply.content,
             reply.finish_reason, reply.response_model, reply.prompt_tokens, reply.completion_tokens,
             reply.latency_s, time.time()))

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]

    def close(self) -> None:
        self.db.close()
