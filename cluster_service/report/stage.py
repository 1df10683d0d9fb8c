"""The report stage: a self-contained static site under ``RUN/report/`` (its only output).

``index.html`` with the package's own ``app.js`` and ``style.css`` (no CDN, works offline from disk), and
the data under ``report/data/`` as small ``.js`` files that the page loads with ``<script>`` tags when it
needs them: Chromium refuses fetch/XHR on ``file://`` pages, but not scripts. Every corpus string goes
into those files as JSON and onto the page through ``textContent``, never as HTML, so a sentence with
``<script>`` in it shows as text and runs nothing.

Idempotent: a rerun rewrites only files whose bytes changed and removes files of the report that are no
longer produced (a table dropped by ``--layers``); it never touches anything outside ``report/``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from importlib import resources
from typing import Any

from ..errors import UserError
from ..export.concepts import LabelledTable, concept_tables, labelled_table
from ..logs import log_event
from ..progress import progress_bar
from ..store import RunStore
from . import data
from .config import ReportConfig

log = logging.getLogger("cluster_service.report")
ROOT = "report"
INDEX = f"{ROOT}/index.html"
ASSETS = ("index.html", "app.js", "style.css")


def data_script(name: str, value: Any) -> bytes:
    """A data file: one call that hands ``value`` to the page (ASCII-only JSON, so no character of the
    corpus can end the string or the script)."""
    return f"CS.put({json.dumps(name)}, {json.dumps(value, ensure_ascii=True, separators=(',', ':'))});\n".encode()


def site_files(store: RunStore, cfg: ReportConfig) -> dict[str, bytes]:
    """Every file of the report, by key under ``report/``."""
    wanted = concept_tables(store, cfg.layers, cfg.k)
    if not wanted:
        raise UserError(f"{store.where('concepts')}: no concept tables"
                        + (f" for layers {cfg.layers or 'any'} and K {cfg.k or 'any'}" if cfg.layers or cfg.k else "")
                        + f"; run `cluster-service cluster {store.where()}` first")
    every = concept_tables(store, sorted({layer for layer, _ in wanted}))
    files: dict[str, bytes] = {}
    static = resources.files("cluster_service.report") / "static"
    for name in ASSETS:
        files[name] = (static / name).read_bytes()
    labelled: dict[tuple[int, int], LabelledTable] = {}
    with progress_bar(len(every), desc="report: reading tables", unit="table") as bar:
        for layer, k in every:
            table = labelled_table(store, layer, k)
            # every member word (one string per token: millions in a large run) is not shown; drop it now so
            # that only one table's words are in memory at a time
            words = [n for n in ("words",) if n in table.concepts.column_names]
            labelled[(layer, k)] = dataclasses.replace(table, concepts=table.concepts.drop_columns(words))
            bar.update(1)
    index_tables = []
    for layer, k in wanted:
        table = labelled[(layer, k)]
        near = {other: data.default_labels(labelled[(lay, other)]) for lay, other in every if lay == layer}
        listing = data.concept_list(table, cfg.top_words)
        details = data.concept_details(store, table, near, cfg.chunk)
        name = table.name
        files[f"data/{name}.js"] = data_script(name, listing)
        files[f"data/{name}.words.js"] = data_script(f"{name}.words", data.word_index(table))
        for i, part in enumerate(details):
            files[f"data/{name}.d{i}.js"] = data_script(f"{name}.d{i}", part)
        index_tables.append({key: listing[key] for key in ("name", "layer", "k", "annotators", "default", "scores",
                                                           "has_map")}
                            | {"concepts": len(listing["rows"]), "chunk": cfg.chunk, "notes": listing["notes"]})
    flows = data.flows(store)
    for flow in flows:
        files[f"data/{flow['name']}.js"] = data_script(flow["name"], flow)
    run = data.run_info(store)
    files["data/run.js"] = data_script("run", run)
    files["data/index.js"] = data_script("index", {
        "run": store.where(), "model": run["model"].get("name"), "tokens": run["tokens"],
        "sentences": run["sentences"], "tables": index_tables,
        "flows": [{k: f[k] for k in ("name", "a", "b", "k")} | {"tables": sorted(f["tables"])} for f in flows]})
    return files


def report_run(store: RunStore, cfg: ReportConfig) -> dict[str, Any]:
    """The stage: write (or refresh) the report; returns where ``index.html`` is and what it holds."""
    start = time.monotonic()
    files = site_files(store, cfg)
    written = 0
    for name, content in files.items():
        key = f"{ROOT}/{name}"
        if not (store.has(key) and store.read_bytes(key) == content):
            store.write_bytes(key, content)
            written += 1
    stale = [f"{ROOT}/data/{n}" for n in store.listdir(f"{ROOT}/data") if f"data/{n}" not in files]
    for key in stale:
        store.remove(key)
    seconds = round(time.monotonic() - start, 3)
    tables = sum(1 for n in files if n.startswith("data/layer_") and n.count(".") == 1)
    local = store.local_path(INDEX)
    summary = {"index": str(local.absolute()) if local else store.where(INDEX), "files": len(files),
               "written": written, "removed": len(stale),
               "tables": tables, "bytes": sum(map(len, files.values())), "seconds": seconds}
    store.set_stage("report", "done", seconds=seconds, files=len(files))
    log_event(log, "report written", index=store.where(INDEX), files=len(files), written=written, seconds=seconds)
    return summary


def models_index(parent: RunStore, runs: dict[str, str]) -> str:
    """The parent run of ``run --models``: ``report/index.html`` linking each model's own report (a page of
    its own, not part of any sibling's site). ``runs`` maps a model name to its sibling run's folder."""
    import html

    rows = "\n".join(
        f'<li><a href="../{html.escape(folder, quote=True)}/report/index.html">{html.escape(model)}</a></li>'
        for model, folder in runs.items())
    page = (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Latent concepts of {len(runs)} models"
            f"</title><link rel=\"stylesheet\" href=\"../{html.escape(next(iter(runs.values()), ''), quote=True)}"
            f"/report/style.css\"></head>\n<body><header><h1>Latent concepts of {len(runs)} models</h1></header>"
            f"\n<main><ul id=\"models\">\n{rows}\n</ul></main></body></html>\n").encode()
    if not (parent.has(INDEX) and parent.read_bytes(INDEX) == page):
        parent.write_bytes(INDEX, page)
    local = parent.local_path(INDEX)
    return str(local.absolute()) if local else parent.where(INDEX)
