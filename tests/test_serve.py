"""The concept service: a real Serve application on a local Ray over a real small run (packaged MiniLM,
Zarr activations, exact Ward, baseline labels), asked over real HTTP on loopback.

One application serves the whole module (Serve takes 15-30 s to start on the 2-core box); the test that
kills the model replica runs last.
"""

import json
import os
import random
import secrets
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from cluster_service.annotate.labels import concepts_with_labels
from cluster_service.cli import main as cli_main
from cluster_service.errors import UserError
from cluster_service.serve.agreement import agreement
from cluster_service.serve.config import ServeConfig
from cluster_service.serve.encoder import Recipe, TextEncoder
from cluster_service.serve.index import load_index
from cluster_service.serve.service import LocalService
from cluster_service.store import RunStore
from cluster_service.testing.runs import extracted_run

pytestmark = pytest.mark.integration

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo" / "wordnet_examples.txt"
LAYERS, KS = (0, 3), (8, 16)
TRAIN, HELD = 360, 40  # sentences of the served run, and held-out ones after them
KEY_ENV = "SERVE_TEST_API_KEY"


def free_port() -> int:
    """A free port in 18000-18999 (other engineers' services use other ranges)."""
    ports = list(range(18000, 19000))
    random.shuffle(ports)
    for port in ports:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 18000-18999")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run A (the served one) on TRAIN sentences, run B on those and HELD more (same settings)."""
    root = tmp_path_factory.mktemp("serve")
    lines = [line for line in DEMO.read_text().splitlines() if line.strip()][: TRAIN + HELD]
    (root / "a.txt").write_text("\n".join(lines[:TRAIN]) + "\n")
    (root / "b.txt").write_text("\n".join(lines) + "\n")
    a = extracted_run(str(root / "a"), str(root / "a.txt"), layers=LAYERS, ks=KS)
    b = extracted_run(str(root / "b"), str(root / "b.txt"), layers=LAYERS, ks=KS)
    return a, b, lines


@pytest.fixture(scope="module")
def service(runs, ray_local):
    """The Serve application of run A with an API key, on a free loopback port; shut down afterwards. Its
    model replica asks the Index deployments (local_index_mb=0); the offline verb's test compares that
    path's answers with the in-process one's."""
    from cluster_service.serve.run import start, stop

    key = "sk-" + secrets.token_hex(16)
    os.environ[KEY_ENV] = key
    cfg = ServeConfig(port=free_port(), model_replicas=1, cpus_per_replica=1, api_key_env=KEY_ENV, max_words=200,
                      max_chars=2000, max_texts=8, batch_wait_s=0.05, app_name="concepts_test", local_index_mb=0)
    try:
        url = start(runs[0].where(), cfg, timeout_s=300)
        yield url, key, cfg
    finally:
        stop(cfg.app_name, shutdown_serve=True)
        os.environ.pop(KEY_ENV, None)


