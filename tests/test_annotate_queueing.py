"""The pool against a server that queues, as a self-hosted one does (llama.cpp, vLLM, Ollama): the fake
OpenAI server in its own process with ``slots`` (at most that many requests served at once, the others
wait first come first served, each taking time proportional to its prompt) and streamed replies.
Everything is counted on the server. The box these run on is shared, so timing bounds are generous;
the 10% throughput goal is checked exactly in ``test_annotate_adaptive`` (simulation) and measured in
``benchmarks/bench_annotate.py``."""

from __future__ import annotations

import secrets
from collections import Counter
from pathlib import Path

import pytest

from cluster_service.annotate.config import AnnotateConfig
from cluster_service.annotate.stage import AnnotationFailed, annotate_table
from cluster_service.store import RunStore
from cluster_service.testing.concepts import synthetic_concept_table
from cluster_service.testing.openai_server import ServerProcess

pytestmark = pytest.mark.integration

KEY = "sk-test-" + secrets.token_hex(16)
KEY_ENV = "ANNOTATE_QUEUE_TEST_KEY"
LAYER = 1


@pytest.fixture(scope="module")
def server():
    with ServerProcess(KEY) as srv:
        yield srv


@pytest.fixture
def fake(server, monkeypatch):
    server.reset()
    monkeypatch.setenv(KEY_ENV, KEY)
    return server


def make_store(root: Path, n: int, lo: int = 18, hi: int = 24) -> RunStore:
    store = RunStore(root)
    sizes = [lo + (5 * i) % (hi - lo + 1) for i in range(n)]
    store.write_concepts(LAYER, n, synthetic_concept_table(sizes, seed=n))
    return store


def config(srv: ServerProcess, **kw) -> AnnotateConfig:
    base = dict(backend="openai", base_url=srv.url, model="test-model", api_key_env=KEY_ENV, rpm=60_000,
                tpm=100_000_000, backoff_base_s=0.05, backoff_max_s=0.5, progress=False)
    return AnnotateConfig(**{**base, **kw})


def run(store: RunStore, n: int, cfg: AnnotateConfig) -> dict:
    try:
        return annotate_table(store, LAYER, n, cfg)
    except AnnotationFailed as exc:
        return exc.summary


def sent_twice(log: list[dict]) -> int:
    return sum(c - 1 for c in Counter(e["hash"] for e in log).values())


def test_one_slot_server_no_timeouts_nothing_sent_twice_settles_at_one(fake, tmp_path):
    n = 24
    fake.control(slots=1, per_token_s=0.0003)  # ~40 ms per concept prompt, one at a time
    store = make_store(tmp_path / "adaptive", n)
    summary = run(store, n, config(fake, concurrency=16, timeout_s=0.3))
    log = fake.log()
    assert summary["labelled"] == n and summary["timeouts"] == 0
    assert len(log) == n and sent_twice(log) == 0 and not any(e.get("client_gone") for e in log)
    assert all(e["stream"] for e in log) and max(e["in_server"] for e in log) <= 2
    assert summary["concurrency"]["settled"] == 1 and summary["concurrency"]["ceiling"] == 16
    # usage came in the streams' last chunks
    assert summary["prompt_tokens"] == sum(e["prompt_tokens"] for e in log)
    assert summary["completion_tokens"] == sum(e["completion_tokens"] for e in log) > 0

    # the same at a fixed 16 in flight: the queued requests time out and are sent again, while the
    # server still works on the abandoned ones (the failure this pool avoids)
    fake.reset(slots=1, per_token_s=0.0003)
    fixed = run(make_store(tmp_path / "fixed", n), n,
                config(fake, concurrency=16, timeout_s=0.3, adaptive_concurrency=False, max_retries=2))
    log = fake.log()
    assert fixed["timeouts"] > 0 and sent_twice(log) > 0 and any(e.get("client_gone") for e in log)


def throughput(fake: ServerProcess, root: Path, n: int, **kw) -> tuple[float, dict]:
    fake.reset(slots=8, per_token_s=0.0008)  # ~100 ms per concept prompt, 8 at once
    summary = run(make_store(root, n, 12, 30), n, config(fake, concurrency=16, timeout_s=2.0, **kw))
    log = fake.log()
    assert summary["labelled"] == n and summary["timeouts"] == 0 and sent_twice(log) == 0
    return n / summary["seconds"], summary


def test_eight_slot_server_settles_near_eight_at_the_best_fixed_throughput(fake, tmp_path):
    n = 200
    adaptive, summary = throughput(fake, tmp_path / "adaptive", n)
    best = max(throughput(fake, tmp_path / f"fixed{c}", n, concurrency=c, adaptive_concurrency=False)[0]
               for c in (8, 16))
    assert 6 <= summary["concurrency"]["settled"] <= 10, summary["concurrency"]
    assert adaptive >= 0.75 * best, (adaptive, best)


def test_a_stream_that_stops_mid_reply_is_cut_at_the_chunk_timeout_and_retried(fake, tmp_path):
    n, chunk_timeout = 4, 0.4
    fake.control(script=["stall"], hang_s=20.0)
    store = make_store(tmp_path / "run", n)
    summary = run(store, n, config(fake, timeout_s=5.0, chunk_timeout_s=chunk_timeout, concurrency=1))
    log = fake.log()
    assert summary["labelled"] == n and summary["timeouts"] == 1 and summary["retries"] == 1
    stalled = [e for e in log if e.get("stalled")]
    assert len(stalled) == 1 and len(log) == n + 1
    retry = next(e for e in log if e["hash"] == stalled[0]["hash"] and not e.get("stalled"))
    waited = retry["t"] - stalled[0]["first_chunk_t"]
    # noticed after the chunk timeout (not the 5 s first-token timeout, nor the 20 s stall), then backoff
    assert chunk_timeout <= waited <= chunk_timeout + 0.5 + 1.5, waited


def test_without_streaming_one_plain_call_per_concept(fake, tmp_path):
    n = 6
    summary = run(make_store(tmp_path / "run", n), n, config(fake, stream=False, timeout_s=5.0))
    log = fake.log()
    assert summary["labelled"] == n and len(log) == n and not any(e["stream"] for e in log)
    assert summary["prompt_tokens"] == sum(e["prompt_tokens"] for e in log)
