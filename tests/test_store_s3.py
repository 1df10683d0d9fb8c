"""Run stores on an object store: a real S3 server (moto's, in a thread, on loopback) reached through
s3fs with credentials and endpoint from the environment only, as on a cluster node.

The CLI runs in subprocesses that inherit that environment (a Ray they start passes it on to its
workers); results are compared with a local run of the same configuration, vectors bit for bit.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pickle
import re
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

from cluster_service.annotate.cache import Reply
from cluster_service.annotate.config import AnnotateConfig
from cluster_service.annotate.labels import concepts_with_labels
from cluster_service.annotate.mirror import MirroredCache, store_copy
from cluster_service.annotate.stage import annotate_table
from cluster_service.cli import main as cli
from cluster_service.extract.writer import ShardWriter, create_layer_arrays, done_shards
from cluster_service.store import RunStore
from cluster_service.testing.concepts import synthetic_concept_table
from cluster_service.testing.openai_server import ServerProcess

pytestmark = pytest.mark.integration

BUCKET = "runs"
LAYERS = (2, 6)
K = 5
#: one configuration for every run here; extract's flags are the same for `run` and `extract`
EXTRACT = ["--corpus-max-sentences", "600", "--layers", ",".join(map(str, LAYERS)), "--shard-rows", "64",
           "--chunk-rows", "64", "--cpus-per-worker", "1"]
PIPELINE = [*EXTRACT, "--cluster-k", str(K), "--annotate-backend", "baseline"]


class RequestLog(logging.Handler):
    """The S3 server's own access log, in the order the server answered."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def puts(self, prefix: str) -> list[str]:
        """Keys PUT under ``prefix`` (bucket-relative), in server order, successful ones only."""
        out = []
        for line in self.lines:
            match = re.search(r"PUT /" + BUCKET + r"/(\S+) HTTP/1\.1\S*\"? (\d+)", line)
            if match and match.group(1).startswith(prefix) and match.group(2) == "200":
                out.append(match.group(1))
        return out


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on a free loopback port, the AWS_* environment pointing at it, one bucket."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    port = server.get_host_and_port()[1]
    requests = RequestLog()
    werkzeug = logging.getLogger("werkzeug")
    werkzeug.addHandler(requests)
    werkzeug.setLevel(logging.INFO)
    with pytest.MonkeyPatch.context() as mp:
        for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                            ("AWS_DEFAULT_REGION", "us-east-1"), ("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")):
            mp.setenv(name, value)
        mp.delenv("AWS_PROFILE", raising=False)
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()  # no filesystem made before the environment was set
        s3fs.S3FileSystem().mkdir(BUCKET)
        yield requests
    werkzeug.removeHandler(requests)
    server.stop()


def cs(*args: str, **popen) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cluster_service.cli", *args], capture_output=True, text=True,
                          timeout=300, **popen)


def read_run(location: str) -> dict[str, object]:
    """Everything a run's consumers read: vectors per layer, tables, concept tables with their labels."""
    store = RunStore(location)
    layers = store.read_manifest()["layers"]
    out: dict[str, object] = {f"layer_{layer}": store.layer_array(layer)[:] for layer in layers}
    out["tokens"] = store.read_tokens().to_pydict()
    out["sentences"] = store.read_sentences().to_pydict()
    for layer in LAYERS:
        if store.has_concepts(layer, K):
            out[f"concepts_{layer}"] = concepts_with_labels(store, layer, K).to_pylist()
    return out


def assert_same(a: dict[str, object], b: dict[str, object], keys: set[str] | None = None) -> None:
    keys = keys or set(a)
    assert keys <= a.keys() and keys <= b.keys(), (a.keys(), b.keys())
    for key in sorted(keys):
        if isinstance(a[key], np.ndarray):
            assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key  # bit-identical
        else:
            assert a[key] == b[key], key


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, object]:
    """The same configuration on a local path (in this process, local engine)."""
    run = tmp_path_factory.mktemp("local") / "run"
    assert cli(["run", str(run), "--engine", "local", *PIPELINE]) == 0
    return read_run(str(run))


