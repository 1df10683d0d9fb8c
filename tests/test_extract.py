"""Extraction against the real packaged model, real Zarr on disk, real local Ray."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from cluster_service.cli import main as cli
from cluster_service.corpus import CorpusConfig
from cluster_service.corpus.stage import ingest_run
from cluster_service.extract.config import ExtractConfig
from cluster_service.extract.sequences import best_window, windows
from cluster_service.extract.stage import extract_run
from cluster_service.extract.writer import done_shards
from cluster_service.store import RunStore


def extract_into(run, corpus: CorpusConfig, cfg: ExtractConfig) -> dict:
    """Ingest then extract, as `cluster-service extract` does."""
    store = RunStore(run)
    ingest_run(store, corpus)
    return extract_run(store, cfg)


SENTENCES = [
    "The antidisestablishmentarianism debate bored pneumonoultramicroscopicsilicovolcanoconiosis experts .",
    "London and Paris are capitals , but Supercalifragilisticexpialidocious is a word .",
    "She sells sea shells by the sea shore .",
    "Dogs bark ; cats meow ; unbelievably , hippopotamuses yawn .",
]


def write_corpus(path: Path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def hf(model_path):
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(model_path).eval()
    return model, AutoTokenizer.from_pretrained(model_path)


def reference(hf, words: list[str], pooling: str) -> np.ndarray:
    """A direct forward pass of ``words`` alone: [layers, words, D], via transformers' own word_ids."""
    model, tok = hf
    enc = tok(words, is_split_into_words=True, return_tensors="pt")
    with torch.inference_mode():
        states = torch.stack(model(**enc, output_hidden_states=True).hidden_states)[:, 0]
    wid = enc.word_ids(0)
    out = []
    for j in range(len(words)):
        idx = [i for i, w in enumerate(wid) if w == j]
        pick = {"first": states[:, idx[0]], "last": states[:, idx[-1]], "mean": states[:, idx].mean(1)}
        out.append(pick[pooling])
    return torch.stack(out, 1).numpy()


def stored(store: RunStore, layer: int) -> np.ndarray:
    return store.layer_array(layer)[:]


def rows_by_sentence(store: RunStore) -> dict[int, list[tuple[int, int]]]:
    t = store.read_tokens(["row", "sentence_id", "position"]).to_pydict()
    out: dict[int, list[tuple[int, int]]] = {}
    for r, s, p in zip(t["row"], t["sentence_id"], t["position"], strict=True):
        out.setdefault(s, []).append((p, r))
    return out


@pytest.mark.integration
@pytest.mark.parametrize("pooling", ["first", "last", "mean"])
def test_vectors_equal_direct_forward(tmp_path, hf, pooling):
    corpus = write_corpus(tmp_path / "c.txt", SENTENCES)
    run = tmp_path / "run"
    extract_into(str(run), CorpusConfig(path=corpus), ExtractConfig(pooling=pooling, engine="local",
                                                                   shard_rows=16))
    store = RunStore(run)
    manifest = store.read_manifest()
    assert manifest["layers"] == list(range(7))
    arrays = np.stack([stored(store, layer) for layer in range(7)])
    texts = store.read_sentences().column("text").to_pylist()
    many = 0
    for sid, rows in rows_by_sentence(store).items():
        words = texts[sid].split(" ")
        ref = reference(hf, words, pooling)
        for pos, row in rows:
            np.testing.assert_allclose(arrays[:, row].astype(np.float32), ref[:, pos], rtol=2e-2, atol=2e-2)
            many += len(hf[1].tokenize(words[pos])) >= 5
    assert many >= 3  # the long words really were split into many subwords


