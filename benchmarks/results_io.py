"""Benchmark result files in the shared format: rows keyed by machine + parameters, merged on rerun."""

from __future__ import annotations

import json
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def merge_rows(name: str, rows: list[dict], identity: tuple[str, ...], path: Path | None = None) -> Path:
    """Replace rows with the same identity (machine + parameter fields), keep the others."""
    path = path or RESULTS / f"{name}.json"
    data = json.loads(path.read_text()) if path.is_file() else {"benchmark": name, "rows": []}
    today = time.strftime("%Y-%m-%d")
    new_keys = set()
    for row in rows:
        row.setdefault("date", today)
        new_keys.add(tuple(row.get(k) for k in ("machine", *identity)))
    kept = [r for r in data["rows"] if tuple(r.get(k) for k in ("machine", *identity)) not in new_keys]
    data["rows"] = kept + rows
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def print_table(rows: list[dict], columns: list[str]) -> None:
    def cell(v: object) -> str:
        if isinstance(v, float):
            return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return "" if v is None else str(v)

    widths = [max(len(c), *(len(cell(r.get(c))) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for r in rows:
        print("  ".join(cell(r.get(c)).ljust(w) for c, w in zip(columns, widths, strict=True)))
