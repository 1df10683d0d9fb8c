"""Structured logs: one line per event, ``key=value`` pairs, so runs can be grepped and parsed."""

from __future__ import annotations

import logging
import sys
import time


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        fields = getattr(record, "fields", {}) or {}
        extra = "".join(f" {k}={_fmt(v)}" for k, v in fields.items())
        return f"{ts} {record.levelname.lower()} {record.name} {record.getMessage()}{extra}"


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return f'"{text}"' if " " in text else text


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger("cluster_service")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def log_event(logger: logging.Logger, message: str, level: int = logging.INFO, **fields: object) -> None:
    """Log ``message`` with ``key=value`` fields."""
    logger.log(level, message, extra={"fields": fields})
