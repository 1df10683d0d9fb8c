"""The offline baseline labeller (not an LLM): deterministic, marked as baseline, labels from real tags."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cluster_service.annotate.config import AnnotateConfig
from cluster_service.annotate.fixtures import concept_table
from cluster_service.annotate.stage import LABEL_FIELDS, annotate_run
from cluster_service.cluster.concepts import CONCEPT_SCHEMA
from cluster_service.store import RunStore

LAYER, K = 2, 7
THEMES = ["cities", "weekdays", "ing_verbs", "determiners", "animals", "numbers", "adverbs"]


@pytest.fixture
def store(tmp_path) -> RunStore:
    store = RunStore(tmp_path / "run")
    store.write_concepts(LAYER, K, concept_table([40, 25, 30, 60, 15, 20, 18], seed=3, themes=THEMES))
    return store


@pytest.mark.integration
def test_baseline_is_deterministic_marked_and_tagged(store):
    summary = annotate_run(store, LAYER, K, AnnotateConfig())
    first = store.read_concepts(LAYER, K)
    assert summary["is_baseline"] and summary["backend"] == "baseline" and summary["calls"] == 0
    assert summary["labelled"] == K and "not an LLM" in summary["note"]
    assert first.schema.names == CONCEPT_SCHEMA.names + [name for name, _ in LABEL_FIELDS]
    rows = first.to_pylist()
    for r in rows:
        assert r["label_is_baseline"] and r["label_backend"] == "baseline" and r["label_status"] == "ok"
        assert "not an LLM" in r["label_model"] and r["label_description"].startswith("baseline (not an LLM)")
        assert json.loads(r["label_raw"])["baseline"] is True
        n_types = len(set(r["words"]))
        assert r["label"].endswith(f"(+{n_types - 3})") if n_types > 3 else "(+" not in r["label"]
    by_theme = dict(zip(THEMES, (r["label"] for r in rows), strict=True))
    assert by_theme["cities"].startswith("PROPN/GPE: ")
    assert by_theme["adverbs"].startswith("ADV (-ly): ")
    assert by_theme["determiners"].startswith("DET: ")
    assert "(-ing)" in by_theme["ing_verbs"]
    assert rows[3]["label_type"] == "syntactic" and rows[6]["label_type"] == "morphological"

    annotate_run(store, LAYER, K, AnnotateConfig())
    assert store.read_concepts(LAYER, K).equals(first)  # rerun: identical table, same label columns
    stage = store.read_manifest()["stages"][f"annotate:layer_{LAYER}_k{K}"]
    assert stage["status"] == "done" and stage["is_baseline"] is True


@pytest.mark.acceptance
def test_cli_default_is_the_offline_baseline(store):
    cmd = [sys.executable, "-m", "cluster_service.cli", "annotate", str(store.root), "--layer", str(LAYER),
           "--k", str(K)]
    dry = subprocess.run([*cmd, "--dry-run"], capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr
    assert "0 calls" in dry.stdout and "not an LLM" in dry.stdout
    assert "label" not in store.read_concepts(LAYER, K).column_names
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin"})
    assert proc.returncode == 0, proc.stderr
    assert "baseline labels (not an LLM)" in proc.stdout and "PROPN/GPE: " in proc.stdout
    assert not store.annotations_db.exists()  # nothing to cache: no calls


@pytest.mark.acceptance
def test_cli_reports_a_missing_concept_table_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cluster_service.cli", "annotate", str(tmp_path), "--layer",
                           "1", "--k", "5"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "no concept table" in proc.stderr
