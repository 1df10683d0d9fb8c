"""Labels at every level of the hierarchy (``annotate --hierarchy``) and the whole job's dry run, against
the fake OpenAI server. The concept tables are cut from one synthetic tree with the cluster stage's own
``hierarchy`` links (parent/children), so the labels can be checked against the tree."""

from __future__ import annotations

import ast
import os
import secrets
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from cluster_service.annotate.budget import estimate_llm_tokens
from cluster_service.annotate.config import AnnotateConfig
from cluster_service.annotate.labels import annotator_name, concepts_with_labels
from cluster_service.annotate.llm import build_tasks
from cluster_service.annotate.prompts import HIERARCHY_NOTE
from cluster_service.annotate.stage import TOTAL, annotate_run
from cluster_service.cluster.concepts import CONCEPT_SCHEMA, hierarchy
from cluster_service.store import ANNOTATIONS, RunStore
from cluster_service.testing.concepts import synthetic_concept_table
from cluster_service.testing.openai_server import ServerProcess

pytestmark = pytest.mark.integration

KEY = "sk-test-" + secrets.token_hex(16)
KEY_ENV = "ANNOTATE_HIERARCHY_TEST_KEY"
LAYER = 2
THEMES = ["cities", "weekdays", "animals", "numbers", "adverbs", "ing_verbs"]
#: leaf -> concept at each K: K=3 pairs the leaves, K=2 merges the first two pairs and keeps the third
LEAVES = {6: np.arange(6), 3: np.array([0, 0, 1, 1, 2, 2]), 2: np.array([0, 0, 0, 0, 1, 1])}
ANNOTATOR = annotator_name("openai", "test-model", "paper")


@pytest.fixture(scope="module")
def server():
    with ServerProcess(KEY) as srv:
        yield srv


@pytest.fixture
def fake(server, monkeypatch):
    server.reset(log_prompts=True)
    monkeypatch.setenv(KEY_ENV, KEY)
    return server


def tree_store(root: Path) -> RunStore:
    """Concept tables at K = 6, 3, 2 of one tree: each concept's words are its leaves' words."""
    store = RunStore(root)
    leaves = synthetic_concept_table([60] * 6, seed=3, themes=THEMES).to_pylist()
    links = hierarchy({k: v.astype(np.int32) for k, v in LEAVES.items()})
    for k, of_leaf in LEAVES.items():
        parent, children = (a.to_pylist() for a in links[k])
        rows = []
        for c in range(k):
            members = [leaves[i] for i in np.flatnonzero(of_leaf == c)]
            words = [w for m in members for w in m["words"]]
            counts = Counter(words)
            rows.append({"concept": c, "size": len(words), "words": words,
                         "top_types": [{"word": w, "count": n} for w, n in counts.most_common(50)],
                         "examples": [e for m in members for e in m["examples"]][:5],
                         "centroid": [0.0] * 4, "parent": parent[c], "children": children[c]})
        store.write_concepts(LAYER, k, pa.Table.from_pylist(rows, schema=CONCEPT_SCHEMA))
    return store


def config(srv: ServerProcess, **kw) -> AnnotateConfig:
    base = dict(backend="openai", base_url=srv.url, model="test-model", api_key_env=KEY_ENV, timeout_s=5.0,
                backoff_base_s=0.05, backoff_max_s=0.5, progress=False, hierarchy=True, concurrency=4)
    return AnnotateConfig(**{**base, **kw})


def labelled(store: RunStore, k: int) -> list[dict]:
    return concepts_with_labels(store, LAYER, k, ANNOTATOR).to_pylist()


