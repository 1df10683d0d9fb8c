"""The README's main job, end to end through the CLI: demo corpus → vectors → concepts → labels."""

from __future__ import annotations

import json

import pytest

from cluster_service.annotate.labels import concepts_with_labels
from cluster_service.cli import main as cli
from cluster_service.store import RunStore


@pytest.mark.acceptance
def test_run_on_demo_defaults_then_resume_is_noop(tmp_path, capsys, ray_local):
    run = str(tmp_path / "demo")
    argv = ["run", run, "--corpus-max-sentences", "300", "--layers", "0,6", "--cluster-k", "8,3"]
    assert cli(argv) == 0
    out = capsys.readouterr().out
    assert f"results: {tmp_path / 'demo'}" in out
    store = RunStore(run)
    manifest = store.read_manifest()
    assert manifest["model"]["hidden_size"] == 384 and manifest["layers"] == [0, 6]
    # the resolved configuration of every stage is kept with the results
    assert manifest["config"]["extract"]["layers"] == [0, 6] and manifest["config"]["corpus"]["max_sentences"] == 300
    assert manifest["config"]["cluster"]["k"] == [8, 3] and manifest["config"]["annotate"]["backend"] == "baseline"
    stages = manifest["stages"]
    assert stages["extract"]["status"] == "done"
    for layer in (0, 6):
        assert stages[f"cluster:layer_{layer}"]["status"] == "done"
        for k in (8, 3):
            assert stages[f"annotate:layer_{layer}_k{k}"]["status"] == "done"
            table = concepts_with_labels(store, layer, k).to_pylist()
            assert len(table) == k
            assert sum(r["size"] for r in table) == manifest["tokens"]  # every token in one concept
            assert all(r["label_status"] == "ok" and r["label"] and r["label_is_baseline"] for r in table)
    # a rerun finds everything done: no shard recomputed, tables and labels unchanged
    outputs = [tmp_path / "demo" / "concepts", *(tmp_path / "demo" / "labels").iterdir()]
    before = {p: p.read_bytes() for folder in outputs for p in folder.iterdir()}
    assert len(before) == 4 + 4 * 2  # four concept tables, each with baseline.parquet and default.json
    assert cli(argv) == 0
    capsys.readouterr()
    assert {p: p.read_bytes() for folder in outputs for p in folder.iterdir()} == before
    assert cli(["info", run, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["shards_done"] == "1/1" and len(info["concept_tables"]) == 4
