"""Clustering at scale: wall time and peak RSS per (N, method), and quality vs exact Ward.

Timing rows (synthetic d=768 Gaussian-mixture vectors in a real run store, K=600): each row runs
`cluster-service cluster` in a fresh process; the parent samples the RSS of the whole process tree
(psutil, every 0.2 s). Exact Ward rows run where they fit; its memory at larger N is extrapolated as
N² from the largest measured peak and marked computed.

GPU rows (`--device cuda`): the same stage with k-means, assignment and kNN as torch matmuls on the
GPU; the synthetic vectors are generated with torch on the GPU and written like `extract` writes them
(float16, uncompressed shards), the stores deleted after their rows with `--cleanup`. `--device
torch-cpu` runs that code on the CPU (a dry run of the GPU command without a GPU).

Quality rows (real activations, K=50/200/600): `--evaluate` on a seeded sample of a run store made
by `cluster-service extract` (all-MiniLM-L6-v2, layer 6, last-subword pooling, WordNet demo sentences).

    python benchmarks/bench_cluster_scale.py timing --ns 10000,100000,1000000
    python benchmarks/bench_cluster_scale.py timing --device cuda --ns 1000000,5000000 --methods approx --cleanup
    python benchmarks/bench_cluster_scale.py quality --run RUN --layer 6 --n 20000
    python benchmarks/bench_cluster_scale.py scale --run RUN --layers 3,4,5,6 --device cuda
    python benchmarks/bench_cluster_scale.py knn --run RUN --layers 6 --probes 8,16,32
    python benchmarks/bench_cluster_scale.py exact --device cuda --n 1000000 --d 768
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import merge_rows  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "cluster_scale.json"
MACHINE = "2-core CPU box"
IDENTITY = ("machine", "n", "d", "k", "m", "method", "data", "parallel", "device", "probes", "partitions",
            "refine")
#: How the default rule built the leaves of the tree (see cluster.params.ApproxParams.leaves).
LEAVES = {True: "tokens (kNN-graph Ward, then dense Ward)", False: "k-means micro-clusters (then dense Ward)"}


def save_rows(rows: list[dict], results: Path = RESULTS) -> None:
    merge_rows("cluster_scale", rows, IDENTITY[1:], results)


class Measured(NamedTuple):
    seconds: float
    peak_rss_gib: float  # the process tree of the command
    stdout: str
    stderr: str
    gpu_peak_gib: float  # in use on GPU 0 by every process (this one's CUDA context included); 0 if not asked


def run_measured(cmd: list[str], env: dict | None = None, gpu: bool = False) -> Measured:
    """Run ``cmd`` in a fresh process, sampling the memory of its process tree (and GPU 0's with ``gpu``);
    its log lines (not its progress bars) are echoed to stderr as they come, so a run cut short by a
    time limit still shows how far it got."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    err_lines: list[str] = []

    def echo() -> None:
        for line in proc.stderr:
            err_lines.append(line)
            if "\r" not in line:
                sys.stderr.write(line)
                sys.stderr.flush()

    echoer = threading.Thread(target=echo, daemon=True)
    echoer.start()
    peak = 0
    gpu_peak = 0.0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak, gpu_peak
        root = psutil.Process(proc.pid)
        while not stop.is_set():
            if gpu:
                import torch

                free, total = torch.cuda.mem_get_info(0)
                gpu_peak = max(gpu_peak, (total - free) / 2**30)
            try:
                procs = [root, *root.children(recursive=True)]
                total = 0
                for p in procs:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
                peak = max(peak, total)
            except psutil.Error:
                pass
            stop.wait(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out = proc.stdout.read()
    proc.wait()
    echoer.join()
    err = "".join(err_lines)
    stop.set()
    th.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed ({proc.returncode}):\n{err[-3000:]}")
    return Measured(time.perf_counter() - t0, peak / 2**30, out, err, gpu_peak)


def step_seconds(log: str) -> dict[str, float]:
    """Seconds of the stage's timed steps, from its key=value log lines (see cluster.stage)."""
    steps = re.findall(r" (k-means|assignment|ward) done .*?seconds=([0-9.e+-]+)", log)
    return {name: round(float(sec), 1) for name, sec in steps}


def rerun_identical(data: Path, cmd: list[str], k: int) -> bool:
    """Run the stage again from scratch on the same store: are all its arrays bit-identical?"""
    import shutil

    layer_dir = data / "clusters" / "layer_6"
    names = ["kmeans_centroids.npy", "token_micro.npy", "micro_sums.npy", "linkage.npy", f"assignments_k{k}.npy"]
    first = {name: np.load(layer_dir / name) for name in names if (layer_dir / name).is_file()}
    shutil.rmtree(data / "clusters")
    shutil.rmtree(data / "concepts", ignore_errors=True)
    run_measured(cmd)
    same = all(np.array_equal(arr, np.load(layer_dir / name)) for name, arr in first.items())
    print(f"rerun identical: {same} ({', '.join(first)})", file=sys.stderr, flush=True)
    return same


def make_synthetic(root: Path, n: int, d: int, seed: int = 0, centres: int = 2000, shard: int = 16384) -> None:
    """A run store of n Gaussian-mixture vectors (float16, sharded like extract writes them)."""
    import zarr

    if (root / "run.json").is_file():
        return
    rng = np.random.default_rng(seed)
    mus = rng.normal(size=(centres, d)).astype(np.float32) * 2.0
    group = zarr.open_group(str(root / "activations.zarr"), mode="w")
    arr = group.create_array("layer_6", shape=(n, d), chunks=(1024, d), shards=(shard, d), dtype="float16")
    for lo in range(0, n, shard):
        hi = min(lo + shard, n)
        which = rng.integers(0, centres, hi - lo)
        arr[lo:hi] = (mus[which] + rng.normal(size=(hi - lo, d)).astype(np.float32)).astype(np.float16)
    _write_tables(root, n, rng)


def make_synthetic_torch(root: Path, n: int, d: int, device: str, seed: int = 0, centres: int = 2000,
                         shard: int = 16384, writers: int = 8) -> None:
    """The same mixture drawn with torch on ``device`` (NumPy's generator would take minutes at 5M×768),
    written as extract writes layers (float16, uncompressed shards) by parallel writer threads."""
    from concurrent.futures import ThreadPoolExecutor

    import torch
    import zarr

    if (root / "run.json").is_file():
        return
    gen = torch.Generator(device=device).manual_seed(seed)
    mus = torch.randn((centres, d), generator=gen, device=device) * 2.0
    group = zarr.open_group(str(root / "activations.zarr"), mode="w")
    arr = group.create_array("layer_6", shape=(n, d), chunks=(1024, d), shards=(shard, d), dtype="float16",
                             compressors=None, fill_value=0)
    with ThreadPoolExecutor(max_workers=writers) as pool:
        pending = []
        for lo in range(0, n, shard):
            hi = min(lo + shard, n)
            which = torch.randint(0, centres, (hi - lo,), generator=gen, device=device)
            x = (mus[which] + torch.randn((hi - lo, d), generator=gen, device=device)).half().cpu().numpy()
            pending.append(pool.submit(arr.__setitem__, slice(lo, hi), x))
            if len(pending) >= 2 * writers:
                pending.pop(0).result()
        for f in pending:
            f.result()
    del mus
    if device == "cuda":
        torch.cuda.empty_cache()
    _write_tables(root, n, np.random.default_rng(seed))


def _write_tables(root: Path, n: int, rng: np.random.Generator) -> None:
    """tokens.parquet / sentences.parquet / run.json for a synthetic layer of n rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    words = np.array([f"w{i}" for i in range(5000)])
    per = 10
    pq.write_table(pa.table({"row": np.arange(n), "sentence_id": np.arange(n) // per,
                             "position": (np.arange(n) % per).astype(np.int32),
                             "word": words[rng.integers(0, len(words), n)], "occurrence": np.ones(n, np.int64)}),
                   root / "tokens.parquet")
    sids = np.arange((n + per - 1) // per)
    pq.write_table(pa.table({"sentence_id": sids, "text": ["synthetic sentence"] * len(sids)}),
                   root / "sentences.parquet")
    (root / "run.json").write_text(json.dumps({"stages": {}}))


def timing(args: argparse.Namespace) -> None:
    import shutil

    from cluster_service.cluster.params import CPU_GRAPH_MAX, GPU_GRAPH_MAX, ApproxParams

    machine = MACHINE
    if args.device == "cuda":
        import torch

        machine = f"1x {torch.cuda.get_device_name(0)}"
    rows = []
    exact_peaks = []
    for n in args.ns:
        t0 = time.perf_counter()
        if args.device == "cpu":
            data = Path(args.workdir) / f"synth_{n}_{args.d}"
            make_synthetic(data, n, args.d)
        else:
            gen_device = "cuda" if args.device == "cuda" else "cpu"
            data = Path(args.workdir) / f"synth_{n}_{args.d}_torch_{gen_device}"
            make_synthetic_torch(data, n, args.d, gen_device)
        print(f"data n={n}: {time.perf_counter() - t0:.1f} s ({data})", file=sys.stderr, flush=True)
        for method in args.methods:
            if method == "exact" and n > args.exact_max:
                continue
            shutil.rmtree(data / "clusters", ignore_errors=True)
            shutil.rmtree(data / "concepts", ignore_errors=True)
            cmd = [sys.executable, "-m", "cluster_service.cli", "--log-level", "INFO", "cluster", str(data),
                   "--layer", "6", "--k", str(args.k), "--method", method, "--exact-max", str(args.exact_max)]
            if args.address:
                cmd += ["--address", args.address]
            if args.micro:
                cmd += ["--micro", str(args.micro)]
            cmd += ["--device", args.device]
            run = run_measured(cmd, gpu=args.device == "cuda")
            secs, peak = run.seconds, run.peak_rss_gib
            summary = json.loads(run.stdout)["6"]
            row = {"machine": machine, "date": time.strftime("%Y-%m-%d"), "n": n, "d": args.d, "k": args.k,
                   "method": "exact_ward" if method == "exact" else "approx_ward",
                   "m": summary["micro"] if method != "exact" else None, "seconds": round(secs, 1),
                   "peak_rss_gib": round(peak, 3), "data": "synthetic", "parallel": args.address or "one process",
                   "step_seconds": step_seconds(run.stderr)}
            if method == "approx":
                gpu = args.device == "cuda"
                row["m_rule"] = ApproxParams().leaves(n, args.k, GPU_GRAPH_MAX if gpu else CPU_GRAPH_MAX,
                                                      131_072 if gpu else 8192)
                if args.micro:
                    row["m_forced"] = True  # --micro overrode the rule
                row["leaves"] = LEAVES[summary["micro"] == n]
            if args.check_determinism and n == args.ns[0] and method == "approx":
                row["rerun_identical"] = rerun_identical(data, cmd, args.k)
            if args.device == "cuda":
                row["gpu_mem_peak_gib"] = round(run.gpu_peak_gib, 2)
            if args.device != "cpu":
                row["device"] = args.device
                row["note"] = (f"k-means, assignment and kNN as torch fp32 matmuls on {args.device} "
                               f"(backend {summary['backend']}), assignment in one process; synthetic data "
                               "drawn with torch, float16 uncompressed Zarr shards as extract writes them")
            print(json.dumps(row), flush=True)
            rows.append(row)
            if method == "exact":
                exact_peaks.append((n, peak, secs))
            save_rows(rows, args.results)
        if args.cleanup:
            shutil.rmtree(data, ignore_errors=True)
    if exact_peaks:
        n0, p0, s0 = max(exact_peaks)
        for n in args.ns:
            if n > n0:
                rows.append({"machine": machine, "date": time.strftime("%Y-%m-%d"), "n": n, "d": args.d,
                             "k": args.k, "method": "exact_ward", "m": None, "seconds": round(s0 * (n / n0) ** 2, 0),
                             "peak_rss_gib": round(p0 * (n / n0) ** 2, 1), "data": "synthetic", "computed": True,
                             "parallel": "one process",
                             "note": f"N² extrapolation from the measured N={n0} row"})
        save_rows(rows, args.results)


def quality(args: argparse.Namespace) -> None:
    report = Path(args.run) / "clusters" / f"layer_{args.layer}" / "quality.json"
    cached = report.is_file()
    cmd = [sys.executable, "-m", "cluster_service.cli", "--log-level", "WARNING", "cluster", args.run,
           "--layer", str(args.layer), "--k", "50,200,600", "--evaluate", str(args.n), "--method", "approx"]
    secs, peak = run_measured(cmd)[:2]
    rows = []
    for r in json.loads(report.read_text()):
        base = {"machine": MACHINE, "date": time.strftime("%Y-%m-%d"), "n": r["n"], "d": args.d, "k": r["k"],
                "data": f"real:{args.model}", "ari_exact_subsample": round(r["ari_exact_subsample"], 4),
                "peak_rss_gib": None, "source": args.source}
        variants = (
            ("approx_ward", "", r["m"], LEAVES[r["m"] == r["n"]] + ": the default rule at this N"),
            ("approx_ward", "kmeans_micro_", r["kmeans_micro_m"],
             LEAVES[False] + " at N/4: the rule's leaves above 100K tokens (the issue's recipe)"),
            ("kmeans", "kmeans_", None, "plain FAISS k-means at K (baseline)"),
        )
        for method, prefix, m, leaves in variants:
            row = {**base, "method": method, "m": m, "leaves": leaves,
                   "ari_vs_exact": round(r[f"{prefix}ari_vs_exact"], 4),
                   "nmi_vs_exact": round(r[f"{prefix}nmi_vs_exact"], 4),
                   "sse_ratio_vs_exact": round(r[f"{prefix}sse_ratio_vs_exact"], 4),
                   "ari_ratio_to_stability": round(r[f"{prefix}ari_vs_exact"] / r["ari_exact_subsample"], 3),
                   "seconds": round(r[f"{prefix}seconds"], 1),
                   "note": "seconds: this method alone on the sample (all K), inside the --evaluate process"}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if not cached:
        rows.append({"machine": MACHINE, "date": time.strftime("%Y-%m-%d"), "n": r["n"], "d": args.d, "k": 600,
                     "method": "evaluate_all", "m": None, "seconds": round(secs, 1), "peak_rss_gib": round(peak, 3),
                     "data": f"real:{args.model}", "exact_seconds": round(r["exact_seconds"], 1),
                     "note": "the whole `cluster --evaluate` run: exact Ward twice (sample + 90% subsample), "
                             "every method, K=50,200,600, plus the layer's own clustering"})
    save_rows(rows)


def load_layers(run: str, layers: list[int], limit: int = 0) -> np.ndarray:
    """The stored vectors of ``layers`` of a run, stacked (float32): real tokens beyond one layer's N;
    the first ``limit`` of them if set."""
    import zarr

    group = zarr.open_group(str(Path(run) / "activations.zarr"), mode="r")
    arrays = [group[f"layer_{layer}"] for layer in layers]
    n = sum(a.shape[0] for a in arrays)
    n = min(n, limit) if limit else n
    x = np.empty((n, arrays[0].shape[1]), dtype=np.float32)  # filled in place: no stacked temporaries
    at = 0
    for a in arrays:
        take = min(a.shape[0], n - at)
        for lo in range(0, take, 1 << 16):
            hi = min(take, lo + (1 << 16))
            x[at + lo:at + hi] = a[lo:hi]
        at += take
    return x


def data_name(args: argparse.Namespace, n: int) -> str:
    layers = ",".join(map(str, args.layers))
    which = f"layers {layers} stacked" if len(args.layers) > 1 else f"layer {layers}"
    return f"real:{args.model} {which}, {n} tokens ({args.corpus})"


def scale(args: argparse.Namespace) -> None:
    """Quality at scale: k-means-leaf trees at each M against the every-token-a-leaf tree, same tokens."""
    import torch
    from sklearn.metrics import adjusted_rand_score

    from cluster_service.cluster.approx import ward_tree
    from cluster_service.cluster.backend import resolve_backend
    from cluster_service.cluster.checkpoint import NoCheckpoint
    from cluster_service.cluster.params import ApproxParams
    from cluster_service.cluster.quality import within_sse
    from cluster_service.cluster.source import ArraySource
    from cluster_service.logs import setup_logging

    setup_logging()  # each graph level's kNN and rounds seconds, as they come
    x = load_layers(args.run, args.layers, args.limit)
    n = len(x)
    backend = resolve_backend(args.device)
    machine = f"1x {torch.cuda.get_device_name(0)}" if args.device == "cuda" else args.machine
    print(f"{n} tokens × {x.shape[1]} from layers {args.layers}; backend {backend.name}", file=sys.stderr, flush=True)
    trees = {}
    for m in [n, *args.ms]:
        t0 = time.perf_counter()
        tree = ward_tree(ArraySource(x), args.ks, ApproxParams(micro=m), backend, NoCheckpoint(), where=f"m={m}")
        trees[m] = (tree, time.perf_counter() - t0)
        if m == n:  # the process's peak so far: the tokens plus the every-token tree
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"m={m}: {trees[m][1]:.1f} s", file=sys.stderr, flush=True)
    ref, _ = trees[n]
    sse_ref = {k: within_sse(x, ref.assignments(k)) for k in args.ks}
    rows = []
    for m, (tree, secs) in trees.items():
        for k in args.ks:
            a = tree.assignments(k)
            row = {"machine": machine, "date": time.strftime("%Y-%m-%d"), "n": n, "d": int(x.shape[1]), "k": k,
                   "m": m, "method": "approx_ward", "data": data_name(args, n), "device": backend.name,
                   "leaves": LEAVES[m == n], "seconds": round(secs, 1),
                   **({"peak_rss_gib": round(peak, 2)} if m == n else {}),
                   "ari_vs_every_token": round(float(adjusted_rand_score(ref.assignments(k), a)), 4),
                   "sse_ratio_vs_every_token": round(within_sse(x, a) / sse_ref[k], 4),
                   "note": "seconds: this tree alone (all K) in one process; every-token tree = the m = n row"}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"{'m':>8} " + " ".join(f"ARI@{k:<5} SSE@{k:<5}" for k in args.ks), file=sys.stderr)
    for m in trees:
        cells = [r for r in rows if r["m"] == m]
        print(f"{m:>8} " + " ".join(f"{r['ari_vs_every_token']:<9.4f} {r['sse_ratio_vs_every_token']:<9.4f}"
                                    for r in cells), file=sys.stderr)
    save_rows(rows, args.results)


def knn(args: argparse.Namespace) -> None:
    """Recall@k and time of the kNN searches on real vectors, against exact search of sampled queries."""
    import torch

    from cluster_service.cluster.group_knn import knn_groups
    from cluster_service.cluster.knn import cell_knn, exact_knn, recall

    x = load_layers(args.run, args.layers, args.limit)
    x -= x.mean(axis=0)
    n = len(x)
    rows = []
    base = {"date": time.strftime("%Y-%m-%d"), "n": n, "d": int(x.shape[1]), "k": args.k,
            "data": data_name(args, n), "queries": args.queries}
    if args.device == "cuda":
        t0 = time.perf_counter()
        found = knn_groups(x, args.k, torch.device("cuda"))
        secs = time.perf_counter() - t0
        rows.append({**base, "machine": f"1x {torch.cuda.get_device_name(0)}", "method": "knn_group_min_cuda",
                     "seconds": round(secs, 1), "recall": round(recall(x, found, args.k, args.queries), 4),
                     "note": "fused float16 distance + group-minimum kernel, exact fp32 re-rank of the members of "
                             "k+16 groups; recall vs float64 brute force"})
        print(json.dumps(rows[-1]), flush=True)
    else:
        t0 = time.perf_counter()
        exact_knn(x[: args.exact_n], args.k + 1)
        t_exact = time.perf_counter() - t0
        rows.append({**base, "machine": args.machine, "method": "knn_exact_flat", "n": args.exact_n,
                     "seconds": round(t_exact, 1), "seconds_at_n": round(t_exact * (n / args.exact_n) ** 2, 0),
                     "note": f"FAISS flat search over the first {args.exact_n} points; seconds_at_n: N² from it"})
        print(json.dumps(rows[-1]), flush=True)
        for search in args.searches:
            t0 = time.perf_counter()
            found = cell_knn(x, args.k + 1, **search)
            secs = time.perf_counter() - t0
            rows.append({**base, "machine": args.machine, "method": "knn_cell", **search,
                         "seconds": round(secs, 1), "recall": round(recall(x, found, args.k, args.queries), 4),
                         "speedup_vs_exact": round(rows[0]["seconds_at_n"] / secs, 1),
                         "note": "layouts x probes + refinement rounds; recall vs float64 brute force on the "
                                 "sampled queries"})
            print(json.dumps(rows[-1]), flush=True)
    save_rows(rows, args.results)


def searches(text: str) -> list[dict[str, int]]:
    """'4x4+1,1x16+0' → cell searches: layouts × probes + refinement rounds."""
    out = []
    for part in text.split(","):
        layouts, rest = part.split("x")
        probes, refine = rest.split("+") if "+" in rest else (rest, "0")
        out.append({"partitions": int(layouts), "probes": int(probes), "refine": int(refine)})
    return out


def knn_quality(args: argparse.Namespace) -> None:
    """What the kNN search's recall does to the tree: every-token-a-leaf trees over the same real
    tokens with each cell search at every graph level, against the tree whose every graph was
    searched exactly."""
    import dataclasses

    from sklearn.metrics import adjusted_rand_score

    from cluster_service.cluster.approx import ward_tree
    from cluster_service.cluster.backend import FaissBackend
    from cluster_service.cluster.checkpoint import NoCheckpoint
    from cluster_service.cluster.knn import cell_knn, recall
    from cluster_service.cluster.params import ApproxParams
    from cluster_service.cluster.quality import within_sse
    from cluster_service.cluster.source import ArraySource

    x = load_layers(args.run, args.layers, args.limit)
    n = len(x)
    exact = ApproxParams(micro=n, knn_exact_max=n)
    variants = [("exact", exact)] + [
        (f"{s['partitions']}x{s['probes']}+{s['refine']}",
         dataclasses.replace(exact, knn_exact_max=exact.dense_max, knn_probes=s["probes"],
                             knn_partitions=s["partitions"], knn_refine=s["refine"])) for s in args.searches]
    trees, rows = {}, []
    centred = x - x.mean(axis=0)
    for name, params in variants:
        t0 = time.perf_counter()
        trees[name] = ward_tree(ArraySource(x), args.ks, params, FaissBackend(), NoCheckpoint(), where=name)
        secs = time.perf_counter() - t0
        rec = 1.0 if name == "exact" else recall(centred, cell_knn(
            centred, 17, probes=params.knn_probes, partitions=params.knn_partitions, refine=params.knn_refine,
            seed=params.seed), 16, args.queries)
        print(f"{name}: tree {secs:.1f} s, first-graph recall@16 {rec:.4f}", file=sys.stderr, flush=True)
        for k in args.ks:
            a = trees[name].assignments(k)
            ref = trees["exact"].assignments(k)
            rows.append({"machine": args.machine, "date": time.strftime("%Y-%m-%d"), "n": n, "d": int(x.shape[1]),
                         "k": k, "m": n, "method": f"approx_ward_knn_{name}", "data": data_name(args, n),
                         "seconds": round(secs, 1), "knn_recall_at_16": round(rec, 4),
                         "ari_vs_exact_knn": round(float(adjusted_rand_score(ref, a)), 4),
                         "sse_ratio_vs_exact_knn": round(within_sse(x, a) / within_sse(x, ref), 5),
                         "note": "every token a leaf; the kNN graphs searched exactly (reference) or by the cell "
                                 "search named in method; recall of the first graph's search"})
            print(json.dumps(rows[-1]), flush=True)
    save_rows(rows, args.results)


def exact_scale(args: argparse.Namespace) -> None:
    """Exact Ward at scale (``rnn_ward``): checked against fastcluster on a sample (and timed against
    it there), then over all n tokens, and the approximate trees on the same tokens against it."""
    import fastcluster
    import torch
    from sklearn.metrics import adjusted_rand_score

    from cluster_service.cluster.approx import ward_tree
    from cluster_service.cluster.backend import resolve_backend
    from cluster_service.cluster.checkpoint import NoCheckpoint
    from cluster_service.cluster.cut import cut
    from cluster_service.cluster.params import ApproxParams
    from cluster_service.cluster.quality import within_sse
    from cluster_service.cluster.rnn_ward import rnn_ward
    from cluster_service.cluster.source import ArraySource
    from cluster_service.logs import setup_logging

    setup_logging()  # the rounds' progress, as it comes
    backend = resolve_backend(args.device)
    dev = backend.device
    if args.run:
        x = load_layers(args.run, args.layers, args.n)
        data = data_name(args, len(x))
    else:
        gen = torch.Generator(device=dev).manual_seed(0)
        mus = torch.randn((2000, args.d), generator=gen, device=dev) * 2.0
        which = torch.randint(0, 2000, (args.n,), generator=gen, device=dev)
        x = (mus[which] + torch.randn((args.n, args.d), generator=gen, device=dev)).cpu().numpy()
        data = "synthetic: 2000-centre Gaussian mixture (centres N(0, 4·I), unit noise)"
    n, d = x.shape
    machine = f"1x {torch.cuda.get_device_name(0)}" if dev.type == "cuda" else args.machine
    base = {"machine": machine, "date": time.strftime("%Y-%m-%d"), "d": d, "device": backend.name, "data": data}
    rows = []
    c = min(args.check_n, n)
    t0 = time.perf_counter()
    ours = rnn_ward(x[:c], dev, dense_max=max(2, c // 10))
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = fastcluster.linkage(x[:c].astype(np.float64), method="ward", preserve_input=False)
    t_ref = time.perf_counter() - t0
    ks = [k for k in args.ks if k < c]
    cuts_ours, cuts_ref = cut(ours, ks), cut(ref, ks)
    check = {"n": c, "max_rel_height_diff": float(np.max(np.abs(ours[:, 2] - ref[:, 2])) / ref[-1, 2]),
             "ari_vs_fastcluster": {str(k): round(float(adjusted_rand_score(cuts_ours[k], cuts_ref[k])), 6)
                                    for k in ks},
             "seconds": round(t_ours, 2), "fastcluster_seconds": round(t_ref, 2)}
    print(f"check at {c}: {json.dumps(check)}", file=sys.stderr, flush=True)
    rows.append({**base, "n": c, "k": None, "m": c, "method": "exact_ward_rnn_check", "seconds": round(t_ours, 2),
                 "fastcluster_seconds": round(t_ref, 2), "speedup_vs_fastcluster": round(t_ref / t_ours, 2),
                 "max_rel_height_diff": check["max_rel_height_diff"], "ari_vs_fastcluster": check["ari_vs_fastcluster"],
                 "note": "exact Ward by RNN rounds vs fastcluster.linkage (float64, one CPU thread) on the "
                         "first n tokens"})
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    exact = rnn_ward(x, dev)
    t_exact = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else None
    print(f"exact Ward over {n}: {t_exact:.1f} s, GPU peak {peak} GiB", file=sys.stderr, flush=True)
    ref_cuts = cut(exact, args.ks)
    sse_ref = {k: within_sse(x, ref_cuts[k]) for k in args.ks}
    for k in args.ks:
        rows.append({**base, "n": n, "k": k, "m": n, "method": "exact_ward_rnn", "seconds": round(t_exact, 1),
                     **({"gpu_mem_peak_gib": round(peak, 2)} if peak is not None else {}),
                     "sse": round(sse_ref[k], 1),
                     "note": "exact Ward on every token (RNN rounds, float64 brute force)"})
    for m in [n, *args.ms]:
        t0 = time.perf_counter()
        tree = ward_tree(ArraySource(x), args.ks, ApproxParams(micro=m), backend, NoCheckpoint(), where=f"m={m}")
        secs = time.perf_counter() - t0
        for k in args.ks:
            a = tree.assignments(k)
            rows.append({**base, "n": n, "k": k, "m": m, "method": "approx_ward", "leaves": LEAVES[m == n],
                         "seconds": round(secs, 1), "seconds_exact": round(t_exact, 1),
                         "ari_vs_exact": round(float(adjusted_rand_score(ref_cuts[k], a)), 4),
                         "sse_ratio_vs_exact": round(within_sse(x, a) / sse_ref[k], 5),
                         "note": "the approximate tree against exact Ward on the same tokens"})
        print(f"m={m}: {secs:.1f} s; " + ", ".join(f"K={r['k']} ARI {r['ari_vs_exact']} SSE x{r['sse_ratio_vs_exact']}"
                                              for r in rows[-len(args.ks):]), file=sys.stderr, flush=True)
    for row in rows:
        print(json.dumps(row), flush=True)
    save_rows(rows, args.results)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    t = sub.add_parser("timing")
    t.add_argument("--ns", type=lambda s: [int(x) for x in s.split(",")],
                   default=[10_000, 20_000, 100_000, 300_000, 1_000_000])
    t.add_argument("--d", type=int, default=768)
    t.add_argument("--k", type=int, default=600)
    t.add_argument("--methods", type=lambda s: s.split(","), default=["approx", "exact"])
    t.add_argument("--exact-max", type=int, default=20_000)
    t.add_argument("--address", default="", help="'' one process; 'local' Ray tasks")
    t.add_argument("--workdir", default=os.environ.get("BENCH_WORKDIR", "/tmp/cluster_bench"))
    t.add_argument("--device", choices=["cpu", "cuda", "torch-cpu"], default="cpu",
                   help="the stage's --device: 'cpu' FAISS/NumPy (data from NumPy, as before); 'cuda' the torch "
                        "path on the GPU (data drawn there); 'torch-cpu' that path on the CPU (dry run)")
    t.add_argument("--micro", type=int, default=0, help="the stage's --micro (0: the default rule; rows say m)")
    t.add_argument("--cleanup", action="store_true", help="delete each synthetic store after its rows")
    t.add_argument("--check-determinism", action="store_true",
                   help="rerun the first N's approx row from scratch and record whether its arrays are identical")
    t.add_argument("--results", type=Path, default=RESULTS, help="result file (another one for dry runs)")
    q = sub.add_parser("quality")
    q.add_argument("--run", required=True)
    q.add_argument("--layer", type=int, default=6)
    q.add_argument("--n", type=int, default=20_000)
    q.add_argument("--d", type=int, default=384)
    q.add_argument("--model", default="all-MiniLM-L6-v2")
    q.add_argument("--source", default="`cluster-service extract RUN --corpus-max-sentences 4500 --layers 6 "
                   "--pooling last` (seeded uniform sample of the WordNet demo sentences, 29,607 words); "
                   "--evaluate draws a seeded 20K-token sample from it")
    for name, helptext in (("scale", "k-means-leaf trees at each M vs every token a leaf, on real tokens"),
                           ("knn", "recall and time of the kNN searches on real tokens"),
                           ("knn_quality", "every-token trees with each cell search vs exact kNN graphs")):
        r = sub.add_parser(name, help=helptext)
        r.add_argument("--run", required=True, help="a run store with extracted layers")
        r.add_argument("--layers", type=lambda s: [int(x) for x in s.split(",")], default=[6],
                       help="layers to stack (several: more real tokens than one layer holds)")
        r.add_argument("--model", default="all-MiniLM-L6-v2")
        r.add_argument("--corpus", default="the WordNet demo corpus, all 42,508 sentences")
        r.add_argument("--machine", default=MACHINE)
        r.add_argument("--limit", type=int, default=0, help="only the first N stacked tokens (0: all)")
        r.add_argument("--results", type=Path, default=RESULTS)
        r.add_argument("--device", choices=["cpu", "cuda", "torch-cpu"], default="cpu")
        if name == "scale":
            r.add_argument("--ms", type=lambda s: [int(x) for x in s.split(",") if x], default=[8192, 32768, 131072],
                           help="k-means leaf counts to compare ('': only the every-token tree, timed)")
        if name != "knn":
            r.add_argument("--ks", type=lambda s: [int(x) for x in s.split(",")], default=[600, 200, 50])
        if name != "scale":
            r.add_argument("--k", type=int, default=16)
            r.add_argument("--searches", type=searches, default=searches("1x16+0,4x4+0,4x4+1"),
                           help="cell searches, LAYOUTSxPROBES+REFINE comma-separated (default 1x16+0,4x4+0,4x4+1)")
            r.add_argument("--queries", type=int, default=2000)
            r.add_argument("--exact-n", type=int, default=50_000, help="points of the timed exact baseline")
    e = sub.add_parser("exact", help="exact Ward at scale (RNN rounds on a GPU) vs fastcluster and the "
                       "approximate trees")
    e.add_argument("--n", type=int, default=1_000_000, help="tokens (synthetic, or the first n stacked of --run)")
    e.add_argument("--d", type=int, default=768, help="dimension of the synthetic vectors")
    e.add_argument("--run", default="", help="a run store with extracted layers ('': synthetic mixture)")
    e.add_argument("--layers", type=lambda s: [int(x) for x in s.split(",")], default=[6])
    e.add_argument("--model", default="all-MiniLM-L6-v2")
    e.add_argument("--corpus", default="the WordNet demo corpus, all 42,508 sentences")
    e.add_argument("--check-n", type=int, default=10_000, help="tokens of the check against fastcluster")
    e.add_argument("--ks", type=lambda s: [int(x) for x in s.split(",")], default=[600, 200, 50])
    e.add_argument("--ms", type=lambda s: [int(x) for x in s.split(",") if x], default=[131072],
                   help="k-means leaf counts whose trees are compared too (after the every-token tree)")
    e.add_argument("--device", choices=["cpu", "cuda", "torch-cpu"], default="cuda")
    e.add_argument("--machine", default=MACHINE)
    e.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args()
    modes = {"exact": exact_scale, "timing": timing, "quality": quality, "scale": scale, "knn": knn,
             "knn_quality": knn_quality}
    modes[args.what](args)


if __name__ == "__main__":
    main()
