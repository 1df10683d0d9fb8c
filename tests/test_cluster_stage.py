"""The cluster stage on real Zarr run stores: streaming, Ray, concept tables, resume, errors, CLI."""

import dataclasses
import json
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr
from sklearn.metrics import adjusted_rand_score

from cluster_service.cli import main as cli_main
from cluster_service.cluster.concepts import CONCEPT_SCHEMA, concept_settings_key
from cluster_service.cluster.config import ClusterConfig
from cluster_service.cluster.micro import block_rows, nearest, shard_stats
from cluster_service.cluster.parallel import assign_all
from cluster_service.cluster.source import ArraySource, ZarrSource
from cluster_service.cluster.stage import cluster_run
from cluster_service.errors import UserError
from cluster_service.store import RunStore

WORDS = ["bank", "river", "money", "the", "ran", "fast", "blue", "green"]


def make_store(root, x: np.ndarray, layer: int = 3, shard: int = 256, words_per_sentence: int = 8,
               ) -> RunStore:
    """A run store with the extract stage's layout, written with zarr/pyarrow directly."""
    n, d = x.shape
    group = zarr.open_group(str(root / "activations.zarr"), mode="a")
    group.create_array(f"layer_{layer}", shape=(n, d), chunks=(min(64, shard), d), shards=(shard, d),
                       dtype="float16", overwrite=True)[:] = x
    rng = np.random.default_rng(0)
    words = [WORDS[i] for i in rng.integers(0, len(WORDS), n)]
    sid = np.arange(n) // words_per_sentence
    pos = np.arange(n) % words_per_sentence
    occ, seen = [], {}
    for w in words:
        seen[w] = seen.get(w, 0) + 1
        occ.append(seen[w])
    pq.write_table(pa.table({"row": np.arange(n), "sentence_id": sid, "position": pos.astype(np.int32),
                             "word": words, "occurrence": occ}), root / "tokens.parquet")
    texts = [" ".join(words[s * words_per_sentence:(s + 1) * words_per_sentence]) for s in range(sid[-1] + 1)]
    pq.write_table(pa.table({"sentence_id": np.arange(len(texts)), "text": texts}),
                   root / "sentences.parquet")
    store = RunStore(root)
    store.write_manifest({"stages": {}})
    return store


def blobs(n: int = 3000, k: int = 6, d: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, n)
    return (rng.normal(scale=8.0, size=(k, d))[truth] + rng.normal(size=(n, d))).astype(np.float16), truth


@pytest.mark.integration
def test_streaming_assignment_equals_in_memory(tmp_path):
    x, _ = blobs(n=1500)
    store = make_store(tmp_path, x, shard=256)
    src = ZarrSource(str(store.local_path("activations.zarr")), "layer_3")
    cents = np.random.default_rng(1).normal(scale=8.0, size=(40, 16)).astype(np.float32)
    acc = assign_all(src, cents, where="t", progress=False)
    x32 = x.astype(np.float32)
    labels = nearest(x32, cents, np.einsum("ij,ij->i", cents, cents), block_rows(256))
    np.testing.assert_array_equal(acc.token_micro, labels)
    # and the same as a brute-force argmin
    brute = np.argmin(((x32[:, None, :] - cents[None]) ** 2).sum(-1), axis=1)
    assert (acc.token_micro == brute).mean() > 0.999
    ref = shard_stats(x32, labels, 40)
    np.testing.assert_allclose(acc.sums, ref.sums, rtol=1e-12)
    np.testing.assert_array_equal(acc.counts, ref.counts)
    mem = assign_all(ArraySource(x, 256), cents, where="t", progress=False)
    np.testing.assert_array_equal(mem.token_micro, acc.token_micro)
    np.testing.assert_array_equal(mem.sums, acc.sums)


@pytest.mark.integration
def test_ray_assignment_equals_one_process(tmp_path, ray_local):
    x, _ = blobs(n=2000)
    store = make_store(tmp_path, x, shard=256)
    src = ZarrSource(str(store.local_path("activations.zarr")), "layer_3")
    cents = np.random.default_rng(2).normal(scale=8.0, size=(50, 16)).astype(np.float32)
    one = assign_all(src, cents, where="t", progress=False)
    par = assign_all(src, cents, where="t", use_ray=True, progress=False)
    np.testing.assert_array_equal(one.token_micro, par.token_micro)
    np.testing.assert_array_equal(one.sums, par.sums)
    np.testing.assert_array_equal(one.counts, par.counts)
    assert one.sq_norm == par.sq_norm


