"""Export (TCN, Parquet, JSONL) and import, on small real run stores: real ingest tables, concept tables
and assignments from the cluster stage's code, baseline labels from the real annotate stage.

The TCN files are read back by a reader written here from the format's description (not the exporter's
code), and the round trip export → import → export must give identical bytes.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.json as pj
import pyarrow.parquet as pq
import pytest

from cluster_service.annotate.labels import concepts_with_labels
from cluster_service.cli import main as cli
from cluster_service.cluster.checkpoint import LayerDir
from cluster_service.store import RunStore
from cluster_service.testing.runs import clustered_run

SENTENCES = [
    "The cat sat on the mat .",
    "A dog ran to the park on Monday .",
    "Paris and London are cities in Europe .",
    "She was reading a book about the sea .",
    "On Friday the dog and the cat slept .",
    "He said that Berlin was cold in winter .",
    "They were singing and dancing all night .",
    "The park near the sea was quiet .",
] * 2


def write_corpus(path: Path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> RunStore:
    root = tmp_path_factory.mktemp("export")
    return clustered_run(str(root / "run"), write_corpus(root / "corpus.txt", SENTENCES), layers=(0, 2), ks=(3, 6))


def read_tcn(folder: Path) -> dict:
    """A TCN folder as its viewer reads it: sentences.json, layer{L}/clusters-{K}.txt, annotations.json."""
    sentences = json.loads((folder / "sentences.json").read_text())
    assert isinstance(sentences, list) and all(isinstance(s, str) for s in sentences)
    layers = {}
    for layer_dir in sorted(folder.glob("layer*")):
        layer = int(layer_dir.name.removeprefix("layer"))
        files = {}
        for f in layer_dir.glob("clusters-*.txt"):
            lines = []
            for line in f.read_text().splitlines():
                parts = line.split("|||")
                assert len(parts) == 5, line
                word, occurrence, sent, tok, cluster = parts[0], *map(int, parts[1:])
                assert sentences[sent].split(" ")[tok] == word
                lines.append((word, occurrence, sent, tok, cluster))
            files[int(f.stem.removeprefix("clusters-"))] = lines
        layers[layer] = {"files": files, "annotations": json.loads((layer_dir / "annotations.json").read_text())}
    return {"sentences": sentences, "layers": layers}


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.integration
def test_tcn_export_reads_back_as_the_viewer_reads_it(run, tmp_path, capsys):
    out = tmp_path / "tcn"
    # only layer 2 asked for: layer 0 comes along, since the viewer opens at layer 0
    assert cli(["export", run.where(), "--format", "tcn", "--out", str(out), "--layer", "2"]) == 0
    assert "clusters-600.txt" in capsys.readouterr().out  # the copy is announced
    tcn = read_tcn(out)
    tokens = run.read_tokens().to_pylist()
    assert sorted(tcn["layers"]) == [0, 2]
    for layer, found in tcn["layers"].items():
        assert set(found["files"]) == {6, 600}  # the largest K, and the viewer's copy under its one name
        assert (out / f"layer{layer}" / "clusters-600.txt").read_bytes() == \
            (out / f"layer{layer}" / "clusters-6.txt").read_bytes()
        lines = found["files"][6]
        assert len(lines) == len(tokens)
        # occurrence is the running count of the word type, 1-based, in token order
        seen: Counter[str] = Counter()
        for word, occurrence, *_ in lines:
            seen[word] += 1
            assert occurrence == seen[word]
        assignments = LayerDir(run, layer).load("assignments_k6.npy")
        assert [line[4] for line in lines] == assignments.tolist()
        labels = {f"c{r['concept']}": r["label"] for r in concepts_with_labels(run, layer, 6).to_pylist()}
        assert found["annotations"] == labels and sorted(labels) == [f"c{i}" for i in range(6)]
        assert all(label for label in labels.values())


@pytest.mark.integration
def test_export_import_export_gives_identical_files(run, tmp_path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    for k in ("3", "6"):
        assert cli(["export", run.where(), "--format", "tcn", "--out", str(first / k), "--k", k]) == 0
        assert cli(["import", str(first / k), str(tmp_path / f"imported{k}")]) == 0
        assert cli(["export", str(tmp_path / f"imported{k}"), "--format", "tcn", "--out", str(second / k)]) == 0
        assert files_of(first / k) == files_of(second / k) and len(files_of(first / k)) == 1 + 2 * 3 + 1
    imported = RunStore(str(tmp_path / "imported6"))
    manifest = imported.read_manifest()
    assert manifest["stages"]["import"]["wrote"] == sorted(
        ["ingest", "cluster:layer_0", "cluster:layer_2", "annotate:layer_0_k6", "annotate:layer_2_k6"])
    assert manifest["stages"]["cluster:layer_0"]["by"] == "import"
    # the imported labels are the original's; a rerun of the same import does nothing
    assert concepts_with_labels(imported, 2, 6).column("label").to_pylist() == \
        concepts_with_labels(run, 2, 6).column("label").to_pylist()
    capsys.readouterr()
    assert cli(["import", str(first / "6"), str(tmp_path / "imported6")]) == 0
    assert "nothing to do" in capsys.readouterr().out
    # into a run store that holds another run: refused in one line
    assert cli(["import", str(first / "3"), str(tmp_path / "imported6")]) == 2
    assert "already holds a run" in capsys.readouterr().err


def write_conceptx(folder: Path, lines: list[str], annotations: dict | None) -> None:
    (folder / "layer0").mkdir(parents=True)
    (folder / "sentences.json").write_text(json.dumps(["the cat sat", "a dog ran far", "the dog sat"]))
    (folder / "layer0" / "clusters-600.txt").write_text("".join(line + "\n" for line in lines))
    if annotations is not None:
        (folder / "layer0" / "annotations.json").write_text(json.dumps(annotations))


@pytest.mark.integration
def test_import_of_a_hand_written_conceptx_folder(tmp_path, capsys):
    src = tmp_path / "conceptx"
    write_conceptx(src, ["cat|||1|||0|||1|||5", "dog|||1|||1|||1|||5", "dog|||2|||2|||1|||5", "the|||1|||0|||0|||0",
                         "sat|||1|||0|||2|||599", "the|||2|||2|||0|||0"], {"c0": "determiners", "c5": "animals"})
    assert cli(["import", str(src), str(tmp_path / "run")]) == 0
    store = RunStore(str(tmp_path / "run"))
    table = concepts_with_labels(store, 0, 600)
    assert table.num_rows == 600
    rows = {r["concept"]: r for r in table.to_pylist()}
    assert rows[5]["size"] == 3 and sorted(rows[5]["words"]) == ["cat", "dog", "dog"] and rows[5]["label"] == "animals"
    assert rows[0]["label"] == "determiners" and rows[599]["label"] is None and rows[599]["label_status"] == "failed"
    assert rows[5]["centroid"] is None and rows[5]["parent"] is None  # ConceptX files hold no vectors, no tree
    tokens = store.read_tokens().to_pylist()  # rows by (sentence, token)
    assert [(t["sentence_id"], t["position"], t["word"]) for t in tokens] == [
        (0, 0, "the"), (0, 1, "cat"), (0, 2, "sat"), (1, 1, "dog"), (2, 0, "the"), (2, 1, "dog")]
    # the report of an imported clustering says the map and the hierarchy are absent
    assert cli(["report", str(tmp_path / "run")]) == 0
    index = (tmp_path / "run" / "report" / "data" / "index.js").read_text()
    detail = (tmp_path / "run" / "report" / "data" / "layer_0_k600.d0.js").read_text()
    assert '"has_map":false' in index and "absent: an imported ConceptX clustering has no tree" in detail


@pytest.mark.integration
@pytest.mark.parametrize(("line", "message"), [
    ("cat|||1|||0|||1", "clusters-600.txt:1: expected 5 fields"),
    ("cat|||1|||0|||2|||5", "clusters-600.txt:1: token_idx 2 of sentence 0 is not the word 'cat'"),
    ("cat|||1|||9|||1|||5", "sentence_idx 9 out of range"),
    ("cat|||1|||0|||1|||600", "cluster_id 600 out of range for K=600"),
    ("cat|||one|||0|||1|||5", "must be integers"),
])
def test_import_refuses_bad_lines_in_one_line(tmp_path, capsys, line, message):
    write_conceptx(tmp_path / "src", [line], None)
    assert cli(["import", str(tmp_path / "src"), str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1


@pytest.mark.integration
def test_tcn_refuses_a_word_with_the_separator(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "c.txt", ["a b|||c d", "a d"])
    store = clustered_run(str(tmp_path / "run"), corpus, layers=(0,), ks=(2,), label=False)
    assert cli(["export", store.where(), "--format", "tcn"]) == 2
    err = capsys.readouterr().err
    assert "'b|||c'" in err and "'|||'" in err and not (tmp_path / "run" / "export" / "tcn" / "layer0").exists()
    assert cli(["export", store.where(), "--format", "parquet"]) == 0  # the tables hold any word


@pytest.mark.integration
def test_parquet_and_jsonl_load_with_pyarrow_and_carry_the_analysis(run, tmp_path):
    # an analysis table of one concept table (the analyze stage's layout): its columns join on concept
    run.write_parquet("analysis/layer_0_k3/score.parquet", pq.read_table(_score_table(tmp_path)))
    for fmt in ("parquet", "jsonl"):
        assert cli(["export", run.where(), "--format", fmt]) == 0
        out = Path(run.where("export")) / fmt
        read = pq.read_table if fmt == "parquet" else pj.read_json
        concepts, tokens = read(out / f"concepts.{fmt}"), read(out / f"tokens.{fmt}")
        sentences = read(out / f"sentences.{fmt}")
        assert concepts.num_rows == 2 * (3 + 6) and tokens.num_rows == run.read_manifest()["tokens"]
        assert sentences.num_rows == run.read_sentences().num_rows
        for name in ("layer", "k", "concept", "label", "labels", "size", "words", "top_types", "examples", "parent",
                     "children", "score"):
            assert name in concepts.column_names, name
        rows = concepts.to_pylist()
        scored = {(r["layer"], r["k"], r["concept"]): r["score"] for r in rows}
        assert scored[(0, 3, 1)] == pytest.approx(0.5) and scored[(2, 6, 1)] is None
        assert all(r["labels"][0]["annotator"] == "baseline" and r["labels"][0]["label"] == r["label"] for r in rows)
        assert sum(r["size"] for r in rows if (r["layer"], r["k"]) == (2, 6)) == tokens.num_rows
        columns = {"layer0_k3", "layer0_k6", "layer2_k3", "layer2_k6"}
        assert columns <= set(tokens.column_names)
        assert np.array_equal(tokens.column("layer2_k6").to_numpy(), LayerDir(run, 2).load("assignments_k6.npy"))
        card = (out / "README.md").read_text()
        assert card.startswith("---\nconfigs:\n") and f"data_files: concepts.{fmt}" in card
        assert "How to cite" in card and "Licence of the corpus" in card and "State its licence" in card
    run.remove("analysis")


def _score_table(tmp_path: Path) -> Path:
    import pyarrow as pa

    path = tmp_path / "score.parquet"
    pq.write_table(pa.table({"concept": pa.array([2, 1, 0], pa.int32()), "score": [0.25, 0.5, 0.75]}), path)
    return path
