"""The annotation pool against a real HTTP server (aiohttp, in its own process) that speaks the OpenAI
chat-completions protocol and misbehaves on demand. Counts are taken on the server."""

from __future__ import annotations

import ast
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from cluster_service.annotate import labels
from cluster_service.annotate.budget import estimate_llm_tokens
from cluster_service.annotate.config import AnnotateConfig
from cluster_service.annotate.labels import annotator_name, concepts_with_labels
from cluster_service.annotate.llm import build_tasks
from cluster_service.annotate.prompts import HIERARCHY_NOTE
from cluster_service.annotate.stage import TOTAL, AnnotationFailed, annotate_run, annotate_table
from cluster_service.cluster.concepts import CONCEPT_SCHEMA, hierarchy
from cluster_service.errors import StageFailed, UserError
from cluster_service.store import ANNOTATIONS, RunStore
from cluster_service.testing.concepts import synthetic_concept_table
from cluster_service.testing.openai_server import ServerProcess
from cluster_service.testing.windows import max_in_window, max_sum_in_window

pytestmark = pytest.mark.integration

KEY = "sk-test-" + secrets.token_hex(16)
KEY_ENV = "ANNOTATE_TEST_KEY"
LAYER = 3


@pytest.fixture(scope="module")
def server():
    with ServerProcess(KEY) as srv:
        yield srv


@pytest.fixture
def fake(server, monkeypatch):
    server.reset()
    monkeypatch.setenv(KEY_ENV, KEY)
    return server


def make_store(root: Path, n: int, seed: int = 0) -> RunStore:
    store = RunStore(root)
    sizes = [3 + (7 * i) % 40 for i in range(n)]
    store.write_concepts(LAYER, n, synthetic_concept_table(sizes, seed=seed))
    return store


def config(srv: ServerProcess, **kw) -> AnnotateConfig:
    base = dict(backend="openai", base_url=srv.url, model="test-model", api_key_env=KEY_ENV, rpm=6000,
                tpm=10_000_000, timeout_s=5.0, backoff_base_s=0.05, backoff_max_s=0.5, progress=False)
    return AnnotateConfig(**{**base, **kw})


def rows(store: RunStore, k: int, prompt: str = "paper") -> list[dict]:
    """The concept table with this test's annotator's labels (the default may be another one)."""
    return concepts_with_labels(store, LAYER, k, annotator_name("openai", "test-model", prompt)).to_pylist()


def failing(run) -> dict:
    """The summary of an annotate run that must end with failed concepts (StageFailed)."""
    with pytest.raises(StageFailed) as failed:
        run()
    return failed.value.summary


def successes(log: list[dict]) -> Counter:
    return Counter(e["hash"] for e in log if e.get("success"))


def cli(store: RunStore, k: int, srv: ServerProcess, *extra: str, key: str = KEY, **popen) -> list[str]:
    return [sys.executable, "-m", "cluster_service.cli", "annotate", store.where(), "--layer", str(LAYER),
            "--k", str(k), "--backend", "openai", "--base-url", srv.url, "--model", "test-model",
            "--api-key-env", KEY_ENV, "--backoff-base-s", "0.05", *extra]


def env(key: str = KEY) -> dict[str, str]:
    return {**os.environ, KEY_ENV: key}


def test_every_concept_labelled_or_failed_through_faults_and_reruns_are_free(fake, tmp_path):
    fake.control(rates={"429": 0.1, "500": 0.08, "503": 0.05, "malformed": 0.05, "hang": 0.03},
                 script=["429", "hang", "malformed", "500"], retry_after_ms=100, hang_s=3.0, seed=1)
    store = make_store(tmp_path / "run", 30)
    summary = annotate_table(store, LAYER, 30, config(fake, timeout_s=0.5, max_retries=10))
    table = rows(store, 30)
    assert {r["label_status"] for r in table} <= {"ok", "failed"}
    assert all(r["label_error"] for r in table if r["label_status"] == "failed")
    assert summary["labelled"] == 30 and summary["failed"] == 0
    for r in table:
        counts = Counter(r["words"])
        top = sorted(counts, key=lambda w: (-counts[w], w))[0]
        assert r["label"].startswith(top) and r["label_backend"] == "openai" and not r["label_is_baseline"]
    log = fake.log()
    faults = Counter(e["fault"] for e in log)
    assert faults["429"] >= 1 and faults["hang"] >= 1 and faults["malformed"] >= 1 and faults["500"] >= 1
    assert summary["calls"] == len(log) and summary["retries"] == len(log) - 30
    assert max(successes(log).values()) == 1
    served = [e for e in log if e.get("success")]
    assert summary["llm_tokens"] == sum(e["prompt_tokens"] + e["completion_tokens"] for e in served)

    again = annotate_table(store, LAYER, 30, config(fake))
    assert again["calls"] == 0 and again["cached"] == 30 and len(fake.log()) == len(log)
    assert [r["label"] for r in rows(store, 30)] == [r["label"] for r in table]