@pytest.mark.integration
def test_ray_worker_error_is_a_user_error(tmp_path, ray_local):
    x, _ = blobs(n=600)
    x[555, 3] = np.inf
    store = make_store(tmp_path, x, shard=128)
    src = ZarrSource(str(store.local_path("activations.zarr")), "layer_3")
    with pytest.raises(UserError, match="row 555"):
        assign_all(src, np.zeros((4, 16), np.float32), where="t", use_ray=True, progress=False)


def two_layer_store(root) -> RunStore:
    make_store(root, blobs(n=1200, seed=4)[0], layer=3)
    return make_store(root, blobs(n=1200, seed=5)[0], layer=5)


@pytest.mark.integration
def test_layers_on_ray_actors_equal_one_after_another(tmp_path, ray_local):
    """Two layer actors (the CPUs shared) write what one layer after another writes, and run.json
    records each layer; a layer that fails makes the stage fail naming it, and the others keep theirs."""
    one, par = two_layer_store(tmp_path / "one"), two_layer_store(tmp_path / "par")
    cluster_run(one, ClusterConfig(k=[6, 3], seed=3, layer_tasks=1))
    t0 = time.perf_counter()
    summary = cluster_run(par, ClusterConfig(k=[6, 3], seed=3, layer_tasks=2))
    assert list(summary) == ["3", "5"] and time.perf_counter() - t0 < 600
    for layer in (3, 5):
        a, b = one.local_path(one.clusters_key(layer)), par.local_path(par.clusters_key(layer))
        for name in ("linkage.npy", "token_micro.npy", "assignments_k6.npy", "assignments_k3.npy"):
            np.testing.assert_array_equal(np.load(a / name), np.load(b / name), err_msg=f"layer {layer} {name}")
        for k in (6, 3):
            assert one.read_concepts(layer, k).equals(par.read_concepts(layer, k))
        stage = par.read_manifest()["stages"][f"cluster:layer_{layer}"]
        assert stage["status"] == "done" and stage["tokens"] == 1200
    assert "cluster" in par.read_manifest()["config"]

    bad = two_layer_store(tmp_path / "bad")
    failed = r"layer 99 failed \(1 of 2 clustered and kept\); layer 99: .*layer 99 not stored"
    with pytest.raises(UserError, match=failed):
        cluster_run(bad, ClusterConfig(k=[6], seed=3, layer_tasks=2, layers=[3, 99]))
    stages = bad.read_manifest()["stages"]
    assert stages["cluster:layer_3"]["status"] == "done" and stages["cluster:layer_99"]["status"] == "failed"
    assert bad.has_concepts(3, 6)