def test_pipeline_on_s3_with_ray_equals_a_local_run(s3, reference, capsys):
    """`cluster-service run s3://...` with Ray extraction (actors and assignment tasks open the store
    themselves) gives the local run's vectors bit for bit, and the same concepts and labels."""
    url = f"s3://{BUCKET}/pipeline"
    out = cs("run", url, "--engine", "ray", *PIPELINE)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"results: {url}" in out.stdout
    got = read_run(url)
    assert {f"concepts_{layer}" for layer in LAYERS} <= got.keys()
    assert_same(reference, got)
    assert all(row["label_status"] == "ok" for layer in LAYERS for row in got[f"concepts_{layer}"])
    manifest = RunStore(url).read_manifest()
    assert "testing" not in str(manifest)  # credentials never reach the store
    capsys.readouterr()
    assert cli(["info", url, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["run"] == url and info["shards_done"] == f"{manifest['shards']}/{manifest['shards']}"
    assert info["concept_tables"] == [f"layer_{layer}_k{K}" for layer in LAYERS] and info["size_on_disk_mb"] > 0
    assert info["labels"] == {f"layer_{layer}_k{K}": {"annotators": ["baseline"], "default": "baseline"}
                              for layer in LAYERS}


def test_killed_extract_on_s3_resumes_to_the_same_vectors(s3, reference):
    """SIGKILL mid-extraction, then rerun: shards marked before the kill are not recomputed, and the
    store equals an uninterrupted run. The server's log shows every marker PUT after its data."""
    url = f"s3://{BUCKET}/killed"
    store = RunStore(url)
    proc = subprocess.Popen([sys.executable, "-m", "cluster_service.cli", "extract", url, "--engine", "local",
                             *EXTRACT], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and len(done_shards(store)) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = done_shards(store)
    total = store.read_manifest()["shards"]
    assert 3 <= len(before) < total, f"the kill must land mid-run ({len(before)}/{total} shards)"

    out = cs("extract", url, "--engine", "local", *EXTRACT)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["shards_computed"] == total - len(before)  # only the missing ones
    assert done_shards(store) == set(range(total))
    assert_same(reference, read_run(url), {"tokens", "sentences", *(f"layer_{layer}" for layer in LAYERS)})

    puts = s3.puts("killed/")
    markers = [i for i, key in enumerate(puts) if key.startswith("killed/extract_done/")]
    assert sorted(int(puts[i].rsplit("_", 1)[1]) for i in markers) == list(range(total)), "each shard marked once"
    for i in markers:
        shard = int(puts[i].rsplit("_", 1)[1])
        for layer in LAYERS:
            data = f"killed/activations.zarr/layer_{layer}/c/{shard}/0"
            assert data in puts[:i], f"marker of shard {shard} was PUT before {data}"


def test_a_failed_layer_write_leaves_no_marker(s3):
    """A shard whose second layer fails to store (after the first layer's object was PUT) gets no
    done-marker, so a resume recomputes it; the shard written whole does get one."""
    store = RunStore(f"s3://{BUCKET}/fragile")
    create_layer_arrays(store, [0, 1], n_rows=32, hidden=4, shard_rows=8, chunk_rows=8)
    writer = ShardWriter(store, [0, 1])
    writer.write(0, 0, 8, np.ones((2, 8, 4), np.float16))
    torn = [np.full((8, 4), 2, np.float16), np.full((5, 4), 2, np.float16)]  # layer 1's block is short
    with pytest.raises(ValueError):
        writer.write(1, 8, 16, torn)
    assert store.has("activations.zarr/layer_0/c/1/0"), "the first layer's data was stored"
    assert not store.has("activations.zarr/layer_1/c/1/0")
    assert done_shards(store) == {0}
    assert RunStore(store.where()).layer_array(1)[:8].tolist() == np.ones((8, 4)).tolist()


def test_reply_cache_of_an_s3_run_travels_with_the_store(s3, tmp_path, monkeypatch):
    """Annotation on an s3 run keeps SQLite locally and uploads it to the store; a rerun on another
    node (another local cache directory) pays for no call. Snapshots go up while the pool runs."""
    key, key_env, n = "sk-test-s3", "S3_TEST_OPENAI_KEY", 12
    monkeypatch.setenv(key_env, key)
    store = RunStore(f"s3://{BUCKET}/annotated")
    store.write_concepts(3, n, synthetic_concept_table([3 + (7 * i) % 40 for i in range(n)]))
    with ServerProcess(key) as server:
        cfg = AnnotateConfig(backend="openai", base_url=server.url, model="test-model", api_key_env=key_env,
                             rpm=6000, tpm=10_000_000, timeout_s=5.0, progress=False)
        for node in ("node-a", "node-b"):
            monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / node))
            summary = annotate_table(store, 3, n, cfg)
            assert summary["labelled"] == n
            assert summary["calls"] == (n if node == "node-a" else 0), (node, summary)
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "node-c"))
        dry = annotate_table(store, 3, n, dataclasses.replace(cfg, dry_run=True))
        assert (dry["calls"], dry["cached"]) == (0, n), dry  # a dry run elsewhere sees the store's replies
        assert not (tmp_path / "node-c").exists(), "a dry run writes nothing"
        assert sum(1 for e in server.log() if e.get("success")) == n
    assert list((tmp_path / "node-b").rglob("*.sqlite")), "node b keeps its own local copy"
    with store_copy(store) as copy:
        assert copy is not None
        assert sqlite3.connect(copy).execute("SELECT COUNT(*) FROM replies").fetchone()[0] == n

    periodic = RunStore(f"s3://{BUCKET}/periodic")
    cache = MirroredCache(tmp_path / "periodic.sqlite", periodic, every_s=0.0)
    reply = Reply("a label", "stop", "test-model", 10, 2, 0.1)
    cache.put("k1", "openai", "m", {"q": 1}, reply)
    assert cache.upload is not None
    cache.upload.result()  # an upload made while the pool is still running, before close
    with store_copy(periodic) as copy:
        assert sqlite3.connect(copy).execute("SELECT key FROM replies").fetchall() == [("k1",)]
    cache.put("k2", "openai", "m", {"q": 2}, reply)
    cache.close()
    with store_copy(periodic) as copy:
        assert sorted(sqlite3.connect(copy).execute("SELECT key FROM replies").fetchall()) == [("k1",), ("k2",)]