def test_json_prompt_is_validated_and_raw_reply_kept(fake, tmp_path):
    fake.control(script=["not_json_content"])
    store = make_store(tmp_path / "run", 8)
    summary = failing(lambda: annotate_table(store, LAYER, 8, config(fake, prompt="json")))
    table = rows(store, 8, "json")
    failed = [r for r in table if r["label_status"] == "failed"]
    assert summary["failed"] == 1 and len(failed) == 1
    assert "not JSON" in failed[0]["label_error"] and failed[0]["label_raw"].startswith("Sure! Here is")
    for r in table:
        if r["label_status"] == "ok":
            assert r["label_type"] == "semantic" and r["label_description"].startswith("Words like")
            assert r["label_raw"].startswith("{") and r["label_prompt"] == "json"


@pytest.mark.parametrize("style,min_count,refused_twice", [("400", 2, False), ("finish", 2, False),
                                                           ("400", 1, True)])
def test_content_filter_retried_with_unique_types(fake, tmp_path, style, min_count, refused_twice):
    fake.control(filter_words=["London"], filter_style=style, filter_min_count=min_count)
    store = RunStore(tmp_path / "run")
    store.write_concepts(LAYER, 3, synthetic_concept_table([30, 30, 30], themes=["cities", "animals", "cities"]))
    if refused_twice:
        failing(lambda: annotate_table(store, LAYER, 3, config(fake)))
    else:
        annotate_table(store, LAYER, 3, config(fake))
    table = rows(store, 3)
    animals = table[1]
    assert animals["label_status"] == "ok" and animals["label_prompt"] == "paper"
    for r in (table[0], table[2]):
        assert r["words"].count("London") >= 2
        if refused_twice:
            assert r["label_status"] == "failed" and "content filter" in r["label_error"]
        else:
            assert r["label_status"] == "ok" and r["label_prompt"] == "paper+unique_types"
    refusals = sum(e["fault"] in ("filter400", "filter_finish") for e in fake.log())
    assert refusals == (4 if refused_twice else 2)


def test_identical_prompts_share_one_call(fake, tmp_path):
    rows_in = synthetic_concept_table([6, 6, 6, 9], seed=2).to_pylist()
    for r in rows_in[1:3]:
        r["words"], r["examples"] = rows_in[0]["words"], rows_in[0]["examples"]
    store = RunStore(tmp_path / "run")
    store.write_concepts(LAYER, 4, pa.Table.from_pylist(rows_in, schema=CONCEPT_SCHEMA))
    summary = annotate_table(store, LAYER, 4, config(fake))
    assert summary["labelled"] == 4 and summary["calls"] == 2 and summary["cached"] == 2
    assert len(fake.log()) == 2


def test_server_never_sees_more_than_the_rate_in_any_window(fake, tmp_path):
    window, rpm = 2.0, 12
    fake.control(rpm_limit=rpm, window_s=window, latency_s=[0.01, 0.05])
    store = make_store(tmp_path / "run", 36)
    summary = annotate_table(store, LAYER, 36, config(fake, rpm=rpm, rate_window_s=window, concurrency=8))
    log = fake.log()
    arrivals = [e["t"] for e in log]
    assert summary["labelled"] == 36
    assert max_in_window(arrivals, window) <= rpm
    assert not [e for e in log if e["fault"] == "limit"]  # the server's own limit never had to refuse
    assert (len(arrivals) - 1) / (max(arrivals) - min(arrivals)) >= 0.8 * rpm / window