@pytest.mark.integration
def test_stage_writes_tree_concepts_and_resumes(tmp_path):
    x, truth = blobs(n=3000, k=6)
    store = make_store(tmp_path, x)
    cfg = ClusterConfig(k=[6, 20], micro=300, seed=3)
    summary = cluster_run(store, cfg)["3"]
    assert summary["micro"] <= 300 and summary["k"] == [6, 20]
    cdir = store.local_path(store.clusters_key(3))
    labels6 = np.load(cdir / "assignments_k6.npy")
    assert adjusted_rand_score(truth, labels6) == 1.0
    assert np.load(cdir / "linkage.npy").shape == (summary["micro"] - 1, 4)
    assert np.load(cdir / "token_micro.npy").shape == (3000,)

    table = store.read_concepts(3, 6)
    assert table.schema.equals(CONCEPT_SCHEMA)
    assert table.column("size").to_pylist() == np.bincount(labels6).tolist()
    assert sorted(table.column("size").to_pylist(), reverse=True) == table.column("size").to_pylist()
    words = store.read_tokens(["word"]).column("word").to_pylist()
    row0 = table.slice(0, 1).to_pylist()[0]
    members = np.flatnonzero(labels6 == 0)
    assert row0["words"] == [words[i] for i in members]
    counts = [(t["word"], t["count"]) for t in row0["top_types"]]
    assert counts == sorted(counts, key=lambda wc: (-wc[1], wc[0]))
    assert sum(c for _, c in counts) == row0["size"]
    np.testing.assert_allclose(row0["centroid"], x[members].astype(np.float64).mean(0), rtol=1e-4, atol=1e-4)
    texts = dict(zip(*store.read_sentences().to_pydict().values(), strict=True))
    for ex in row0["examples"]:
        assert labels6[ex["row"]] == 0
        assert texts[ex["sentence_id"]].split(" ")[ex["position"]] == ex["word"] == words[ex["row"]]
    assert len(row0["examples"]) == cfg.examples
    manifest = store.read_manifest()
    assert manifest["stages"]["cluster:layer_3"]["status"] == "done"

    # rerun: nothing recomputed (files untouched), same tables
    stamps = {p.name: p.stat().st_mtime_ns for p in cdir.iterdir()}
    concept_stamp = store.local_path(store.concepts_key(3, 6)).stat().st_mtime_ns
    again = cluster_run(store, cfg)["3"]
    assert again["reused"] and again["per_k"] == summary["per_k"] and again["micro"] == summary["micro"]
    assert {p.name: p.stat().st_mtime_ns for p in cdir.iterdir() if p.name != "state.json"} == \
        {k: v for k, v in stamps.items() if k != "state.json"}
    assert store.local_path(store.concepts_key(3, 6)).stat().st_mtime_ns == concept_stamp
    store.remove(store.concepts_key(3, 6))  # a missing output: the layer is redone (from its kept tree)
    assert "reused" not in cluster_run(store, cfg)["3"] and store.read_concepts(3, 6).equals(table)

    # a new K reuses the tree; a fresh store with the same input, settings and seed gives identical output
    more = ClusterConfig(k=[6, 20, 50], micro=300, seed=3)
    assert "reused" not in cluster_run(store, more)["3"]
    assert (cdir / "linkage.npy").stat().st_mtime_ns == stamps["linkage.npy"]
    other = make_store(tmp_path / "again", x)
    cluster_run(other, more)  # the same K list: parent/children link the neighbouring Ks of the run
    for name in ("token_micro.npy", "linkage.npy", "assignments_k6.npy", "assignments_k20.npy"):
        assert (cdir / name).read_bytes() == (other.local_path(other.clusters_key(3)) / name).read_bytes()
    assert store.read_concepts(3, 20).equals(other.read_concepts(3, 20))


def check_hierarchy(store: RunStore, ks: list[int]) -> None:
    """Parent/children of the concept tables at ``ks`` (ascending) against the assignment files."""
    tables = {k: store.read_concepts(3, k) for k in ks}
    assign = {k: np.load(store.local_path(store.clusters_key(3)) / f"assignments_k{k}.npy") for k in ks}
    assert tables[ks[0]].column("parent").null_count == ks[0]  # the root level has null parents
    assert tables[ks[-1]].column("children").to_pylist() == [[]] * ks[-1]
    for small, big in zip(ks, ks[1:], strict=False):
        parent = tables[big].column("parent").to_numpy()
        np.testing.assert_array_equal(parent[assign[big]], assign[small])  # every token lies in its parent
        children = tables[small].column("children").to_pylist()
        assert sorted(c for cs in children for c in cs) == list(range(big))
        for p, cs in enumerate(children):  # the children partition their parent
            assert cs == sorted(cs) and all(parent[c] == p for c in cs)
            np.testing.assert_array_equal(assign[small] == p, np.isin(assign[big], cs))


@pytest.mark.integration
def test_concept_hierarchy_and_settings_key(tmp_path):
    x, _ = blobs(n=1200, k=6, d=8, seed=1)
    store = make_store(tmp_path, x, shard=256)
    cfg = ClusterConfig(k=[20, 4], micro=200, seed=1, examples=1)
    cluster_run(store, cfg)
    check_hierarchy(store, [4, 20])
    keys = {k: concept_settings_key(store.read_concepts(3, k)) for k in (4, 20)}
    assert len(keys[4]) == 16 and keys[4] != keys[20]
    assert concept_settings_key(pa.table({"concept": [0]})) is None  # a table written before keys

    # a K added between the two: both neighbours are rewritten with new links and new keys
    cdir = store.local_path(store.clusters_key(3))
    linkage = (cdir / "linkage.npy").stat().st_mtime_ns
    three = dataclasses.replace(cfg, k=[4, 10, 20])
    cluster_run(store, three)
    check_hierarchy(store, [4, 10, 20])
    assert all(concept_settings_key(store.read_concepts(3, k)) != keys[k] for k in (4, 20))
    assert (cdir / "linkage.npy").stat().st_mtime_ns == linkage
    keys = {k: concept_settings_key(store.read_concepts(3, k)) for k in (4, 10, 20)}
    cluster_run(store, three)
    assert {k: concept_settings_key(store.read_concepts(3, k)) for k in (4, 10, 20)} == keys
    cluster_run(store, dataclasses.replace(three, examples=2))
    assert all(concept_settings_key(store.read_concepts(3, k)) != keys[k] for k in (4, 10, 20))

    # a run written before the rename (labels_k{K}.npy, no links, no key): a rerun writes the new names
    state = json.loads((cdir / "state.json").read_text())
    for k in (4, 10, 20):
        (cdir / f"assignments_k{k}.npy").rename(cdir / f"labels_k{k}.npy")
        entry = state.pop(f"assignments_k{k}.npy")
        state[f"labels_k{k}.npy"] = {n: v for n, v in entry.items() if n not in ("parent_k", "child_k")}
        store.write_concepts(3, k, store.read_concepts(3, k).drop_columns(["parent", "children"])
                             .replace_schema_metadata(None))
    (cdir / "state.json").write_text(json.dumps(state))
    cluster_run(store, three)
    assert not list(cdir.glob("labels_k*")) and not any(n.startswith("labels_k") for n in
                                                         json.loads((cdir / "state.json").read_text()))
    check_hierarchy(store, [4, 10, 20])
    assert {k: concept_settings_key(store.read_concepts(3, k)) for k in (4, 10, 20)} == keys
    assert (cdir / "linkage.npy").stat().st_mtime_ns == linkage