@pytest.mark.integration
def test_word_without_subwords_reads_unknown_token(tmp_path, hf):
    """A word the tokenizer maps to nothing (a zero-width space) is read as [UNK], not dropped."""
    lines = ["cats \u200b purr loudly", "plain words only here"]
    corpus = write_corpus(tmp_path / "c.txt", lines)
    run = tmp_path / "run"
    extract_into(str(run), CorpusConfig(path=corpus, tokenizer="whitespace"),
                ExtractConfig(engine="local", layers=[0, 6], shard_rows=3, pooling="first"))
    store = RunStore(run)
    assert hf[1].tokenize("\u200b") == []  # the case under test really arises
    arrays = np.stack([stored(store, layer) for layer in (0, 6)])
    texts = store.read_sentences().column("text").to_pylist()
    for sid, rows in rows_by_sentence(store).items():
        words = [w if hf[1].tokenize(w) else hf[1].unk_token for w in texts[sid].split(" ")]
        ref = reference(hf, words, "first")[[0, 6]]
        for pos, row in rows:
            np.testing.assert_allclose(arrays[:, row].astype(np.float32), ref[:, pos], rtol=2e-2, atol=2e-2)


@pytest.mark.integration
def test_long_sentence_windowed_not_truncated(tmp_path, hf):
    long_words = ("the quick brown fox jumps over the lazy dog while unbelievably enormous "
                  "hippopotamuses watch silently from the muddy riverbank at dusk").split()
    corpus = write_corpus(tmp_path / "c.txt", [" ".join(long_words)])
    run = tmp_path / "run"
    max_length = 12
    extract_into(str(run), CorpusConfig(path=corpus, tokenizer="whitespace"),
                ExtractConfig(engine="local", max_length=max_length, layers=[0, 3, 6]))
    store = RunStore(run)
    assert store.read_manifest()["tokens"] == len(long_words)  # every word stored, none dropped
    model, tok = hf
    lengths = np.asarray([len(tok.tokenize(w)) for w in long_words])
    spans = windows(lengths, max_length - 2)
    assert len(spans) > 2 and all(lengths[a:b].sum() <= max_length - 2 for a, b in spans)
    arrays = np.stack([stored(store, layer) for layer in (0, 3, 6)])
    for pos in range(len(long_words)):
        a, b = spans[best_window(pos, spans)]
        ref = reference(hf, long_words[a:b], "last")[[0, 3, 6], pos - a]
        np.testing.assert_allclose(arrays[:, pos].astype(np.float32), ref, rtol=2e-2, atol=2e-2)


def demo_lines(n: int) -> list[str]:
    words = "alpha beta gamma delta river mountain quickly slowly London Paris walked running".split()
    rng = np.random.default_rng(0)
    return [" ".join(rng.choice(words, size=int(rng.integers(4, 12)))) for _ in range(n)]


def read_store(run: Path) -> dict[str, object]:
    store = RunStore(run)
    out: dict[str, object] = {f"layer_{layer}": stored(store, layer) for layer in store.read_manifest()["layers"]}
    out["tokens"] = store.read_tokens().to_pydict()
    out["sentences"] = store.read_sentences().to_pydict()
    return out


def assert_same_store(a: Path, b: Path) -> None:
    sa, sb = read_store(a), read_store(b)
    assert sa.keys() == sb.keys()
    for key in sa:
        if isinstance(sa[key], np.ndarray):
            assert np.array_equal(sa[key], sb[key]), key  # bit-identical, not just close
        else:
            assert sa[key] == sb[key], key


