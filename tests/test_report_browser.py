"""The report of a real run, opened from disk in headless Chromium (Debian's package, driven by
Playwright; never with --allow-file-access-from-files).

The run is made by the pipeline in the test: the packaged MiniLM on ~200 demo sentences and a planted
sentence that carries a <script> element and an <img onerror> handler, which must show as text and run
nothing (no dialog, no change to the DOM)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cluster_service.annotate.labels import concepts_with_labels
from cluster_service.cli import main as cli
from cluster_service.demo import fetch_demo_corpus
from cluster_service.store import RunStore
from cluster_service.testing.browser import chromium_page, chromium_path

PLANTED = ("the page said <script>document.body.dataset.pwned='script';alert('pwned')</script> and "
           "<img src=x onerror=\"document.body.dataset.pwned='img';alert('img')\"> too")
#: identical sentences give identical vectors: the planted word lands among some concept's examples
COPIES = 12

needs_chromium = pytest.mark.skipif(chromium_path() is None, reason="no system Chromium (scripts/test.sh installs "
                                    "Debian's chromium when it runs as root)")


def artifact(tmp_path: Path, name: str) -> Path:
    """Where a screenshot goes: $CLUSTER_SERVICE_TEST_ARTIFACTS when set (CI keeps it), else tmp_path."""
    folder = Path(os.environ.get("CLUSTER_SERVICE_TEST_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("report-browser")
    lines = [line for line in fetch_demo_corpus().read_text().splitlines() if line.strip()][:200]
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(lines + [PLANTED] * COPIES) + "\n")
    run = root / "run"
    argv = ["run", str(run), "--corpus-path", str(corpus), "--corpus-tokenizer", "whitespace", "--layers", "0,6",
            "--cluster-k", "12,4"]
    return run, argv


@pytest.mark.acceptance
@needs_chromium
def test_report_of_a_real_run_in_headless_chromium(demo_run, tmp_path, capsys):
    run, argv = demo_run
    assert cli(argv) == 0
    index = run / "report" / "index.html"
    assert f"report: {index}" in capsys.readouterr().out  # `run` ends by writing the report
    store = RunStore(str(run))
    tables = {(layer, k): concepts_with_labels(store, layer, k).to_pylist() for layer in (0, 6) for k in (12, 4)}
    planted = [(layer, k, row["concept"]) for (layer, k), rows in tables.items() for row in rows
               if any(e["sentence"] == PLANTED for e in row["examples"])]
    assert planted, "the planted sentence is an example of no concept"
    # a word to search for that is neither in the concept's label nor among the list's top words:
    # found only through the word index the page loads on the first search
    first = tables[(0, 4)]
    concept = max(first, key=lambda r: len(r["top_types"]))
    word = next(t["word"] for t in reversed(concept["top_types"]) if t["word"].lower() not in concept["label"].lower())

    with chromium_page() as page:
        dialogs, errors, requests = [], [], []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(index.as_uri())
        page.wait_for_selector("table.concepts tbody tr")
        assert page.locator("table.concepts tbody tr").count() == 4  # layer 0, K = 4 comes first
        assert page.text_content("#count") == "4 of 4 concepts"
        page.fill("#search", word)
        page.wait_for_selector(f'tr[data-concept="{concept["concept"]}"]')
        q = word.lower()
        expected = sorted(r["concept"] for r in first if q in (r["label"] or "").lower()
                          or any(t["word"].lower().startswith(q) for t in r["top_types"]))
        page.wait_for_function(f"document.querySelectorAll('table.concepts tbody tr').length === {len(expected)}")
        shown = page.eval_on_selector_all("table.concepts tbody tr", "rows => rows.map(r => +r.dataset.concept)")
        assert sorted(shown) == expected
        page.fill("#search", "zzqxnotaword")
        page.wait_for_function("document.querySelectorAll('table.concepts tbody tr').length === 0")
        page.screenshot(path=str(artifact(tmp_path, "report_index.png")), full_page=False)

        # the planted sentence's concept page: highlighted contexts, the markup shown as text
        layer, k, cid = planted[0]
        page.goto(f"{index.as_uri()}#c/{layer}/{k}/{cid}")
        page.wait_for_selector(f'article[data-key="{layer}/{k}/{cid}"] #examples mark')
        examples = page.text_content("#examples")
        assert "<script>document.body.dataset.pwned='script'" in examples and "<img src=x onerror=" in examples
        assert page.locator("#examples li mark").count() == len(tables[(layer, k)][cid]["examples"])
        analysis = page.text_content("#analysis")  # `run` analyzed the largest K of every layer
        assert "align_pos" in analysis and "stability" in analysis and "absent" not in analysis
        page.screenshot(path=str(artifact(tmp_path, "report_concept.png")), full_page=False)
        # parent at the next smaller K, children at the next larger K, with their labels
        page.goto(f"{index.as_uri()}#c/6/12/0")
        page.wait_for_selector('article[data-key="6/12/0"] #parent a')
        parent = tables[(6, 12)][0]["parent"]
        assert page.text_content("#parent a") == f"concept {parent} (K = 4): {tables[(6, 4)][parent]['label']}"
        page.click("#parent a")
        page.wait_for_selector(f'article[data-key="6/4/{parent}"] #children a')
        assert page.locator("#children a").count() == len(tables[(6, 4)][parent]["children"]) >= 1
        assert "concept 0 (K = 12)" in page.text_content("#children")
        page.goto(f"{index.as_uri()}#map/6/12")
        page.wait_for_selector('section[data-key="6/12"] #map-svg')
        assert page.locator("#map-svg circle").count() == 12
        page.goto(f"{index.as_uri()}#flow")
        page.wait_for_selector("#flow")
        assert "How concepts split and merge from layer 0 to 6" in page.text_content("#flow")
        page.goto(f"{index.as_uri()}#run")
        page.wait_for_selector("#stages")
        assert "annotate:layer_6_k12" in page.text_content("#stages")

        # nothing ran: no dialog, no attribute set, no element made from the corpus, no page error
        assert dialogs == [] and errors == []
        assert page.evaluate("document.body.dataset.pwned") is None
        assert page.evaluate("[...document.scripts].every(s => s.src.startsWith('file:'))")
        assert page.locator("img").count() == 0
        assert requests and all(url.startswith("file://") for url in requests)  # nothing from any network
