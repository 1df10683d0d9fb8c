"""Benchmark of the analyze stage: one row per step for all concepts of one layer (K = 600) at N tokens × 384.

    python benchmarks/bench_analyze.py --tokens 100000            # the 100K rows
    python benchmarks/bench_analyze.py --tokens 1000000           # the 1M rows (the budget: 15 min, 8 GiB)

The run store is synthetic with planted structure (``data`` says so): 600 concepts of lognormal sizes,
each a Gaussian blob in 384 dims, stored as float16 in two layers (layer 1 moves 10% of the tokens to other
concepts, so ``layers`` sees splits and merges); the words are real, the demo corpus's WordNet
sentences repeated until N words, every word a stored token, so ``align`` tags N real words. Concept
tables and labels come from the project's own code (``concept_table``; the baseline labeller). Each step
runs in a fresh process (``--worker``) whose process tree is sampled for peak RSS. ``score`` runs against
the fake OpenAI-protocol server on loopback (a scripted scorer) for a seeded sample of concepts, and its
row gives calls and prompt LLM tokens per concept and the cost at gpt-4o-mini's price, extrapolated to
39,000 concepts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import merge_rows, print_table  # noqa: E402

K, D, PARENT_K = 600, 384, 200
STEPS = ("probe", "neurons", "align", "layers", "stability", "score")
KEY_ENV, KEY = "BENCH_ANALYZE_KEY", "sk-bench"
SCORED = 60  # concepts scored per row (the cost per concept is what extrapolates)


def corpus_words(n: int) -> tuple[list[str], list[int], list[int], list[str]]:
    """N real words: the demo corpus's sentences, repeated; (words, sentence ids, positions, sentence texts)."""
    path = Path(os.environ.get("CLUSTER_SERVICE_DATA", "data/demo")) / "wordnet_examples.txt"
    lines = [ln.split() for ln in path.read_text().splitlines() if ln.split()]
    words, sids, positions, texts = [], [], [], []
    i = 0
    while len(words) < n:
        sentence = lines[i % len(lines)][: n - len(words)]
        texts.append(" ".join(sentence))
        for p, w in enumerate(sentence):
            words.append(w)
            sids.append(len(texts) - 1)
            positions.append(p)
        i += 1
    return words, sids, positions, texts


def build(root: Path, n: int, seed: int = 0) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zarr

    from cluster_service.annotate.config import AnnotateConfig
    from cluster_service.annotate.stage import annotate_run
    from cluster_service.cluster.checkpoint import LayerDir
    from cluster_service.cluster.concepts import concept_table
    from cluster_service.cluster.config import ClusterConfig
    from cluster_service.store import RunStore

    rng = np.random.default_rng(seed)
    sizes = rng.lognormal(0, 1.0, K)
    a0 = rng.choice(K, size=n, p=sizes / sizes.sum()).astype(np.int32)
    a0[:K] = np.arange(K)  # no empty concept
    moved = rng.random(n) < 0.1
    a1 = a0.copy()
    a1[moved] = rng.integers(0, K, moved.sum())
    centers = rng.normal(scale=1.0, size=(K, D)).astype(np.float32)
    group = zarr.open_group(str(root / "activations.zarr"), mode="a")
    shard = 16384
    for layer, a in ((0, a0), (1, a1)):
        arr = group.create_array(f"layer_{layer}", shape=(n, D), chunks=(1024, D), shards=(shard, D),
                                 dtype="float16", overwrite=True)
        for lo in range(0, n, shard):
            hi = min(n, lo + shard)
            arr[lo:hi] = (centers[a[lo:hi]] + rng.normal(scale=0.7, size=(hi - lo, D))).astype(np.float16)
    words, sids, positions, texts = corpus_words(n)
    tokens = pa.table({"row": np.arange(n), "sentence_id": np.array(sids), "position": np.array(positions, np.int32),
                       "word": words, "occurrence": np.ones(n, np.int32)})
    sentences = pa.table({"sentence_id": np.arange(len(texts)), "text": texts})
    pq.write_table(tokens, root / "tokens.parquet")
    pq.write_table(sentences, root / "sentences.parquet")
    store = RunStore(root)
    store.write_manifest({"stages": {}})
    store.record_config("cluster", {**ClusterConfig(k=[PARENT_K, K]).__dict__})
    parent = pa.array((np.arange(K) % PARENT_K).astype(np.int32))
    children = pa.ListArray.from_arrays(pa.array(np.zeros(K + 1, np.int32)), pa.array([], pa.int32()))
    for layer, a in ((0, a0), (1, a1)):
        sums = np.zeros((K, D))
        np.add.at(sums, a, centers[a])  # the blobs' centres stand in for the centroids
        cent = sums / np.bincount(a, minlength=K)[:, None]
        table = concept_table(a, cent, tokens, sentences, parent=parent, children=children,
                              settings=f"bench-{layer}-{n}")
        store.write_concepts(layer, K, table)
        LayerDir(store, layer).save(f"assignments_k{K}.npy", a, {"bench": n})
    annotate_run(store, AnnotateConfig(layers=[0], k=[K], progress=False))