@pytest.mark.integration
def test_resume_after_sigkill_of_driver_is_identical(tmp_path):
    corpus = write_corpus(tmp_path / "c.txt", demo_lines(400))
    args = ["extract", "--corpus-path", corpus, "--engine", "local", "--shard-rows", "128",
            "--chunk-rows", "64", "--layers", "0,6", "--cpus-per-worker", "2"]
    assert cli([*args[:1], str(tmp_path / "a"), *args[1:]]) == 0
    b = tmp_path / "b"
    proc = subprocess.Popen([sys.executable, "-m", "cluster_service.cli", *args[:1], str(b), *args[1:]],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(done_shards(RunStore(b))) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    total = RunStore(b).read_manifest()["shards"]
    assert 3 <= len(done_shards(RunStore(b))) < total, "the kill must land mid-run"
    assert cli([*args[:1], str(b), *args[1:]]) == 0
    assert_same_store(tmp_path / "a", b)


def kill_one_worker_after(store: RunStore, n_done: int, killed: list[int]) -> None:
    deadline = time.time() + 120
    while time.time() < deadline:
        if len(done_shards(store)) >= n_done:
            for proc in psutil.process_iter(["pid", "cmdline"]):
                if any("ExtractWorker" in part for part in (proc.info["cmdline"] or [])):
                    os.kill(proc.info["pid"], signal.SIGKILL)
                    killed.append(proc.info["pid"])
                    return
        time.sleep(0.02)


@pytest.mark.integration
def test_ray_worker_sigkill_mid_run_store_identical(tmp_path, ray_local):
    corpus = write_corpus(tmp_path / "c.txt", demo_lines(400))
    common = {"shard_rows": 128, "chunk_rows": 64, "layers": [0, 6], "cpus_per_worker": 2}
    extract_into(str(tmp_path / "a"), CorpusConfig(path=corpus), ExtractConfig(engine="local", **common))
    store = RunStore(tmp_path / "b")
    killed: list[int] = []
    killer = threading.Thread(target=kill_one_worker_after, args=(store, 2, killed), daemon=True)
    killer.start()
    summary = extract_into(str(store.local_path()), CorpusConfig(path=corpus), ExtractConfig(engine="ray", **common))
    killer.join(timeout=5)
    assert killed, "no Ray worker was killed: the test did not exercise recovery"
    assert summary["shards_computed"] == store.read_manifest()["shards"]
    assert_same_store(tmp_path / "a", store.local_path())


@pytest.mark.integration
def test_info_and_rerun_is_noop(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "c.txt", SENTENCES)
    run = str(tmp_path / "run")
    assert cli(["extract", run, "--corpus-path", corpus, "--engine", "local", "--layers", "1"]) == 0
    capsys.readouterr()
    assert cli(["extract", run, "--corpus-path", corpus, "--engine", "local", "--layers", "1"]) == 0
    assert '"shards_computed": 0' in capsys.readouterr().out
    assert cli(["info", run]) == 0
    out = capsys.readouterr().out
    assert "shards_done      1/1" in out and "layers" in out
    # resuming with a different configuration is refused, naming the field
    assert cli(["extract", run, "--corpus-path", corpus, "--engine", "local", "--layers", "2"]) == 2
    assert "extract.layers" in capsys.readouterr().err


def one_line_error(capsys, argv: list[str]) -> str:
    code = cli(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


@pytest.mark.integration
def test_bad_inputs_give_one_clear_line(tmp_path, capsys):
    run = str(tmp_path / "run")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    assert "empty.txt" in one_line_error(capsys, ["extract", run, "--corpus-path", str(empty)])
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"good line\nanother good\nbroken \xff\xfe here\n")
    err = one_line_error(capsys, ["extract", run, "--corpus-path", str(bad)])
    assert "bad.txt" in err and "3" in err
    jl = tmp_path / "c.jsonl"
    jl.write_text('{"text": "fine here"}\n{"body": "no text field"}\n')
    err = one_line_error(capsys, ["extract", run, "--corpus-path", str(jl)])
    assert "c.jsonl" in err and "2" in err and "text" in err
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["a b c"]}), tmp_path / "c.parquet")
    err = one_line_error(capsys, ["extract", run, "--corpus-path", str(tmp_path / "c.parquet")])
    assert "c.parquet" in err and "text" in err
    good = write_corpus(tmp_path / "good.txt", SENTENCES)
    err = one_line_error(capsys, ["extract", run, "--corpus-path", good, "--model", "/no/such/model"])
    assert "/no/such/model" in err
    err = one_line_error(capsys, ["extract", run, "--corpus-path", good, "--layers", "9"])
    assert "9" in err and "0..6" in err
    assert not (tmp_path / "run" / "run.json").exists()  # nothing half-made survives a refused input