def call(url: str, path: str, body=None, key: str | None = None, raw: bytes | None = None):
    """(status, parsed JSON body) of one request."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url + path, data=data, headers=headers, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=120) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        text = exc.read()
        try:
            return exc.code, json.loads(text)
        except ValueError:  # not JSON: the tests that expect JSON fail on this
            return exc.code, {"not_json": text.decode(errors="replace")}


def sentence_rows(store: RunStore, sentence: int) -> np.ndarray:
    sid = store.read_tokens(["sentence_id"]).column("sentence_id").to_numpy()
    return np.flatnonzero(sid == sentence)


def assignments(store: RunStore, layer: int, k: int) -> np.ndarray:
    return np.load(store.local_path(f"clusters/layer_{layer}/assignments_k{k}.npy"))


def test_corpus_sentences_get_the_stored_vectors_and_concepts(runs, service):
    a, _, lines = runs
    url, key, _ = service
    picked = [0, 7, 35, 100, 222, TRAIN - 1]  # 35 has "won't": Moses splits the raw line as ingest did
    # the vectors: the model deployment's code (TextEncoder) against the stored rows, to float16 tolerance
    recipe = Recipe.of(a)
    encoder = TextEncoder(recipe, list(LAYERS), device="cpu", threads=1)
    vectors = encoder.encode(recipe.words([lines[i] for i in picked]))
    rows = np.concatenate([sentence_rows(a, i) for i in picked])
    for li, layer in enumerate(LAYERS):
        stored = a.layer_array(layer)[:][rows].astype(np.float32)
        np.testing.assert_allclose(vectors[li].astype(np.float32), stored, rtol=2e-3, atol=2e-3)
    # the concepts, over HTTP, at every served layer and K
    for k in KS:
        status, body = call(url, "/v1/concepts", {"text": [lines[i] for i in picked], "k": k}, key)
        assert status == 200, body
        assert body["k"] == k and body["layers"] == list(LAYERS)
        for i, result in zip(picked, body["results"], strict=True):
            assert result["text"] == lines[i]
            rows = sentence_rows(a, i)
            assert len(result["words"]) == len(rows)
            words = a.read_tokens(["word"]).column("word").to_numpy(zero_copy_only=False)[rows]
            for word, row, got in zip(words, rows, result["words"], strict=True):
                assert got["word"] == word
                for c, layer in zip(got["concepts"], LAYERS, strict=True):
                    assert c["layer"] == layer and c["via"] == "stored" and c["confidence"] == 1.0
                    assert c["concept"] == assignments(a, layer, k)[row], (word, layer, k)
                    assert c["distance"] < 0.05


def test_held_out_agreement_against_a_clustering_that_included_them(runs, service, record_property):
    a, b, lines = runs
    url, key, _ = service
    n_a = a.read_manifest()["tokens"]
    for layer in LAYERS:
        for k in KS:
            served = []
            for start in range(TRAIN, TRAIN + HELD, 8):
                status, body = call(url, "/v1/concepts", {"text": lines[start:start + 8], "layers": [layer], "k": k},
                                    key)
                assert status == 200, body
                served += [w["concepts"][0]["concept"] for r in body["results"] for w in r["words"]]
                assert all(w["concepts"][0]["via"] in ("knn", "stored") for r in body["results"] for w in r["words"])
            b_all = assignments(b, layer, k)
            assert len(served) == len(b_all) - n_a  # every held-out word got an answer, in B's row order
            found = agreement(assignments(a, layer, k), b_all[:n_a], np.asarray(served), b_all[n_a:])
            # the centroid index on the same held-out vectors (B stored them; A's model made them alike)
            held = b.layer_array(layer)[n_a:]
            central = load_index(a, layer, k, ServeConfig(index="centroid")).lookup(held).concept
            found["centroid_agreement"] = agreement(assignments(a, layer, k), b_all[:n_a], central,
                                                    b_all[n_a:])["held_out_agreement"]
            record_property(f"layer{layer}_k{k}", found)
            print(f"layer {layer} k={k}: held-out agreement {found['held_out_agreement']:.3f} (knn), "
                  f"{found['centroid_agreement']:.3f} (centroid); exact Ward's stability {found['stability']:.3f}; "
                  f"majority share {found['chance']:.3f}")
            # both place unseen words better than the largest concept would; the centroid clearly so
            assert found["held_out_agreement"] > found["chance"]
            assert found["centroid_agreement"] > found["chance"] + 0.1


def test_cpu_replicas_default_to_one_thread_each(ray_local):
    """Without GPUs the CPUs Ray sees (2 here) go to one-thread replicas unless the config says otherwise."""
    from cluster_service.serve.app import model_replicas

    assert model_replicas(ServeConfig()) == (2, {"num_cpus": 1}, 1)
    assert model_replicas(ServeConfig(model_replicas=1)) == (1, {"num_cpus": 2}, 2)
    assert model_replicas(ServeConfig(cpus_per_replica=2)) == (1, {"num_cpus": 2}, 2)
    assert model_replicas(ServeConfig(model_replicas=3, cpus_per_replica=1)) == (3, {"num_cpus": 1}, 1)


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(runs, service, ray_local):
    from ray import serve

    a, _, lines = runs
    url, key, cfg = service
    model = serve.get_deployment_handle("Concepts", app_name=cfg.app_name)
    before = model.stats.remote().result()
    picked = list(range(40, 40 + 48))
    got: dict[int, tuple[int, dict]] = {}

    def ask(i: int) -> None:
        got[i] = call(url, "/v1/concepts", {"text": lines[i], "k": 16}, key)

    threads = [threading.Thread(target=ask, args=(i,)) for i in picked]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    after = model.stats.remote().result()
    for i in picked:
        status, body = got[i]
        assert status == 200, body
        assert body["results"][0]["text"] == lines[i]
        rows = sentence_rows(a, i)
        concepts = [w["concepts"][1]["concept"] for w in body["results"][0]["words"]]
        assert concepts == assignments(a, 3, 16)[rows].tolist()
    requests = after["requests"] - before["requests"]
    batches = after["batches"] - before["batches"]
    assert requests == len(picked)
    assert batches < requests and after["largest"] > 1, after  # requests shared forward passes


BAD = [
    (b"{not json", 400, "body"),
    (b"\xff\xfe", 400, "body"),
    (b"[1, 2]", 422, "body"),
    (b"{}", 422, "text"),
    (b'{"text": ""}', 422, "text"),
    (b'{"text": "   "}', 422, "text"),
    (b'{"text": 5}', 422, "text"),
    (b'{"text": []}', 422, "text"),
    (b'{"text": ["fine", 3]}', 422, "text[1]"),
    (b'{"text": ["fine", ""]}', 422, "text[1]"),
    (json.dumps({"text": ["a b"] * 9}).encode(), 413, "text"),
    (json.dumps({"text": "word " * 201}).encode(), 413, "text"),
    (json.dumps({"text": "x" * 2001}).encode(), 413, "text"),
    (b'{"text": "the dog", "k": 7}', 400, "k"),
    (b'{"text": "the dog", "k": "8"}', 422, "k"),
    (b'{"text": "the dog", "k": 8.5}', 422, "k"),
    (b'{"text": "the dog", "layers": [0, 5]}', 400, "layers[1]"),
    (b'{"text": "the dog", "layers": "0"}', 422, "layers"),
    (b'{"text": "the dog", "layers": [true]}', 422, "layers[0]"),
    (b'{"text": "the dog", "layers": []}', 422, "layers"),
    (b'{"text": "the dog", "lang": "en"}', 422, "lang"),
]


def test_bad_input_gets_a_one_line_4xx_naming_the_field(service):
    url, key, _ = service
    for raw, status, field in BAD:
        got, body = call(url, "/v1/concepts", key=key, raw=raw)
        assert (got, body.get("field")) == (status, field), (raw[:60], got, body)
        assert set(body) == {"error", "field"} and "\n" not in body["error"] and body["error"].startswith(field)
    for path, status, field in [("/v1/concepts/x/8/1", 422, "layer"), ("/v1/concepts/0/8/99", 404, "id"),
                                ("/v1/concepts/1/8/0", 404, "layer"), ("/v1/concepts/0/9/0", 404, "layer")]:
        got, body = call(url, path, key=key)
        assert (got, body.get("field")) == (status, field), (path, body)
    status, body = call(url, "/v1/concepts", {"text": "still answering"}, key)  # no replica was hurt
    assert status == 200 and len(body["results"][0]["words"]) == 2


def test_api_key_is_enforced_and_never_logged(service):
    url, key, _ = service
    for sent in (None, "wrong", key[:-1]):
        for path, body in (("/v1/concepts", {"text": "the dog"}), ("/healthz", None), ("/v1/run", None),
                           ("/openapi.json", None)):
            status, reply = call(url, path, body, sent)
            assert status == 401 and reply["field"] == "authorization", (path, sent)
    assert call(url, "/healthz", key=key) == (200, {"status": "ok", "run": call(url, "/v1/run", key=key)[1]["run"]})
    logs = Path("/tmp/ray/session_latest/logs")
    leaked = [p.name for p in logs.rglob("*") if p.is_file() and key.encode() in p.read_bytes()]
    assert not leaked


def test_run_concept_and_schema_endpoints(runs, service):
    a = runs[0]
    url, key, _ = service
    status, info = call(url, "/v1/run", key=key)
    assert status == 200
    assert info["layers"] == list(LAYERS) and info["k"] == list(KS)
    assert info["model"] == a.read_manifest()["model"]["name"]
    assert {(i["layer"], i["k"], i["index"]) for i in info["indexes"]} == {(la, k, "knn") for la in LAYERS for k in KS}
    table = concepts_with_labels(a, 3, 8).to_pylist()
    status, concept = call(url, "/v1/concepts/3/8/2", key=key)
    assert status == 200
    assert concept["label"] == table[2]["label"] and concept["size"] == table[2]["size"]
    assert concept["top_words"][0] == table[2]["top_types"][0] and concept["examples"]
    status, schema = call(url, "/openapi.json", key=key)
    assert status == 200
    assert {"/v1/concepts", "/v1/concepts/{layer}/{k}/{id}", "/v1/run", "/healthz"} <= set(schema["paths"])
    post = schema["paths"]["/v1/concepts"]["post"]
    assert "text" in post["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert {"200", "413", "422"} <= set(post["responses"])


def test_offline_verb_prints_the_body_the_service_returns(runs, service, capsys, tmp_path):
    a, _, lines = runs
    url, key, _ = service
    texts = [lines[3], "A sentence the run never saw ."]
    _, served = call(url, "/v1/concepts", {"text": texts, "k": 8}, key)
    assert cli_main(["concepts", a.where(), "--text", texts[0], "--text", texts[1], "--k", "8",
                     "--cpus-per-replica", "1"]) == 0
    assert json.loads(capsys.readouterr().out) == served
    (tmp_path / "texts.txt").write_text(f"{texts[0]}\n\n{texts[1]}\n")
    assert cli_main(["concepts", a.where(), "--file", str(tmp_path / "texts.txt"), "--k", "8",
                     "--cpus-per-replica", "1"]) == 0
    assert json.loads(capsys.readouterr().out) == served
    assert cli_main(["concepts", a.where(), "--text", "   "]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: --text: text: empty"
    assert cli_main(["concepts", a.where(), "--text", "x", "--k", "7"]) == 2
    assert "--k 7: the run has no concept table there" in capsys.readouterr().err


def test_freed_activations_use_micro_centroids_or_say_what_is_missing(runs, tmp_path):
    from cluster_service.cluster.config import ClusterConfig
    from cluster_service.cluster.stage import cluster_run
    from cluster_service.multi import free_activations

    b = runs[1]
    exact = RunStore(tmp_path / "exact")
    shutil.copytree(b.where(), exact.where())
    free_activations(exact, "none")
    with pytest.raises(UserError) as err:
        LocalService(exact, ServeConfig(layers=[0], k=[8], index="auto"))
    assert "were freed" in str(err.value) and "micro-centroids" in str(err.value) and "\n" not in str(err.value)
    assert "--index centroid" in str(err.value)
    central = LocalService(exact, ServeConfig(layers=[0], k=[8], index="centroid", cpus_per_replica=1))
    body = central.answer({"text": runs[2][5]})
    assert {c["via"] for w in body["results"][0]["words"] for c in w["concepts"]} == {"centroid"}

    approx = RunStore(tmp_path / "approx")
    shutil.copytree(b.where(), approx.where())
    shutil.rmtree(Path(approx.where()) / "clusters")
    cluster_run(approx, ClusterConfig(k=[8], layers=[0], method="approx", micro=300, seed=0))
    from cluster_service.annotate.config import AnnotateConfig
    from cluster_service.annotate.stage import annotate_run

    annotate_run(approx, AnnotateConfig(progress=False))
    free_activations(approx, "none")
    with pytest.raises(UserError, match="--index micro"):
        LocalService(approx, ServeConfig(layers=[0], k=[8], index="knn"))
    service = LocalService(approx, ServeConfig(layers=[0], k=[8], cpus_per_replica=1))
    assert service.run_info()["indexes"][0]["index"] == "micro"
    assert service.run_info()["indexes"][0]["rows"] <= 300
    body = service.answer({"text": runs[2][5]})
    assert {c["via"] for w in body["results"][0]["words"] for c in w["concepts"]} == {"micro"}
    # the micro index gives a stored token the concept of the leaf nearest it: mostly the run's own
    got = [w["concepts"][0]["concept"] for w in body["results"][0]["words"]]
    want = assignments(approx, 0, 8)[sentence_rows(approx, 5)].tolist()
    assert np.mean(np.asarray(got) == np.asarray(want)) >= 0.5


def test_auto_index_picks_micro_centroids_above_knn_max(runs):
    a = runs[0]
    assert load_index(a, 0, 8, ServeConfig(knn_max=10)).kind == "micro"
    assert load_index(a, 0, 8, ServeConfig()).kind == "knn"


def test_serve_config_yaml_names_the_builder_with_valid_args(runs):
    """deploy/serve.yaml: its import path is the builder, its args are ServeConfig fields, and the builder
    makes the application of a run (and refuses bad args in one line)."""
    import dataclasses
    import importlib

    import yaml

    from cluster_service.serve.app import build

    doc = yaml.safe_load((DEMO.parents[2] / "deploy" / "serve.yaml").read_text())
    assert doc["http_options"]["host"] == "127.0.0.1"
    (spec,) = doc["applications"]
    module, name = spec["import_path"].split(":")
    assert getattr(importlib.import_module(module), name) is build
    fields = {f.name for f in dataclasses.fields(ServeConfig)}
    assert set(spec["args"]) - {"run"} <= fields - {"host", "port", "address"}
    args = {**spec["args"], "run": runs[0].where(), "k": [8]}
    assert type(build(args)).__name__ == "Application"
    with pytest.raises(UserError, match="serve config args index"):
        build({**args, "index": "nearest"})
    with pytest.raises(UserError, match="run: required"):
        build({"k": [8]})
    sys_path = str(DEMO.parents[2])
    import sys

    sys.path.insert(0, sys_path)
    try:
        assert importlib.import_module("ray_jobs.serve").app is build
    finally:
        sys.path.remove(sys_path)

def test_serve_verb_serves_until_interrupted(runs):
    """`cluster-service serve` in its own process (its own local Ray): answers on the port it was given
    (127.0.0.1 by default), and Ctrl-C stops it cleanly, port freed."""
    import signal
    import subprocess
    import sys

    from cluster_service.serve.run import wait_healthy

    a, _, lines = runs
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen([sys.executable, "-m", "cluster_service.cli", "serve", a.where(), "--port", str(port),
                             "--k", "8,16", "--layers", "3", "--cpus-per-replica", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, 300)
        status, body = call(url, "/v1/concepts", {"text": lines[1], "k": 8})
        assert status == 200 and body["k"] == 8 and body["layers"] == [3]
        # small indexes: the model replica searches them, one Index deployment describes both tables
        status, info = call(url, "/v1/run")
        assert status == 200 and sorted((i["layer"], i["k"]) for i in info["indexes"]) == [(3, 8), (3, 16)], info
        for k in (8, 16):
            status, concept = call(url, f"/v1/concepts/3/{k}/1")
            assert status == 200 and (concept["k"], concept["concept"]) == (k, 1), concept
            assert concept["size"] > 0
        assert call(url, "/v1/concepts/3/16/99")[0] == 404
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=180)
        assert proc.returncode == 0, out[-2000:]
        assert f"serving {a.where()} at {url}" in out
        deadline = time.monotonic() + 60  # Ray's processes exit just after the driver
        while True:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))  # the proxy let the port go
                    break
                except OSError:
                    assert time.monotonic() < deadline, f"port {port} still bound"
            time.sleep(1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

def test_killed_model_replica_is_replaced_and_requests_after_succeed(runs, service, ray_local):
    """Last: kills the model replica while requests are in flight."""
    import ray

    _, _, lines = runs
    url, key, cfg = service

    def replicas() -> list[str]:
        return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                if a["name"].startswith(f"SERVE_REPLICA::{cfg.app_name}#Concepts#")]

    (victim,) = replicas()
    statuses: list[tuple[int, dict]] = []
    stop_load = threading.Event()

    def load() -> None:
        for i in range(200):  # bounded: stops by itself
            if stop_load.is_set():
                return
            statuses.append(call(url, "/v1/concepts", {"text": lines[i % TRAIN]}, key))

    loaders = [threading.Thread(target=load) for _ in range(4)]
    for t in loaders:
        t.start()
    time.sleep(2)
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and (replicas() in ([], [victim])):
        time.sleep(1)
    stop_load.set()
    for t in loaders:
        t.join(timeout=300)
    (new,) = replicas()
    assert new != victim
    ok = 0
    deadline = time.monotonic() + 240
    while ok < 5 and time.monotonic() < deadline:  # the new replica may still be loading the model
        status, body = call(url, "/v1/concepts", {"text": lines[ok]}, key)
        if status == 200:
            assert body["results"][0]["text"] == lines[ok]
            ok += 1
        else:
            assert status >= 500, body
            time.sleep(1)
    assert ok == 5
    # in flight while it died: answered, or a 5xx (the ingress's own is one line of JSON)
    assert statuses and all(s == 200 or (s >= 500 and ("error" in b or s != 503)) for s, b in statuses)

