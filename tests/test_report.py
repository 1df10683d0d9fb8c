"""The report's files: where they go, what they hold, that a rerun changes nothing, and their weight
for a 13-layer × 600-concept run (synthetic concept tables, labels and analysis written straight into a
run store: the report reads no per-token data, so no extraction is needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from cluster_service.annotate import labels
from cluster_service.cli import main as cli
from cluster_service.testing.runs import synthetic_run

FIRST_LOAD_LIMIT = 300_000  # bytes: index.html and what it loads before the first render
FILE_LIMIT = 2_000_000


def data_of(path: Path) -> tuple[str, object]:
    """A data file's name and value: each is exactly ``CS.put(<json name>, <json value>);``."""
    text = path.read_text()
    assert text.startswith("CS.put(") and text.endswith(");\n")
    name, _, value = text[len("CS.put("):-3].partition(", ")
    return json.loads(name), json.loads(value)


def snapshot(root: Path, skip: str) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not str(p.relative_to(root)).startswith(skip) and p.name != "run.json"}


@pytest.mark.integration
def test_report_writes_only_its_folder_and_a_rerun_changes_nothing(tmp_path, capsys):
    store = synthetic_run(str(tmp_path / "run"), layers=2, k=30, small_k=5)
    root = tmp_path / "run"
    before = snapshot(root, "report")
    assert cli(["report", str(root), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["index"] == str(root / "report" / "index.html") and summary["tables"] == 4
    assert snapshot(root, "report") == before  # no other stage's file touched
    manifest = store.read_manifest()
    assert manifest["stages"]["report"]["status"] == "done"
    site = snapshot(root / "report", "-")
    assert {"index.html", "app.js", "style.css", "data/index.js", "data/run.js", "data/layer_1_k30.js",
            "data/layer_1_k30.words.js", "data/layer_1_k30.d0.js"} <= set(site)
    # the page loads its script, style and index from disk by relative paths: nothing from a network
    html = site["index.html"].decode()
    assert 'src="app.js"' in html and 'src="data/index.js"' in html and "http" not in html.replace(
        "http-equiv", "")
    name, listing = data_of(root / "report" / "data" / "layer_1_k30.js")
    assert name == "layer_1_k30" and len(listing["rows"]) == 30
    assert listing["annotators"] == ["baseline", "openai-gpt-4o-mini-paper"] and listing["default"] == "baseline"
    assert listing["scores"] == ["score", "score_aligned_tag"]  # scalar analysis columns, joined on concept
    _, detail = data_of(root / "report" / "data" / "layer_1_k30.d0.js")
    concept = detail["concepts"]["7"]
    assert concept["parent"][:2] == [5, 7 % 5] and concept["children"] == []
    assert len(concept["analysis"]["score_top_neurons"]) == 5 and detail["hierarchy"] == "tree"
    _, small = data_of(root / "report" / "data" / "layer_1_k5.d0.js")
    assert [c[1] for c in small["concepts"]["2"]["children"]] == [c for c in range(30) if c % 5 == 2]

    _, index = data_of(root / "report" / "data" / "index.js")
    assert index["flows"] == [{"name": "flow_0_1_k30", "a": 0, "b": 1, "k": 30, "tables": ["flow"]}]
    _, flow = data_of(root / "report" / "data" / "flow_0_1_k30.js")
    assert flow["tables"]["flow"]["columns"] == ["concept_a", "concept_b", "share"]
    assert len(flow["tables"]["flow"]["rows"]) == 60

    assert cli(["report", str(root), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["written"] == 0 and again["removed"] == 0
    assert snapshot(root / "report", "-") == site
    # a narrower report removes the files of tables it no longer shows, and only those
    assert cli(["report", str(root), "--layers", "1", "--json"]) == 0
    narrowed = json.loads(capsys.readouterr().out)
    assert narrowed["removed"] == 6 and not (root / "report" / "data" / "layer_0_k30.js").exists()
    assert (root / "report" / "data" / "layer_1_k30.js").exists()


@pytest.mark.integration
def test_corpus_strings_reach_the_data_files_as_inert_json(tmp_path):
    store = synthetic_run(str(tmp_path / "run"), layers=1, k=3, annotators=("baseline",), analysis=False)
    evil = "</script><script>alert(1)</script> \u2028 é"
    table = labels.labels_of(store, 0, 3, "baseline", labels.clustering_of(store.read_concepts(0, 3)))
    table = table.set_column(1, "label", pa.array([evil] * 3))
    labels.write_labels(store, 0, 3, "baseline", table, "synthetic-0-3")
    assert cli(["report", store.where()]) == 0
    raw = (tmp_path / "run" / "report" / "data" / "layer_0_k3.js").read_bytes()
    assert raw.isascii()  # U+2028 and every other non-ASCII character escaped: no string can end early
    _, listing = data_of(tmp_path / "run" / "report" / "data" / "layer_0_k3.js")
    assert listing["rows"][0][1] == [evil]
    assert cli(["report", store.where(), "--top-words", "0"]) == 2  # every value is range-checked


@pytest.mark.integration
def test_page_weight_of_a_13_layer_600_concept_run(tmp_path, capsys):
    synthetic_run(str(tmp_path / "run"), layers=13, k=600)
    assert cli(["report", str(tmp_path / "run"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["tables"] == 13
    site = tmp_path / "run" / "report"
    _, index = data_of(site / "data" / "index.js")
    first = index["tables"][0]["name"]
    first_load = [site / n for n in ("index.html", "app.js", "style.css", "data/index.js", f"data/{first}.js")]
    weight = sum(p.stat().st_size for p in first_load)
    assert weight <= FIRST_LOAD_LIMIT, f"index page and what it loads first: {weight} bytes"
    sizes = {p.name: p.stat().st_size for p in site.rglob("*") if p.is_file()}
    assert max(sizes.values()) <= FILE_LIMIT, max(sizes.items(), key=lambda kv: kv[1])
    assert len([n for n in sizes if n.endswith(".words.js")]) == 13 and len(index["tables"]) == 13
