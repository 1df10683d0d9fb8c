"""Several models in one job (`run --models`), the paper's random shapes, and the storage budget."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from cluster_service.cli import main as cli
from cluster_service.extract.model import model_shape
from cluster_service.extract.stage import freed_message
from cluster_service.store import TOKENS, RunStore

WORDS = "alpha beta gamma delta river mountain quickly slowly London Paris walked running".split()


def corpus(tmp_path, n: int = 40) -> str:
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(WORDS, size=int(rng.integers(4, 12)))) for _ in range(n)]
    path = tmp_path / "c.txt"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def run_args(run, path: str, *extra: str) -> list[str]:
    return ["run", str(run), "--corpus-path", path, "--engine", "local", "--stages", "ingest,extract,cluster",
            "--cluster-k", "3", "--cluster-layers", "1", *extra]


@pytest.mark.unit
@pytest.mark.parametrize("spec,layers,hidden", [
    ("random:bert-base-cased", 13, 768), ("random:roberta-base", 13, 768), ("random:xlm-roberta-base", 13, 768),
    ("random:albert-base-v2", 13, 768), ("random:xlnet-base-cased", 13, 768), ("random:tiny-gpt2", 3, 32)])
def test_paper_shapes_on_the_packaged_vocabulary(spec, layers, hidden):
    from cluster_service.extract.model import random_config

    assert model_shape(spec) == (layers, hidden)
    assert random_config(spec).vocab_size == 30522  # the packaged WordPiece vocabulary


@pytest.mark.integration
def test_models_run_into_sibling_runs_sharing_one_ingestion(tmp_path, capsys):
    path = corpus(tmp_path)
    run = tmp_path / "job"
    models = ["all-MiniLM-L6-v2", "random:tiny-bert", "random:tiny-xlnet"]
    args = run_args(run, path, "--models", ",".join(models), "--keep-activations", "clustered-layers")
    assert cli(args) == 0
    capsys.readouterr()
    parent = RunStore(run)
    listed = parent.read_manifest()["models"]
    assert [(e["model"], e["run"], e["status"]) for e in listed] == [
        ("all-MiniLM-L6-v2", "all-MiniLM-L6-v2", "done"), ("random:tiny-bert", "random_tiny-bert", "done"),
        ("random:tiny-xlnet", "random_tiny-xlnet", "done")]
    for entry, n_layers in zip(listed, (7, 3, 3), strict=True):
        child = RunStore(run / entry["run"])
        m = child.read_manifest()
        assert os.stat(child.local_path(TOKENS)).st_ino == os.stat(parent.local_path(TOKENS)).st_ino  # hard link
        assert m["stages"]["ingest"]["shared_from"] == parent.where()
        assert m["tokens"] == parent.read_manifest()["tokens"]
        assert m["layers"] == list(range(n_layers)) and child.has_concepts(1, 3)
        assert child.stored_layers() == [1]  # clustered layer kept, the others freed
        assert m["activations_freed"]["layers"] == [x for x in range(n_layers) if x != 1]
        assert "freed" in freed_message(child, 0) and freed_message(child, 1) is None
        capsys.readouterr()
        assert cli(["cluster", child.where(), "--layer", "0", "--k", "3"]) == 2  # a stage needing freed vectors
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "layer 0 were freed" in err and "\n" not in err
        want = "padded" if "xlnet" in entry["model"] else "packed"
        assert m["stages"]["extract"]["forward"]["path"] == want
    # a rerun of the finished job is a no-op: nothing re-extracted, nothing changed
    before = (run / "random_tiny-bert" / "run.json").read_text()
    assert cli(args) == 0
    assert (run / "random_tiny-bert" / "run.json").read_text() == before
    assert set(json.loads(capsys.readouterr().out.split("\nresults:")[0])) == {
        RunStore(run / e["run"]).where() for e in listed}


@pytest.mark.integration
def test_freed_activations_come_back_with_keep_all(tmp_path):
    path = corpus(tmp_path, 20)
    ref, run = tmp_path / "ref", tmp_path / "freed"
    assert cli(run_args(ref, path, "--model", "random:tiny-bert")) == 0
    assert cli(run_args(run, path, "--model", "random:tiny-bert", "--keep-activations", "none")) == 0
    store = RunStore(run)
    assert store.stored_layers() == [] and store.read_manifest()["activations_freed"]["layers"] == [0, 1, 2]
    assert len(store.listdir("extract_done")) >= 1  # done-markers stay
    assert cli(run_args(run, path, "--model", "random:tiny-bert", "--keep-activations", "all")) == 0
    assert "activations_freed" not in store.read_manifest()
    for layer in (0, 1, 2):
        assert np.array_equal(store.layer_array(layer)[:], RunStore(ref).layer_array(layer)[:])


@pytest.mark.integration
def test_models_and_model_together_is_one_clear_error(tmp_path, capsys):
    path = corpus(tmp_path, 5)
    assert cli(run_args(tmp_path / "r", path, "--model", "random:tiny-bert", "--models", "random:tiny-xlnet")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--models" in err and "--model" in err
    job = tmp_path / "job.toml"
    job.write_text('[extract]\nmodels = ["random:tiny-bert", "random:tiny-albert"]\nmodel = "random:tiny-bert"\n')
    assert cli(run_args(tmp_path / "r", path, "--config", str(job))) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "job.toml [extract]" in err and "models and model" in err
    assert cli(run_args(tmp_path / "r", path, "--models", "random:tiny-bert,random:no-such-shape")) == 2
    assert "random:no-such-shape" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # refused before anything was written


@pytest.mark.integration
def test_models_get_a_report_each_and_an_index_across_them(tmp_path, capsys):
    run = tmp_path / "job"
    args = ["run", str(run), "--corpus-path", corpus(tmp_path, 30), "--engine", "local", "--cluster-k", "3",
            "--cluster-layers", "1", "--stages", "ingest,extract,cluster,annotate,report",
            "--models", "random:tiny-bert,random:tiny-roberta"]
    assert cli(args) == 0
    index = run / "report" / "index.html"
    assert f"report: {index}" in capsys.readouterr().out
    page = index.read_text()
    for model, folder in (("random:tiny-bert", "random_tiny-bert"), ("random:tiny-roberta", "random_tiny-roberta")):
        assert f'<a href="../{folder}/report/index.html">{model}</a>' in page
        assert (run / folder / "report" / "index.html").is_file()  # each model's own report
    stamp = index.stat().st_mtime_ns
    assert cli(args) == 0 and index.stat().st_mtime_ns == stamp  # a rerun leaves it as it was


@pytest.mark.integration
def test_models_side_by_side_on_ray_equal_one_after_another(tmp_path, capsys):
    """--parallel-models 2 on a local Ray: both models' pipelines run at once (their spans overlap in
    the parent's run.json, each actor got its half of the CPUs) and every stored array equals the
    sequential job's."""
    import zarr

    path = corpus(tmp_path, n=120)
    models = ["random:tiny-bert", "random:tiny-roberta"]
    seq, par = tmp_path / "seq", tmp_path / "par"
    assert cli(run_args(seq, path, "--models", ",".join(models))) == 0
    args = [a if a != "local" else "ray" for a in run_args(par, path, "--models", ",".join(models),
                                                           "--parallel-models", "2")]
    assert cli(args) == 0
    capsys.readouterr()
    listed = RunStore(par).read_manifest()["models"]
    assert [e["status"] for e in listed] == ["done", "done"]
    (a, b) = listed
    assert a["started"] < b["finished"] and b["started"] < a["finished"]  # the two spans overlap
    for m in models:
        one, two = RunStore(seq / m.replace(":", "_")), RunStore(par / m.replace(":", "_"))
        for layer in one.stored_layers():
            x = zarr.open_group(one.where("activations.zarr"), mode="r")[f"layer_{layer}"][:]
            y = zarr.open_group(two.where("activations.zarr"), mode="r")[f"layer_{layer}"][:]
            assert np.array_equal(x, y), (m, layer)
        assert np.array_equal(np.load(seq / m.replace(":", "_") / "clusters" / "layer_1" / "assignments_k3.npy"),
                              np.load(par / m.replace(":", "_") / "clusters" / "layer_1" / "assignments_k3.npy"))