def test_server_never_sees_more_than_the_token_rate_in_any_window(fake, tmp_path):
    window, tpm = 2.0, 1500
    fake.control(tpm_limit=tpm, window_s=window, latency_s=[0.01, 0.05])
    store = make_store(tmp_path / "run", 24)
    summary = annotate_table(store, LAYER, 24, config(fake, tpm=tpm, rate_window_s=window, max_tokens=30))
    log = fake.log()
    tokens = [(e["t"], e["prompt_tokens"] + e["completion_tokens"]) for e in log]
    assert summary["labelled"] == 24 and not [e for e in log if e["fault"] == "limit"]
    assert max_sum_in_window(tokens, window) <= tpm
    span = max(t for t, _ in tokens) - min(t for t, _ in tokens)
    assert sum(n for _, n in tokens) / span >= 0.7 * tpm / window


def test_server_side_limit_429_with_ratelimit_headers_is_honoured(fake, tmp_path):
    fake.control(rpm_limit=6, window_s=1.0, retry_after_ms=None)
    store = make_store(tmp_path / "run", 24)
    summary = annotate_table(store, LAYER, 24, config(fake, rpm=1000, rate_window_s=1.0, concurrency=8))
    refused = [e for e in fake.log() if e["fault"] == "limit"]
    assert summary["labelled"] == 24
    # the first burst (concurrency 8 > the server's 6) is refused in part; then the client adopts the
    # server's x-ratelimit-limit-requests and waits out its reset instead of hammering it
    assert 1 <= len(refused) <= 5