def test_hierarchy_labels_follow_the_tree_from_the_children_up(fake, tmp_path):
    store = tree_store(tmp_path / "run")
    summaries = annotate_run(store, config(fake))
    assert list(summaries) == [f"layer_{LAYER}_k6", f"layer_{LAYER}_k3", f"layer_{LAYER}_k2"]  # finest first
    tables = {k: labelled(store, k) for k in LEAVES}
    assert {r["label_prompt"] for r in tables[6]} == {"paper"}  # the paper's prompt at the finest K
    assert {r["label_prompt"] for r in tables[3]} == {"paper+hierarchy"}
    assert [r["label_prompt"] for r in tables[2]] == ["paper+hierarchy", "copied_from_child"]
    assert all(r["label_status"] == "ok" and r["label"] for t in tables.values() for r in t)

    log = fake.log()
    assert len(log) == 6 + 3 + 1  # the concept with one child cost no call
    asked = [e["user"] for e in log if HIERARCHY_NOTE in e["user"]]
    assert len(asked) == 4
    listed = [ast.literal_eval(text.split(HIERARCHY_NOTE, 1)[1]) for text in asked]
    for finer, coarser in ((6, 3), (3, 2)):
        for parent in tables[coarser]:
            for child in parent["children"]:
                assert tables[finer][child]["parent"] == parent["concept"]  # every child's parent contains it
            child_labels = [tables[finer][c]["label"] for c in parent["children"]]
            if len(child_labels) == 1:
                assert parent["label"] == child_labels[0] and parent["label_calls"] == 0
            else:
                assert child_labels in listed  # labelled from exactly its own children's labels
    # the short prompt is cheaper than the full one for the same concept
    rows = store.read_concepts(LAYER, 3).to_pylist()
    full = [estimate_llm_tokens(t.request["messages"]) for t in build_tasks(config(fake), rows)]
    short = [r["label_prompt_tokens"] for r in tables[3]]
    assert all(s < 0.6 * f for s, f in zip(short, full, strict=True)), (short, full)

    again = annotate_run(store, config(fake))  # resumable: every call answered by the cache
    assert all(s["calls"] == 0 for s in again.values()) and len(fake.log()) == len(log)


def test_without_labelled_children_the_usual_prompt(fake, tmp_path):
    store = tree_store(tmp_path / "run")
    annotate_run(store, config(fake, k=[3]))  # the finer K=6 was never labelled
    assert {r["label_prompt"] for r in labelled(store, 3)} == {"paper"}


def test_dry_run_prices_the_whole_job_and_sends_nothing(fake, tmp_path):
    store = tree_store(tmp_path / "run")
    cfg = config(fake, dry_run=True, input_price_per_mtok=1.0, output_price_per_mtok=4.0, rpm=3, tpm=1e6)
    out = annotate_run(store, cfg)
    total = out[TOTAL]
    assert total["tables"] == 3 and total["concepts"] == 11 and total["copied_from_child"] == 1
    assert total["calls"] == 10 and total["hierarchy_prompts"] == 4
    tables = [v for name, v in out.items() if name != TOTAL]
    assert total["est_prompt_tokens"] == sum(t["est_prompt_tokens"] for t in tables)
    assert total["est_cost_usd"] == pytest.approx((total["est_prompt_tokens"] * 1.0
                                                   + total["max_completion_tokens"] * 4.0) / 1e6)
    assert total["est_minutes_at_limits"] == pytest.approx(10 / 3, abs=0.01) and total["binding_limit"] == "rpm"
    assert fake.log() == [] and not store.has(ANNOTATIONS) and not store.listdir("labels")

    proc = subprocess.run([sys.executable, "-m", "cluster_service.cli", "annotate", store.where(), "--backend",
                           "openai", "--model", "gpt-4o-mini", "--dry-run", "--hierarchy"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "OPENAI_API_KEY": "unused"})
    assert proc.returncode == 0, proc.stderr
    assert "dry run total (openai, gpt-4o-mini): 3 tables, 11 concepts, 10 calls to make" in proc.stdout
    assert "estimated cost $" in proc.stdout and "min at the --rpm/--tpm limits" in proc.stdout
    assert fake.log() == []

