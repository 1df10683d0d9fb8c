"""Packed (padding-free) extraction: the same vectors as the padded path, with almost no padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_extract import tiny_decoder  # noqa: F401  (the GPT-2-style decoder fixture)

from cluster_service.cli import main as cli
from cluster_service.corpus import CorpusConfig
from cluster_service.corpus.stage import ingest_run
from cluster_service.extract.config import ExtractConfig
from cluster_service.extract.model import load_tokenizer
from cluster_service.extract.packing import block_mask, make_packed_batches, pack_sequences, padding_fraction
from cluster_service.extract.prepare import preparer_for
from cluster_service.extract.sequences import ShardPlan, make_batches
from cluster_service.extract.stage import extract_run
from cluster_service.extract.tasks import ShardTasks
from cluster_service.store import RunStore

SENTENCES = [
    "The antidisestablishmentarianism debate bored pneumonoultramicroscopicsilicovolcanoconiosis experts .",
    "London and Paris are capitals , but Supercalifragilisticexpialidocious is a word .",
    "She sells sea shells by the sea shore .",
    "Dogs bark ; cats meow ; unbelievably , hippopotamuses yawn .",
    "Yes .",
    ("the quick brown fox jumps over the lazy dog while unbelievably enormous hippopotamuses watch "
     "silently from the muddy riverbank at dusk and the river keeps flowing past the old mill"),
]


@pytest.mark.unit
def test_best_fit_packs_every_sequence_once_without_overlap():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 40, size=500)
    lengths[:3] = [70, 64, 65]  # longer than a row: rows of their own
    row, offset, fills = pack_sequences(lengths, 64)
    cover: dict[int, list[tuple[int, int]]] = {}
    for s in range(len(lengths)):
        cover.setdefault(int(row[s]), []).append((int(offset[s]), int(offset[s] + lengths[s])))
    for r, spans in cover.items():
        spans.sort()
        assert spans[0][0] == 0 and all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
        assert spans[-1][1] == fills[r]
        assert fills[r] <= 64 or len(spans) == 1
    small = lengths[lengths <= 64]
    assert len(fills) <= -(-small.sum() // 64) + 3 + 2  # best-fit decreasing: near the lower bound
    again = pack_sequences(lengths, 64)
    assert all(np.array_equal(a, b) for a, b in zip((row, offset, fills), again, strict=True))


def synthetic_plan(lengths: list[int]) -> ShardPlan:
    """Sequences of distinct ids, one word per subword pair, so every word is traceable."""
    rng = np.random.default_rng(1)
    lens = np.asarray(lengths, dtype=np.int64)
    start = np.concatenate([[0], np.cumsum(lens)])
    ids = rng.integers(5, 30000, size=int(start[-1]))
    seq, a = [], []
    for s, n in enumerate(lengths):
        for p in range(1, n - 1, 2):
            seq.append(s)
            a.append(p)
    a = np.asarray(a)
    return ShardPlan(ids, start, np.asarray(seq), a, np.minimum(a + 2, lens[np.asarray(seq)] - 1))


@pytest.mark.unit
def test_packed_batches_hold_each_word_where_the_padded_ones_do():
    plan = synthetic_plan([12, 5, 30, 7, 7, 19, 3, 60, 11, 25])
    padded = make_batches(plan, 4096, 0)
    packed = make_packed_batches(plan, 64, 32, 0, position_offset=2)
    assert len(packed) > 1  # batch_tokens really cut the rows into batches

    def per_row(batches, which):
        out = {}
        for b in batches:
            flat = b.ids.reshape(-1)
            for r, i in zip(b.rows, getattr(b, which), strict=True):
                out[int(r)] = int(flat[i])
        return out

    for which in ("first", "last"):
        assert per_row(padded, which) == per_row(packed, which)
    assert sorted(np.concatenate([b.rows for b in packed]).tolist()) == list(range(len(plan.row_seq)))
    rows_with_several = 0
    for b in packed:
        for ids, pos, seg in zip(b.ids, b.positions, b.segments, strict=True):
            for s in range(seg.max() + 1):
                where = np.flatnonzero(seg == s)
                assert np.array_equal(pos[where], np.arange(len(where)) + 2)  # restarted, offset applied
                assert np.all(np.diff(where) == 1)  # contiguous
            assert np.all(ids[seg < 0] == 0)
            rows_with_several += seg.max() >= 1
    assert rows_with_several >= 2
    assert padding_fraction(packed) < padding_fraction(padded)


@pytest.mark.unit
def test_block_mask_keeps_attention_inside_each_sequence():
    seg = torch.tensor([[0, 0, 1, 1, 1, -1]])
    m = block_mask(seg, causal=False)[0, 0]
    assert m.shape == (6, 6) and m[0, 1] and not m[1, 2] and m[2, 4] and not m[4, 5] and m[5, 5]
    c = block_mask(seg, causal=True)[0, 0]
    assert c[4, 2] and not c[2, 4] and not c[1, 2] and c[1, 0]
    add = block_mask(seg, causal=False, additive_dtype=torch.float32)[0, 0]
    assert add[0, 1] == 0 and add[1, 2] == torch.finfo(torch.float32).min


def extract_both(tmp_path, model: str, corpus_lines: list[str], **kw) -> tuple[RunStore, RunStore]:
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(corpus_lines) + "\n")
    stores = []
    for packed in (False, True):
        store = RunStore(tmp_path / f"run_{'packed' if packed else 'padded'}")
        ingest_run(store, CorpusConfig(path=str(corpus), tokenizer="whitespace"))
        extract_run(store, ExtractConfig(model=model, engine="local", packed=packed, **kw))
        stores.append(store)
    return stores[0], stores[1]


def assert_same_vectors(padded: RunStore, packed: RunStore) -> None:
    layers = padded.read_manifest()["layers"]
    assert packed.read_manifest()["layers"] == layers
    for layer in layers:
        a = padded.layer_array(layer)[:].astype(np.float32)
        b = packed.layer_array(layer)[:].astype(np.float32)
        assert np.abs(a).max() > 0.1  # real vectors, not the fill value
        # float32 on the CPU: the paths differ by float16 rounding (one unit in the last place) at most
        np.testing.assert_allclose(b, a, rtol=2e-3, atol=2e-3, err_msg=f"layer {layer}")


@pytest.mark.integration
@pytest.mark.parametrize("model,max_length", [("", 24), ("random:tiny-bert", 20), ("random:tiny-roberta", 20),
                                              ("random:tiny-albert", 20)])
@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_packed_equals_padded(tmp_path, model, max_length, pooling):
    """Encoders (RoBERTa's positions start after the padding index), words of many subwords, and a
    sentence longer than ``max_length`` read through windows."""
    padded, packed = extract_both(tmp_path, model, SENTENCES * 3, max_length=max_length, pooling=pooling,
                                  pack_length=64, shard_rows=64)
    assert_same_vectors(padded, packed)
    assert packed.read_manifest()["stages"]["extract"]["forward"] == {"path": "packed", "pack_length": 64}
    assert padded.read_manifest()["stages"]["extract"]["forward"]["path"] == "padded"
    tok = load_tokenizer(model)
    assert max(len(tok.tokenize(w)) for w in SENTENCES[0].split()) >= 5
    assert sum(len(tok.tokenize(w)) for w in SENTENCES[-1].split()) > max_length  # windowed


@pytest.mark.integration
def test_packed_equals_padded_for_a_causal_decoder(tmp_path, tiny_decoder):  # noqa: F811
    """GPT-2 style: no special tokens, causal attention, and only 24 positions, so long sentences are
    windowed; packed rows must keep each sentence's attention causal and inside itself."""
    padded, packed = extract_both(tmp_path, tiny_decoder, SENTENCES * 3, pack_length=48, shard_rows=64)
    assert_same_vectors(padded, packed)
    assert packed.read_manifest()["stages"]["extract"]["forward"]["path"] == "packed"


@pytest.mark.integration
def test_shards_really_pack_several_sentences_per_row(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(SENTENCES * 20) + "\n")
    store = RunStore(tmp_path / "run")
    ingest_run(store, CorpusConfig(path=str(corpus), tokenizer="whitespace"))
    task = ShardTasks(store, 10_000).task(0)
    packed = preparer_for(ExtractConfig(pack_length=128)).batches(task)
    padded = preparer_for(ExtractConfig(packed=False)).batches(task)
    assert packed[0].segments is not None and padded[0].segments is None
    assert max(int(b.segments.max()) for b in packed) >= 3
    assert padding_fraction(packed) < 0.1 < padding_fraction(padded)


@pytest.mark.integration
def test_xlnet_runs_padded_and_says_why(tmp_path):
    store = RunStore(tmp_path / "run")
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(SENTENCES[:4]) + "\n")
    ingest_run(store, CorpusConfig(path=str(corpus)))
    summary = extract_run(store, ExtractConfig(model="random:tiny-xlnet", engine="local"))
    forward = store.read_manifest()["stages"]["extract"]["forward"]
    assert forward["path"] == "padded" and "XLNet" in forward["reason"] and summary["forward"] == forward
    assert store.read_manifest()["layers"] == [0, 1, 2]
    assert np.abs(store.layer_array(2)[:].astype(np.float32)).max() > 0.1


@pytest.mark.integration
def test_resume_with_the_other_path_is_refused(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(SENTENCES[:4]) + "\n")
    run = str(tmp_path / "run")
    args = ["extract", run, "--corpus-path", str(corpus), "--engine", "local", "--layers", "1",
            "--model", "random:tiny-bert"]
    assert cli([*args, "--no-packed"]) == 0
    capsys.readouterr()
    assert cli(args) == 2
    assert "extract.packed" in capsys.readouterr().err
    # a run recorded before `packed` existed was padded, and resumes as such
    store = RunStore(run)
    store.update_manifest(lambda m: m["config"]["extract"].pop("packed"))
    assert cli([*args, "--no-packed"]) == 0