@pytest.mark.parametrize("verb", ["extract", "cluster", "annotate", "run", "info"])
def test_unusable_urls_are_one_line_errors(verb, capsys, tmp_path):
    extra = {"cluster": ["--k", "3"], "annotate": ["--layer", "1", "--k", "3"]}.get(verb, [])
    for url, needle in (("nosuch://bucket/run", "unknown URL scheme 'nosuch'"),
                        ("gs://bucket/run", "pip install gcsfs"), ("memory://run", "inside one process")):
        assert cli([verb, url, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0] and url in err[0], err
    out = cs("extract", "nosuch://bucket/run", cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.strip().startswith("error: ") and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not any(tmp_path.iterdir()), "nothing may be written locally for a URL"


def test_a_missing_bucket_is_a_one_line_error(s3, capsys):
    """The scheme works but the bucket does not exist: refused at the first write, naming the object."""
    assert cli(["extract", "s3://no-such-bucket/run", "--corpus-max-sentences", "20"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: s3://no-such-bucket/run/") and "bucket exists" in err[-1], err
    assert "Traceback" not in "\n".join(err)


def test_submit_takes_an_s3_run_and_refuses_an_unusable_url(tmp_path, capsys):
    """`submit --run s3://...` passes the run check and goes on to the cluster (here: none listening)."""
    config = tmp_path / "job.toml"
    config.write_text(f"[cluster]\nk = [{K}]\n")
    nowhere = "http://127.0.0.1:9"
    for run, needle in ((f"s3://{BUCKET}/submitted", "cannot reach"), ("gs://bucket/run", "pip install gcsfs")):
        assert cli(["submit", str(config), "--address", nowhere, "--run", run]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err


def test_store_pickles_as_its_location_without_credentials(s3):
    store = RunStore(f"s3://{BUCKET}/pickled/")
    store.write_bytes("a/b.json", b"{}")
    blob = pickle.dumps(store)
    assert b"testing" not in blob and len(blob) < 200
    again = pickle.loads(blob)
    assert again.where() == f"s3://{BUCKET}/pickled" and again.listdir("a") == ["b.json"]