@pytest.mark.integration
def test_exact_method_and_evaluate(tmp_path):
    x, truth = blobs(n=800, k=5, d=8, seed=5)
    store = make_store(tmp_path, x, shard=128)
    cfg = ClusterConfig(k=[5, 40], method="exact", evaluate=600, micro=150)
    summary = cluster_run(store, cfg)["3"]
    assert summary["micro"] == 800
    assert adjusted_rand_score(truth, np.load(store.local_path(store.clusters_key(3)) / "assignments_k5.npy")) == 1.0
    quality = {r["k"]: r for r in summary["quality"]}
    assert quality[5]["ari_vs_exact"] == 1.0 and quality[5]["n"] == 600
    assert json.loads((store.local_path(store.clusters_key(3)) / "quality.json").read_text())[0]["k"] == 5


@pytest.mark.integration
def test_user_errors(tmp_path):
    x, _ = blobs(n=300, d=8)
    store = make_store(tmp_path / "a", x, shard=64)
    with pytest.raises(UserError, match="more clusters than tokens"):
        cluster_run(store, ClusterConfig(k=[301]))
    with pytest.raises(UserError, match="at least 1"):
        cluster_run(store, ClusterConfig(k=[0]))
    with pytest.raises(UserError, match="layer 7 not stored"):
        cluster_run(store, ClusterConfig(layers=[7]))
    with pytest.raises(UserError, match="--micro 10"):
        cluster_run(store, ClusterConfig(k=[50], micro=10))
    bad = x.copy()
    bad[200, 1] = np.nan
    with pytest.raises(UserError, match="row 200"):
        cluster_run(make_store(tmp_path / "b", bad, shard=64), ClusterConfig(k=[5], micro=50))
    empty = make_store(tmp_path / "c", x[:1], shard=64)
    zarr.open_group(str(empty.local_path("activations.zarr")), mode="a").create_array(
        "layer_3", shape=(0, 8), chunks=(64, 8), shards=(64, 8), dtype="float16", overwrite=True)
    with pytest.raises(UserError, match="empty layer"):
        cluster_run(empty, ClusterConfig(k=[1]))


@pytest.mark.acceptance
def test_cli(tmp_path, capsys):
    x, truth = blobs(n=500, d=8)
    store = make_store(tmp_path, x, shard=128)
    assert cli_main(["cluster", str(tmp_path), "--layer", "3", "--k", "4,12", "--micro", "60"]) == 0
    assert json.loads(capsys.readouterr().out)["3"]["k"] == [4, 12]
    assert store.read_concepts(3, 12).num_rows == 12
    assert cli_main(["cluster", str(tmp_path), "--k", "9999"]) == 2
    assert "more clusters than tokens" in capsys.readouterr().err
    # default rule on a small layer: every token a leaf, kNN-graph Ward below --dense-max
    assert cli_main(["cluster", str(tmp_path), "--k", "6", "--dense-max", "100", "--neighbors", "8"]) == 0
    assert json.loads(capsys.readouterr().out)["3"]["micro"] == 500
    labels = np.load(store.local_path(store.clusters_key(3)) / "assignments_k6.npy")
    assert adjusted_rand_score(truth, labels) == 1.0