@pytest.fixture(scope="module")
def tiny_decoder(tmp_path_factory) -> str:
    """A GPT-2-style decoder (random weights) with a byte-level BPE tokenizer trained here: no hub needed."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2Model, GPT2TokenizerFast

    path = tmp_path_factory.mktemp("gpt2")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(SENTENCES * 20 + demo_lines(200), vocab_size=400, min_frequency=1,
                            special_tokens=["<|endoftext|>"])
    tok = GPT2TokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                            unk_token="<|endoftext|>")
    tok.save_pretrained(path)
    torch.manual_seed(0)
    GPT2Model(GPT2Config(vocab_size=len(tok), n_positions=24, n_embd=32, n_layer=2, n_head=2)).save_pretrained(path)
    return str(path)


@pytest.mark.integration
def test_decoder_model_without_special_tokens(tmp_path, tiny_decoder):
    from transformers import AutoModel, AutoTokenizer

    corpus = write_corpus(tmp_path / "c.txt", SENTENCES)
    run = tmp_path / "run"
    extract_into(str(run), CorpusConfig(path=corpus), ExtractConfig(model=tiny_decoder, engine="local"))
    store = RunStore(run)
    assert store.read_manifest()["layers"] == [0, 1, 2]
    hf = (AutoModel.from_pretrained(tiny_decoder).eval(), AutoTokenizer.from_pretrained(tiny_decoder,
                                                                                      add_prefix_space=True))
    assert hf[1](["a"], is_split_into_words=True)["input_ids"] == hf[1](["a"], is_split_into_words=True,
                                                                       add_special_tokens=False)["input_ids"]
    arrays = np.stack([stored(store, layer) for layer in range(3)])
    texts = store.read_sentences().column("text").to_pylist()
    checked = windowed = 0
    for sid, rows in rows_by_sentence(store).items():
        words = texts[sid].split(" ")
        n_sub = sum(len(hf[1].tokenize(" " + w)) for w in words)
        if n_sub > 24:  # longer than the model's 24 positions: windowed, checked by the encoder test
            windowed += 1
            continue
        ref = reference(hf, words, "last")
        for pos, row in rows:
            np.testing.assert_allclose(arrays[:, row].astype(np.float32), ref[:, pos], rtol=2e-2, atol=2e-2)
            checked += 1
    assert checked >= 5 and windowed >= 1


@pytest.mark.integration
def test_a_computed_shard_returns_while_the_next_one_holds_the_model(tmp_path):
    """A shard off the model must return at once: if it waited for the next shard's forward passes,
    its caller (a Ray concurrency slot, a local thread) could not hand over a new shard meanwhile and
    the model would idle between shards."""
    from cluster_service.extract.stage import prepare_store
    from cluster_service.extract.tasks import ShardTasks
    from cluster_service.extract.worker import ExtractWorker

    corpus = write_corpus(tmp_path / "c.txt", SENTENCES)
    cfg = ExtractConfig(engine="local", layers=[3], shard_rows=8)
    store = RunStore(tmp_path / "run")
    ingest_run(store, CorpusConfig(path=corpus))
    prepare_store(store, cfg)
    task = ShardTasks(store, cfg.shard_rows).task(0)
    worker = ExtractWorker(store.where(), cfg, [3])
    computed = threading.Event()
    compute = worker.computer.compute

    def compute_then_signal(*args):
        out = compute(*args)
        computed.set()
        return out

    worker.computer.compute = compute_then_signal
    done = threading.Event()
    caller = threading.Thread(target=lambda: (worker.process(task), done.set()), daemon=True)
    caller.start()
    assert computed.wait(60)
    with worker.model_lock:  # as the next shard's forward passes would
        assert done.wait(10), "process() waited for the model after its shard was computed"
    caller.join(10)
    assert worker.flush() == 1 and done_shards(store) == {0}
