"""The analyze stage on a real run store (Zarr layers, the cluster stage's tables, baseline labels), the
scorer against the fake OpenAI-protocol server, resume, skips and the CLI."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr

from cluster_service.analysis.config import AnalyzeConfig
from cluster_service.analysis.stage import analyze_run
from cluster_service.annotate.config import AnnotateConfig
from cluster_service.annotate.stage import annotate_run
from cluster_service.cli import main as cli_main
from cluster_service.cluster.config import ClusterConfig
from cluster_service.cluster.stage import cluster_run
from cluster_service.store import RunStore
from cluster_service.testing.openai_server import ServerProcess

KEY, KEY_ENV = "sk-analysis-test", "ANALYSIS_TEST_KEY"
#: one vocabulary and sentence template per planted concept (the word's position in the template)
GROUPS = [(["London", "Paris", "Berlin"], "She flew to {w} last year .", 3),
          (["dog", "cat", "horse"], "The {w} ate the grass .", 1),
          (["quickly", "slowly", "gently"], "He ran {w} to the door .", 2),
          (["seven", "eight", "nine"], "They bought {w} apples today .", 2)]
NEURON, PLANTED = 5, 2  # neuron 5 carries planted concept 2 (the adverbs)


def make_store(root, n=480, d=12, seed=0) -> tuple[RunStore, np.ndarray]:
    """Two layers of four well-separated blobs, one vocabulary per blob, one token per sentence."""
    rng = np.random.default_rng(seed)
    truth = np.arange(n) % len(GROUPS)
    group = zarr.open_group(str(root / "activations.zarr"), mode="a")
    centers = rng.normal(scale=3.0, size=(len(GROUPS), d))
    for layer in (0, 1):
        x = centers[truth] + rng.normal(size=(n, d))
        x[truth == PLANTED, NEURON] += 25.0
        group.create_array(f"layer_{layer}", shape=(n, d), chunks=(64, d), shards=(128, d), dtype="float16",
                           overwrite=True)[:] = x.astype(np.float16)
    words, texts, positions = [], [], []
    for t in truth:
        vocab, template, position = GROUPS[t]
        w = vocab[rng.integers(len(vocab))]
        words.append(w)
        texts.append(template.format(w=w))
        positions.append(position)
    occ, seen = [], {}
    for w in words:
        seen[w] = seen.get(w, 0) + 1
        occ.append(seen[w])
    pq.write_table(pa.table({"row": np.arange(n), "sentence_id": np.arange(n),
                             "position": np.array(positions, np.int32), "word": words, "occurrence": occ}),
                   root / "tokens.parquet")
    pq.write_table(pa.table({"sentence_id": np.arange(n), "text": texts}), root / "sentences.parquet")
    store = RunStore(root)
    store.write_manifest({"stages": {}})
    cluster_run(store, ClusterConfig(k=[2, 4], seed=0))
    annotate_run(store, AnnotateConfig(progress=False))
    return store, truth


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("analysis"))


def local_steps(**kw) -> AnalyzeConfig:
    base = dict(steps=["probe", "neurons", "align", "layers", "stability"], stability_tokens=400,
                stability_replicates=2, progress=False, tag_processes=1)
    return AnalyzeConfig(**{**base, **kw})


@pytest.mark.integration
def test_every_step_on_a_planted_run_and_resume(run):
    store, truth = run
    out = analyze_run(store, local_steps())
    assert set(out) == {"layer_0_k4", "layer_1_k4"}  # every clustered layer at its largest K
    s = out["layer_0_k4"]
    assert s["layer_reads"] == 1  # probe and neurons share one pass over the layer
    steps = s["steps"]
    a = np.load(store.local_path("clusters/layer_0/assignments_k4.npy"))
    planted = int(np.bincount(a[truth == PLANTED]).argmax())

    probe = store.read_parquet("analysis/layer_0_k4/probe.parquet").to_pydict()
    assert min(probe["accuracy"]) >= 0.95  # well-separated blobs
    np.testing.assert_allclose(probe["selectivity"], np.subtract(probe["accuracy"], probe["control_accuracy"]))
    assert steps["probe"]["selectivity"]["median"] > 0.2

    neurons = store.read_parquet("analysis/layer_0_k4/neurons.parquet").to_pydict()
    assert neurons["probeless_top"][planted][0] == NEURON
    assert len(neurons["probe_top"][planted]) == 10  # (ranking by probe weights: test_analysis_cores)
    assert len(neurons["probeless_top"][0]) == 10 and neurons["parent"] is not None
    assert steps["neurons"]["parent_k"] == 2 and 0 <= steps["neurons"]["parent_overlap"]["mean"] <= 1

    align = store.read_parquet("analysis/layer_0_k4/align.parquet").to_pydict()
    cities = int(np.bincount(a[truth == 0]).argmax())
    animals = int(np.bincount(a[truth == 1]).argmax())
    assert "pos:PROPN" in align["aligned_with"][cities] and "ent:GPE" in align["aligned_with"][cities]
    assert "pos:NOUN" in align["aligned_with"][animals]
    assert align["label_agrees"][cities] is True  # the baseline label says PROPN/GPE
    assert steps["align"]["aligned_fraction"] >= 0.75
    tags = store.read_parquet("analysis/tags.parquet")
    assert len(tags) == len(truth) and tags.column_names == ["row", "pos", "tag", "ent"]

    layers = store.read_parquet("analysis/layers_0_1_k4/matches.parquet").to_pydict()
    assert layers["fate"] == ["persists"] * 4  # the same blobs in both layers
    assert steps["layers"]["next_layer"] == 1 and "layers" not in out["layer_1_k4"]["steps"] or \
        "skipped" in out["layer_1_k4"]["steps"]["layers"]
    cont = store.read_parquet("analysis/layers_0_1_k4/contingency.parquet")
    assert sum(cont.column("tokens").to_pylist()) == len(truth) and len(cont) == 4

    stab = store.read_parquet("analysis/layer_0_k4/stability.parquet").to_pydict()
    assert min(stab["stability"]) > 0.95 and steps["stability"]["method"] == "approx"
    assert "skipped" in steps.get("score", {"skipped": "not asked"})
    summary = json.loads(store.read_bytes("analysis/layer_0_k4/summary.json"))
    assert summary["steps"]["probe"]["accuracy"] == steps["probe"]["accuracy"]

    # rerun: every step resumes from its table, nothing is rewritten
    folder = store.local_path("analysis/layer_0_k4")
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.parquet")}
    again = analyze_run(store, local_steps())["layer_0_k4"]
    assert all(again["steps"][name].get("resumed") for name in ("probe", "neurons", "align", "layers", "stability"))
    assert again["layer_reads"] == 0
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.parquet")} == stamps
    # a changed setting redoes only its step
    changed = analyze_run(store, local_steps(align_threshold=0.99, layers=[0]))["layer_0_k4"]
    assert "resumed" not in changed["steps"]["align"] and changed["steps"]["probe"]["resumed"]


@pytest.mark.integration
def test_score_against_scripted_scorers(run, monkeypatch):
    store, _ = run
    monkeypatch.setenv(KEY_ENV, KEY)
    with ServerProcess(KEY, latency_s=[0.001, 0.003]) as srv:
        def scored(mode: str) -> tuple[dict, dict]:
            srv.reset(latency_s=[0.001, 0.003], detector=mode)
            if store.has("analysis/layer_0_k4/score.parquet"):  # the scorer changed behind the same settings
                store.remove("analysis/layer_0_k4/score.parquet")
            cfg = AnalyzeConfig(steps=["score"], layers=[0], scorer_backend="openai", scorer_base_url=srv.url,
                                scorer_model="test-model", scorer_api_key_env=KEY_ENV, scorer_rpm=60000,
                                scorer_concurrency=8, progress=False, scorer_cache_path=str(
                                    store.local_path(f"cache_{mode}.sqlite")))
            s = analyze_run(store, cfg)["layer_0_k4"]["steps"]["score"]
            return s, store.read_parquet("analysis/layer_0_k4/score.parquet").to_pydict()

        right, table = scored("label_words")
        base = right["baseline"]
        assert base["concepts"] == 4 and base["balanced_accuracy"] == 1.0 and base["f1"] == 1.0
        assert base["margin_over_control"] >= 0.2
        assert set(table["members_shown"]) == set(table["nonmembers_shown"]) == {20}
        assert right["usage"]["calls"] == 4 * 2 * 8 and base["unparsable_prompts"] == 0
        assert right["usage"]["prompt_tokens_per_concept"] > 0

        coin, _ = scored("random")
        assert 0.3 <= coin["baseline"]["balanced_accuracy"] <= 0.7

        bad, table = scored("garbage")
        assert bad["baseline"]["unparsable_prompts"] == 4 * 8  # every prompt, after one retry each
        assert bad["usage"]["calls"] == 2 * 4 * 2 * 8
        assert all(np.isnan(v) for v in table["balanced_accuracy"])


def test_skips_and_user_errors(run, capsys):
    store, _ = run
    s = analyze_run(store, AnalyzeConfig(steps=["score"], layers=[1], progress=False))["layer_1_k4"]["steps"]
    assert "--scorer-backend baseline" in s["score"]["skipped"]
    assert cli_main(["analyze", store.where(), "--steps", "probe,bogus"]) == 2
    assert "unknown step 'bogus'" in capsys.readouterr().err
    assert cli_main(["analyze", store.where(), "--layer", "1", "--steps", "layers", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "layer 1 k 4" in printed and "layers: skipped: no later layer" in printed


def test_run_wires_analyze_after_annotate_with_the_demo_bootstrap():
    from cluster_service.pipeline import DEFAULT_STAGES, DEMO_ANALYZE, PipelineConfig

    assert DEFAULT_STAGES.index("analyze") == DEFAULT_STAGES.index("annotate") + 1
    demo = PipelineConfig.from_sections({}, None, {})
    assert demo.configs["analyze"].stability_tokens == DEMO_ANALYZE["stability_tokens"]
    mine = PipelineConfig.from_sections({"corpus": {"path": "x.txt"}}, None, {"analyze": {"steps": ["probe"]}})
    assert mine.configs["analyze"].stability_tokens == 50_000 and mine.configs["analyze"].steps == ["probe"]


def test_ray_job_entry_point_takes_the_verbs_flags():
    import importlib.util
    import sys
    from pathlib import Path

    jobs = Path(__file__).resolve().parents[1] / "ray_jobs"
    sys.path.insert(0, str(jobs))
    try:
        spec = importlib.util.spec_from_file_location("ray_jobs_job", jobs / "_job.py")
        job = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(job)
        args = job.parse("analyze", ["/mnt/shared/runs/x", "--layer", "6", "--steps", "probe,neurons"])
        assert args.run == "/mnt/shared/runs/x" and args.layers == [6] and args.steps == ["probe", "neurons"]
        assert "VERB = \"analyze\"" in (jobs / "analyze.py").read_text()
    finally:
        sys.path.remove(str(jobs))
