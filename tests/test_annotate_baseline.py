"""The offline baseline labeller (not an LLM): deterministic, marked as baseline, labels from real tags;
and the labels files it writes beside the concept table, read back through ``concepts_with_labels``."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow as pa
import pytest

from cluster_service.annotate import labels
from cluster_service.annotate.config import AnnotateConfig
from cluster_service.annotate.labels import JOINED_NAMES, concepts_with_labels
from cluster_service.annotate.stage import annotate_table
from cluster_service.cluster.concepts import CONCEPT_SCHEMA
from cluster_service.errors import UserError
from cluster_service.store import ANNOTATIONS, RunStore
from cluster_service.testing.concepts import synthetic_concept_table

LAYER, K = 2, 7
THEMES = ["cities", "weekdays", "ing_verbs", "determiners", "animals", "numbers", "adverbs"]
SIZES = [40, 25, 30, 60, 15, 20, 18]


@pytest.fixture
def store(tmp_path) -> RunStore:
    store = RunStore(tmp_path / "run")
    store.write_concepts(LAYER, K, synthetic_concept_table(SIZES, seed=3, themes=THEMES))
    return store


def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cluster_service.cli", *args], capture_output=True, text=True,
                          timeout=120, **kw)


@pytest.mark.integration
def test_baseline_is_deterministic_marked_and_tagged(store):
    summary = annotate_table(store, LAYER, K, AnnotateConfig())
    first = concepts_with_labels(store, LAYER, K)
    assert summary["is_baseline"] and summary["backend"] == "baseline" and summary["calls"] == 0
    assert summary["labelled"] == K and "not an LLM" in summary["note"]
    assert first.schema.names == CONCEPT_SCHEMA.names + list(JOINED_NAMES.values())
    assert store.read_concepts(LAYER, K).schema.names == CONCEPT_SCHEMA.names  # the cluster stage's file
    assert store.has("labels/layer_2_k7/baseline.parquet") and labels.default_annotator(store, LAYER, K) == "baseline"
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

    annotate_table(store, LAYER, K, AnnotateConfig())
    assert concepts_with_labels(store, LAYER, K).equals(first)  # rerun: identical table, same label columns
    stage = store.read_manifest()["stages"][f"annotate:layer_{LAYER}_k{K}"]
    assert stage["status"] == "done" and stage["is_baseline"] is True


@pytest.mark.integration
def test_labels_of_an_earlier_clustering_are_refused_in_one_line(tmp_path):
    store = RunStore(tmp_path / "run")
    store.write_concepts(LAYER, K, synthetic_concept_table(SIZES, seed=3, themes=THEMES, settings_key="ward-a"))
    annotate_table(store, LAYER, K, AnnotateConfig())
    assert concepts_with_labels(store, LAYER, K).column("label_status").to_pylist() == ["ok"] * K
    # a re-cluster with other settings writes a concept table with another key: the labels are stale
    store.write_concepts(LAYER, K, synthetic_concept_table(SIZES, seed=4, themes=THEMES, settings_key="ward-b"))
    with pytest.raises(UserError) as stale:
        concepts_with_labels(store, LAYER, K)
    message = str(stale.value)
    assert "\n" not in message and store.where("labels/layer_2_k7/baseline.parquet") in message
    assert "stale" in message and "re-run `cluster-service annotate" in message
    annotate_table(store, LAYER, K, AnnotateConfig())  # labels again: fresh, stale ones replaced
    fresh = concepts_with_labels(store, LAYER, K)
    assert fresh.column("words").to_pylist() == store.read_concepts(LAYER, K).column("words").to_pylist()
    meta = store.read_parquet("labels/layer_2_k7/baseline.parquet").schema.metadata
    assert meta[labels.LABELLED_SETTINGS_KEY] == b"ward-b"


@pytest.mark.integration
def test_a_run_from_before_labels_files_still_reads(store):
    """Old runs kept label columns inside the concept table; they read as they are, until labels files
    exist, which then take their place (no duplicate columns)."""
    old = store.read_concepts(LAYER, K)
    old = old.append_column("label", pa.array([f"old {i}" for i in range(K)]))
    old = old.append_column("label_status", pa.array(["ok"] * K))
    store.write_concepts(LAYER, K, old)
    assert concepts_with_labels(store, LAYER, K).column("label").to_pylist()[0] == "old 0"
    annotate_table(store, LAYER, K, AnnotateConfig())
    table = concepts_with_labels(store, LAYER, K)
    assert table.schema.names == CONCEPT_SCHEMA.names + list(JOINED_NAMES.values())
    assert table.column("label").to_pylist()[0].startswith("PROPN/GPE: ")


def test_no_labels_and_unknown_default_are_one_line_errors(store):
    with pytest.raises(UserError, match="no labels; run `cluster-service annotate"):
        concepts_with_labels(store, LAYER, K)
    with pytest.raises(UserError, match="no labels by annotator 'openai-gpt-4o-mini-paper'"):
        concepts_with_labels(store, LAYER, K, annotator="openai-gpt-4o-mini-paper")
    assert labels.annotator_name("openai", "org/model:7b", "paper") == "openai-org_model_7b-paper"


@pytest.mark.acceptance
def test_cli_default_is_the_offline_baseline(store):
    cmd = ["annotate", store.where(), "--layer", str(LAYER), "--k", str(K)]
    dry = cli(*cmd, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "0 calls" in dry.stdout and "not an LLM" in dry.stdout
    assert labels.annotators(store, LAYER, K) == []  # a dry run writes no labels
    proc = cli(*cmd, env={"PATH": "/usr/bin"})
    assert proc.returncode == 0, proc.stderr
    assert "baseline labels (not an LLM)" in proc.stdout and "PROPN/GPE: " in proc.stdout
    assert not store.has(ANNOTATIONS)  # nothing to cache: no calls
    unknown = cli(*cmd, "--set-default", "openai-nope-paper")
    assert unknown.returncode == 2 and unknown.stderr.strip().count("\n") == 0
    assert "no labels by annotator 'openai-nope-paper' (there are: baseline)" in unknown.stderr
    assert cli(*cmd, "--set-default", "baseline").returncode == 0


@pytest.mark.acceptance
def test_cli_reports_a_missing_concept_table_in_one_line(tmp_path):
    proc = cli("annotate", str(tmp_path), "--layer", "1", "--k", "5")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "no concept table" in proc.stderr


@pytest.mark.integration
def test_the_stage_labels_every_concept_table_or_the_ones_asked_for(store):
    from cluster_service.annotate.stage import annotate_run

    store.write_concepts(LAYER, 3, synthetic_concept_table([20, 20, 20], seed=1, themes=THEMES[:3]))
    store.write_concepts(LAYER + 1, K, synthetic_concept_table(SIZES, seed=4, themes=THEMES))
    only = annotate_run(store, AnnotateConfig(layers=[LAYER + 1]))
    assert list(only) == [f"layer_{LAYER + 1}_k{K}"] and labels.annotators(store, LAYER, K) == []
    every = annotate_run(store, AnnotateConfig())
    assert list(every) == [f"layer_{LAYER}_k3", f"layer_{LAYER}_k{K}", f"layer_{LAYER + 1}_k{K}"]
    assert all(s["labelled"] == s["concepts"] for s in every.values())
    with pytest.raises(UserError, match="no concept tables for layers"):
        annotate_run(store, AnnotateConfig(k=[600]))