def test_bad_key_stops_at_once_with_one_clear_line(fake, tmp_path):
    store = make_store(tmp_path / "run", 20)
    bad = "sk-wrong-" + secrets.token_hex(8)
    proc = subprocess.run(cli(store, 20, fake, "--concurrency", "8"), env=env(bad), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "rejected the API key (HTTP 401)" in lines[0]
    assert "Traceback" not in proc.stderr and bad not in proc.stderr + proc.stdout
    log = fake.log()
    assert len(log) == 1 and log[0]["status"] == 401  # the probe went alone; nothing followed it
    table = rows(store, 20)
    assert all(r["label_status"] == "failed" and "HTTP 401" in r["label_error"] for r in table)
    assert RunStore(store.where()).read_manifest()["stages"][f"annotate:layer_{LAYER}_k20"]["status"] == "failed"


def test_wrong_model_stops(fake, tmp_path):
    store = make_store(tmp_path / "run", 5)
    with pytest.raises(UserError, match="404 for model 'gpt-nope'"):
        annotate_table(store, LAYER, 5, config(fake, model="gpt-nope"))
    assert len(fake.log()) == 1


def test_missing_key_is_a_user_error(fake, tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(UserError, match=f"{KEY_ENV} is not set"):
        annotate_table(make_store(tmp_path / "run", 2), LAYER, 2, config(fake))


def test_kill_mid_run_then_rerun_repeats_no_successful_call(fake, tmp_path):
    n, done_before_kill = 40, 12
    # after 12 successes every request hangs: the kill lands with requests in flight and no reply in
    # transit, so "repeated" can only mean the client lost a reply it had received
    fake.control(hang_after=done_before_kill, hang_s=30.0, latency_s=[0.02, 0.06])
    store = make_store(tmp_path / "run", n)
    proc = subprocess.Popen(cli(store, n, fake, "--concurrency", "4", "--timeout-s", "60"), env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        log = fake.log()
        if sum(successes(log).values()) >= done_before_kill and any(e["fault"] == "hang" for e in log):
            break
        time.sleep(0.05)
    time.sleep(0.5)
    assert proc.poll() is None, "annotate finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    with sqlite3.connect(store.local_path(ANNOTATIONS)) as db:
        assert db.execute("SELECT COUNT(*) FROM replies").fetchone()[0] == done_before_kill

    fake.control(hang_after=None)
    rerun = subprocess.run(cli(store, n, fake, "--json"), env=env(), capture_output=True, text=True,
                           timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    per_request = successes(fake.log())
    assert len(per_request) == n and max(per_request.values()) == 1
    assert all(r["label_status"] == "ok" for r in rows(store, n))


def test_key_in_no_log_line_or_file(fake, tmp_path):
    fake.control(script=["429", "500", "malformed"], retry_after_ms=50)
    store = make_store(tmp_path / "run", 10)
    proc = subprocess.run([sys.executable, "-m", "cluster_service.cli",
                           "--log-level", "DEBUG", *cli(store, 10, fake)[3:]],
                          env={**env(), "OPENAI_LOG": "debug"}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "annotate finished" in proc.stderr
    assert KEY not in proc.stdout and KEY not in proc.stderr
    files = [p for p in store.local_path().rglob("*") if p.is_file()]
    assert any(p.name.startswith("annotations.sqlite") for p in files)
    for path in files:
        assert KEY.encode() not in path.read_bytes(), path


def test_dry_run_calls_nothing_and_writes_nothing(fake, tmp_path):
    store = make_store(tmp_path / "run", 12)
    before = store.read_bytes(store.concepts_key(LAYER, 12))
    proc = subprocess.run(cli(store, 12, fake, "--dry-run"), env=env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "12 calls to make" in proc.stdout and "estimated cost" in proc.stdout
    cfg = config(fake, dry_run=True, input_price_per_mtok=1.0, output_price_per_mtok=2.0, max_tokens=50)
    est = annotate_table(store, LAYER, 12, cfg)
    concept_rows = store.read_concepts(LAYER, 12).to_pylist()
    prompt = sum(estimate_llm_tokens(t.request["messages"]) for t in build_tasks(cfg, concept_rows))
    assert est["calls"] == 12 and est["est_prompt_tokens"] == prompt and est["est_llm_tokens"] == prompt + 600
    assert est["est_cost_usd"] == pytest.approx((prompt * 1.0 + 600 * 2.0) / 1e6)
    assert fake.log() == [] and not store.has(ANNOTATIONS)
    assert store.read_bytes(store.concepts_key(LAYER, 12)) == before and labels.annotators(store, LAYER, 12) == []


def test_a_failed_run_replaces_no_good_labels_and_exits_1(fake, tmp_path):
    """The bug of issue 9: an openai run that failed for every concept replaced the baseline labels with
    empty ones and exited 0. Now each annotator has its own file, failures keep earlier labels of the same
    annotator, the default moves only to an annotator that labelled everything, and the exit status is 1."""
    n = 12
    store = make_store(tmp_path / "run", n)
    annotate_table(store, LAYER, n, AnnotateConfig(progress=False))
    baseline_file = store.read_bytes("labels/layer_3_k12/baseline.parquet")
    fake.control(rates={"500": 1.0})
    proc = subprocess.run(cli(store, n, fake, "--max-retries", "0"), env=env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and f"{n} of {n} concepts failed: concept 0: HTTP 500" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and "failed 12" in proc.stdout
    assert store.read_bytes("labels/layer_3_k12/baseline.parquet") == baseline_file
    assert labels.default_annotator(store, LAYER, n) == "baseline"
    default = concepts_with_labels(store, LAYER, n).to_pylist()
    assert all(r["label_is_baseline"] and r["label_status"] == "ok" for r in default)
    assert {r["label_status"] for r in rows(store, n)} == {"failed"}  # the openai run's own file says so
    assert store.read_manifest()["stages"][f"annotate:layer_{LAYER}_k{n}"]["status"] == "failed"

    fake.reset()
    summary = annotate_table(store, LAYER, n, config(fake))
    assert summary["labelled"] == n and labels.default_annotator(store, LAYER, n) == "openai-test-model-paper"
    assert labels.annotators(store, LAYER, n) == ["baseline", "openai-test-model-paper"]
    good = rows(store, n)
    assert concepts_with_labels(store, LAYER, n).to_pylist() == good
    assert concepts_with_labels(store, LAYER, n, "baseline").column("label_is_baseline").to_pylist() == [True] * n

    # the same annotator with other settings (new requests, none cached), every call failing: its labels stay
    fake.control(rates={"500": 1.0})
    again = failing(lambda: annotate_table(store, LAYER, n, config(fake, max_tokens=90, max_retries=0)))
    assert again["failed"] == n and rows(store, n) == good
    assert labels.default_annotator(store, LAYER, n) == "openai-test-model-paper"


def test_rerun_asks_again_only_for_the_failed_concepts(fake, tmp_path):
    n = 10
    fake.control(script=["not_json_content", "not_json_content"])
    store = make_store(tmp_path / "run", n)
    first = failing(lambda: annotate_table(store, LAYER, n, config(fake, prompt="json", concurrency=1)))
    assert first["failed"] == 2 and first["calls"] == n
    failed = {r["concept"] for r in rows(store, n, "json") if r["label_status"] == "failed"}
    unusable = {e["hash"] for e in fake.log() if e["fault"] == "not_json_content"}
    assert len(failed) == 2 and len(unusable) == 2
    assert labels.default_annotator(store, LAYER, n) is None  # nobody labelled every concept yet
    with pytest.raises(UserError, match="no default annotator"):
        concepts_with_labels(store, LAYER, n)

    rerun = annotate_table(store, LAYER, n, config(fake, prompt="json"))
    asked = fake.log()[n:]
    assert rerun["calls"] == 2 and rerun["cached"] == n - 2 and rerun["labelled"] == n
    assert {e["hash"] for e in asked} == unusable  # the very requests that failed, nothing else
    assert all(r["label_status"] == "ok" for r in concepts_with_labels(store, LAYER, n).to_pylist())


def test_a_reply_cut_off_by_the_completion_limit_is_flagged_not_clean(fake, tmp_path):
    n = 6
    store = make_store(tmp_path / "run", n)
    summary = annotate_table(store, LAYER, n, config(fake, max_tokens=3))
    assert fake.log() and all(e["finish_reason"] == "length" for e in fake.log())
    assert summary["truncated"] == n and summary["labelled"] == 0 and summary["failed"] == 0
    for r in rows(store, n):
        assert r["label_status"] == "truncated" and r["label"] and "cut off" in r["label_error"]
        assert len(r["label"]) <= 3 * 3.6
    assert labels.default_annotator(store, LAYER, n) == "openai-test-model-paper"  # every concept has a label
    # clean labels of the same annotator are not replaced by cut-off ones (here from the cache: no calls)
    clean = annotate_table(store, LAYER, n, config(fake))
    assert clean["labelled"] == n and {r["label_status"] for r in rows(store, n)} == {"ok"}
    again = annotate_table(store, LAYER, n, config(fake, max_tokens=3))
    assert again["truncated"] == n and again["calls"] == 0 and {r["label_status"] for r in rows(store, n)} == {"ok"}
    # the same cut in a JSON reply leaves no parseable label: failed, and the reason says why
    truncated_json = failing(lambda: annotate_table(store, LAYER, n, config(fake, prompt="json", max_tokens=5)))
    assert truncated_json["failed"] == n
    assert all("not JSON" in r["label_error"] and "cut off" in r["label_error"] for r in rows(store, n, "json"))


def test_set_default_picks_among_annotators(fake, tmp_path):
    n = 4
    store = make_store(tmp_path / "run", n)
    annotate_table(store, LAYER, n, config(fake))
    annotate_table(store, LAYER, n, config(fake, prompt="lexical"))
    assert labels.default_annotator(store, LAYER, n) == "openai-test-model-lexical"
    base = [sys.executable, "-m", "cluster_service.cli", "annotate", store.where(), "--layer", str(LAYER), "--k",
            str(n), "--set-default"]
    done = subprocess.run([*base, "openai-test-model-paper"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert labels.default_annotator(store, LAYER, n) == "openai-test-model-paper"
    assert concepts_with_labels(store, LAYER, n).column("label_prompt").to_pylist() == ["paper"] * n
    unknown = subprocess.run([*base, "gpt-5"], capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 2 and unknown.stderr.strip().count("\n") == 0
    assert "'gpt-5' (there are: openai-test-model-lexical, openai-test-model-paper)" in unknown.stderr
    assert fake.log() and len(fake.log()) == 2 * n  # setting the default labels nothing


# ---- servers that queue, as self-hosted ones do (llama.cpp, vLLM, Ollama): ``slots`` serve at once, the
# others wait first come first served, each taking time proportional to its prompt; replies streamed.
# The box these run on is shared, so timing bounds are generous; the 10% throughput goal is checked
# exactly in test_annotate_adaptive (a simulation) and measured in benchmarks/bench_annotate.py.

QUEUE_LAYER = 1


def queue_store(root: Path, n: int, lo: int = 18, hi: int = 24) -> RunStore:
    store = RunStore(root)
    sizes = [lo + (5 * i) % (hi - lo + 1) for i in range(n)]
    store.write_concepts(QUEUE_LAYER, n, synthetic_concept_table(sizes, seed=n))
    return store


def queue_config(srv: ServerProcess, **kw) -> AnnotateConfig:
    """No rate limit to speak of: the server's slots are the only bound."""
    return config(srv, **{"rpm": 60_000, "tpm": 100_000_000, **kw})


def run_table(store: RunStore, n: int, cfg: AnnotateConfig) -> dict:
    try:
        return annotate_table(store, QUEUE_LAYER, n, cfg)
    except AnnotationFailed as exc:
        return exc.summary


def most_at_once(log: list[dict]) -> int:
    """The most of these requests in the server at once (queued or served), from their arrival and end
    times (the server's own count would include other tests' requests still hanging there)."""
    events = sorted([(e["t"], 1) for e in log] + [(e["done_t"], -1) for e in log])
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def sent_twice(log: list[dict]) -> int:
    return sum(c - 1 for c in Counter(e["hash"] for e in log).values())


def test_one_slot_server_no_timeouts_nothing_sent_twice_settles_at_one(fake, tmp_path):
    n = 48  # long enough that the re-probes of 2 (each confirmed on a second batch) are the minority
    fake.control(slots=1, per_token_s=0.0005)  # ~70 ms per concept prompt, one at a time
    store = queue_store(tmp_path / "adaptive", n)
    summary = run_table(store, n, queue_config(fake, concurrency=16, timeout_s=0.6))
    log = fake.log()
    assert summary["labelled"] == n and summary["timeouts"] == 0
    assert len(log) == n and sent_twice(log) == 0 and not any(e.get("client_gone") for e in log)
    assert all(e["stream"] for e in log) and most_at_once(log) <= 2
    assert summary["concurrency"]["settled"] == 1 and summary["concurrency"]["ceiling"] == 16, summary["concurrency"]
    # usage came in the streams' last chunks
    assert summary["prompt_tokens"] == sum(e["prompt_tokens"] for e in log)
    assert summary["completion_tokens"] == sum(e["completion_tokens"] for e in log) > 0

    # the same at a fixed 16 in flight: the queued requests time out and are sent again, while the
    # server still works on the abandoned ones (the failure this pool avoids)
    fake.reset(slots=1, per_token_s=0.0005)
    fixed = run_table(queue_store(tmp_path / "fixed", n), n,
                      queue_config(fake, concurrency=16, timeout_s=0.6, adaptive_concurrency=False, max_retries=2))
    log = fake.log()
    assert fixed["timeouts"] > 0 and sent_twice(log) > 0 and any(e.get("client_gone") for e in log)


def throughput(fake: ServerProcess, root: Path, n: int, **kw) -> tuple[float, float, dict]:
    """Concepts per second over the whole run, and over its second half (arrivals at the server, once the
    adaptive limit has ramped up from 1), and the run's summary."""
    fake.reset(slots=8, per_token_s=0.0015)  # ~200 ms per concept prompt, 8 at once
    cfg = queue_config(fake, **{"concurrency": 16, "timeout_s": 3.0, **kw})
    summary = run_table(queue_store(root, n, 12, 30), n, cfg)
    log = fake.log()
    assert summary["labelled"] == n and summary["timeouts"] == 0 and sent_twice(log) == 0
    arrivals = sorted(e["t"] for e in log)[n // 2:]
    return n / summary["seconds"], (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]), summary


def test_eight_slot_server_settles_near_eight_at_the_best_fixed_throughput(fake, tmp_path):
    n = 160
    whole, settled, summary = throughput(fake, tmp_path / "adaptive", n)
    fixed = [throughput(fake, tmp_path / f"fixed{c}", n, concurrency=c, adaptive_concurrency=False)
             for c in (8, 16)]
    # margins for a shared 2-core box; the benchmark measures the goal (within 10% of the best fixed)
    assert 5 <= summary["concurrency"]["settled"] <= 12, summary["concurrency"]
    # once ramped up, as fast as a fixed 8 (margin: the box is shared). A fixed 16 can be faster still
    # on a loaded box (requests queued at the server hide the client's turnaround), which the limit
    # does not chase: see the benchmark's rows against the best of 1..16. Over the whole of this short
    # run the ramp from 1 (a few service times) costs more than in the benchmark's longer one.
    eight, sixteen = fixed
    assert settled >= 0.7 * eight[1], (settled, eight[1], sixteen[1])
    assert whole >= 0.4 * max(eight[0], sixteen[0]), (whole, eight[0], sixteen[0])


def test_a_stream_that_stops_mid_reply_is_cut_at_the_chunk_timeout_and_retried(fake, tmp_path):
    n, chunk_timeout = 4, 0.4
    fake.control(script=["stall"], hang_s=20.0)
    store = queue_store(tmp_path / "run", n)
    summary = run_table(store, n, queue_config(fake, timeout_s=5.0, chunk_timeout_s=chunk_timeout, concurrency=1))
    log = fake.log()
    assert summary["labelled"] == n and summary["timeouts"] == 1 and summary["retries"] == 1
    stalled = [e for e in log if e.get("stalled")]
    assert len(stalled) == 1 and len(log) == n + 1
    retry = next(e for e in log if e["hash"] == stalled[0]["hash"] and not e.get("stalled"))
    waited = retry["t"] - stalled[0]["first_chunk_t"]
    # noticed after the chunk timeout (not the 5 s first-token timeout, nor the 20 s stall), then backoff
    assert chunk_timeout <= waited <= chunk_timeout + 0.5 + 4.0, waited


def test_without_streaming_one_plain_call_per_concept(fake, tmp_path):
    n = 6
    summary = run_table(queue_store(tmp_path / "run", n), n, queue_config(fake, stream=False, timeout_s=5.0))
    log = fake.log()
    assert summary["labelled"] == n and len(log) == n and not any(e["stream"] for e in log)
    assert summary["prompt_tokens"] == sum(e["prompt_tokens"] for e in log)


# ---- labels at every level of the hierarchy (--hierarchy) and the whole job's dry run: concept tables
# cut from one synthetic tree with the cluster stage's own ``hierarchy`` links, so the labels can be
# checked against the tree.

TREE_LAYER = 2
THEMES = ["cities", "weekdays", "animals", "numbers", "adverbs", "ing_verbs"]
#: leaf -> concept at each K: K=3 pairs the leaves, K=2 merges the first two pairs and keeps the third
LEAVES = {6: np.arange(6), 3: np.array([0, 0, 1, 1, 2, 2]), 2: np.array([0, 0, 0, 0, 1, 1])}
ANNOTATOR = annotator_name("openai", "test-model", "paper")


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
        store.write_concepts(TREE_LAYER, k, pa.Table.from_pylist(rows, schema=CONCEPT_SCHEMA))
    return store


def tree_config(srv: ServerProcess, **kw) -> AnnotateConfig:
    return config(srv, **{"hierarchy": True, "concurrency": 4, **kw})


def labelled(store: RunStore, k: int) -> list[dict]:
    return concepts_with_labels(store, TREE_LAYER, k, ANNOTATOR).to_pylist()


def test_hierarchy_labels_follow_the_tree_from_the_children_up(fake, tmp_path):
    fake.control(log_prompts=True)
    store = tree_store(tmp_path / "run")
    summaries = annotate_run(store, tree_config(fake))
    assert list(summaries) == [f"layer_{TREE_LAYER}_k{k}" for k in (6, 3, 2)]  # finest first
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
    rows = store.read_concepts(TREE_LAYER, 3).to_pylist()
    full = [estimate_llm_tokens(t.request["messages"]) for t in build_tasks(tree_config(fake), rows)]
    short = [r["label_prompt_tokens"] for r in tables[3]]
    assert all(s < 0.75 * f for s, f in zip(short, full, strict=True)), (short, full)

    again = annotate_run(store, tree_config(fake))  # resumable: every call answered by the cache
    assert all(s["calls"] == 0 for s in again.values()) and len(fake.log()) == len(log)


def test_without_labelled_children_the_usual_prompt(fake, tmp_path):
    store = tree_store(tmp_path / "run")
    annotate_run(store, tree_config(fake, k=[3]))  # the finer K=6 was never labelled
    assert {r["label_prompt"] for r in labelled(store, 3)} == {"paper"}


def test_dry_run_prices_the_whole_job_and_sends_nothing(fake, tmp_path):
    store = tree_store(tmp_path / "run")
    cfg = tree_config(fake, dry_run=True, input_price_per_mtok=1.0, output_price_per_mtok=4.0, rpm=3, tpm=1e6)
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