def worker(root: str, step: str, url: str | None) -> None:
    """One step in this process; prints its summary as JSON."""
    from cluster_service.analysis.config import AnalyzeConfig
    from cluster_service.analysis.stage import analyze_table
    from cluster_service.store import RunStore

    extra = {}
    if step == "score":
        extra = dict(scorer_backend="openai", scorer_base_url=url, scorer_model="gpt-4o-mini",
                     scorer_api_key_env=KEY_ENV, scorer_rpm=1e6, scorer_tpm=1e9, scorer_concurrency=32,
                     score_max_concepts=SCORED)
    cfg = AnalyzeConfig(steps=[step], progress=False, **extra)
    print(json.dumps(analyze_table(RunStore(root), 0, K, cfg)["steps"][step], default=float))


def measure(root: Path, step: str, url: str | None) -> tuple[dict, float, float]:
    import psutil

    env = {**os.environ, KEY_ENV: KEY}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--worker", step, "--run", str(root), "--url", url or ""],
                            stdout=subprocess.PIPE, env=env, text=True)
    peak = 0
    top = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            rss = top.memory_info().rss + sum(c.memory_info().rss for c in top.children(recursive=True))
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.1)
    out = proc.stdout.read() if proc.stdout else ""
    if proc.returncode:
        raise SystemExit(f"step {step} failed (exit {proc.returncode})")
    return json.loads(out.strip().splitlines()[-1]), time.perf_counter() - start, peak / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=100_000)
    parser.add_argument("--steps", default=",".join(STEPS))
    parser.add_argument("--keep", default=None, help="build the store here and keep it (default: a temporary folder)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--run", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--url", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.run, args.worker, args.url or None)
        return
    from cluster_service.annotate.usage import model_price
    from cluster_service.testing.openai_server import ServerProcess

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_analyze_"))
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if not (root / "run.json").exists():
        build(root, args.tokens)
    print(f"built a {args.tokens:,}-token store in {time.perf_counter() - t0:.1f} s: {root}")
    rows = []
    data = "synthetic: planted blobs, words of the demo corpus repeated"
    price = model_price("gpt-4o-mini", None, None, None)
    with ServerProcess(KEY, detector="label_words", latency_s=[0.02, 0.08]) as srv:
        for step in args.steps.split(","):
            summary, seconds, peak = measure(root, step, srv.url if step == "score" else None)
            row = {"machine": "2-core CPU box", "step": step, "n_tokens": args.tokens, "d": D, "concepts": K,
                   "seconds": round(seconds, 2), "step_seconds": summary.get("seconds"),
                   "peak_rss_gib": round(peak, 3), "layer_reads": summary.get("layer_reads"), "data": data}
            if step == "score":
                usage = summary["usage"]
                scored = summary["baseline"]["concepts"]
                per_concept = usage["prompt_tokens"] / max(scored, 1)
                completion = usage["completion_tokens"] / max(scored, 1)
                usd = (per_concept * price[0] + completion * price[1]) / 1e6
                row.update(concepts=scored, calls=usage["calls"], prompt_tokens=usage["prompt_tokens"],
                           calls_per_concept=usage["calls_per_concept"],
                           prompt_tokens_per_concept=round(per_concept, 1),
                           usd_per_concept=round(usd, 6), usd_39000_concepts=round(usd * 39_000, 2),
                           price=f"gpt-4o-mini input ${price[0]:.2f} / output ${price[1]:.2f} per M LLM tokens",
                           balanced_accuracy=summary["baseline"]["balanced_accuracy"],
                           control_balanced_accuracy=summary["baseline"]["control_balanced_accuracy"])
            rows.append(row)
            print_table([row], list(row))
    print()
    print_table(rows, ["step", "n_tokens", "concepts", "seconds", "peak_rss_gib", "layer_reads"])
    total = sum(r["seconds"] for r in rows if r["step"] != "score")
    print(f"all steps but score: {total:.1f} s")
    path = merge_rows("analyze", rows, ("step", "n_tokens", "d", "concepts", "data"))
    print(f"rows: {path}")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
