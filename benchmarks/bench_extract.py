"""Extraction throughput against its roofline and a NeuroX-style one-sentence-at-a-time baseline.

Modes, all on the same sentences (a token is a stored word occurrence, one row of a layer array):
  forward_only           the model's forward pass on the very batches extraction builds (no tokenizing,
                         pooling, copies or storage): the compute ceiling
  forward_fixed_shape    (packed) one --fixed-shape batch of random ids, no mask: the model at that shape
  host_sink              the whole pipeline up to host memory (pinned, on a GPU), vectors then dropped
  host_sink_prep_in_actor  (--gpus only) the same with shards prepared inside the GPU actor's process
  disk_write             whole-shard Zarr writes of the same shape from the same number of writer threads
  full                   `extract` end to end after ingestion (tokenize, forward, pool, copy, write, fsync)
  one_sentence_baseline  forward one sentence, .cpu(), pool in numpy, write its rows (NeuroX style)

forward_only and full run on each forward path (--paths padded,packed; `packed` and `pack_length` are
part of a row's identity), with padding_fraction (pad positions / all positions computed) and
subword_tokens_per_s (real subword positions, specials included). With --gpus, the Ray modes run the
last path of --paths.
roofline = min(forward_only tokens/s, write_gbps * 1e9 / bytes_per_token), quoted on the full rows.

    python benchmarks/bench_extract.py                          # CPU, packaged MiniLM, all layers and layer 6
    python benchmarks/bench_extract.py --cases all --modes forward_only,full --pack-lengths 64,128,256
    python benchmarks/bench_extract.py --model random:bert-base --tokens 1500000   # on a GPU
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import merge_rows, print_table  # noqa: E402

from cluster_service.corpus import CorpusConfig  # noqa: E402
from cluster_service.corpus.stage import ingest_run  # noqa: E402
from cluster_service.demo import fetch_demo_corpus  # noqa: E402
from cluster_service.extract.config import ExtractConfig  # noqa: E402
from cluster_service.extract.engine import ShardComputer  # noqa: E402
from cluster_service.extract.model import load_model, model_shape, resolve_layers  # noqa: E402
from cluster_service.extract.packing import padding_fraction  # noqa: E402
from cluster_service.extract.stage import extract_run, prepare_store  # noqa: E402
from cluster_service.extract.tasks import ShardTasks  # noqa: E402
from cluster_service.extract.worker import ExtractWorker  # noqa: E402
from cluster_service.extract.writer import ShardWriter, create_layer_arrays  # noqa: E402
from cluster_service.store import RunStore, shard_ranges  # noqa: E402

KEYS = ("model", "gpus", "layers", "mode", "engine", "packed", "pack_length")


def ingested(run, corpus_cfg) -> RunStore:
    store = RunStore(run)
    ingest_run(store, corpus_cfg)
    return store


def sync(lm) -> None:
    if lm.device.type == "cuda":
        torch.cuda.synchronize(lm.device)


def make_corpus(workdir: Path, tokens: int) -> str:
    """Demo sentences, repeated until the corpus holds about ``tokens`` words (whitespace words)."""
    toks = [line.split() for line in fetch_demo_corpus().read_text().splitlines()]
    out, n = [], 0
    while n < tokens:
        for t in toks:
            out.append(" ".join(t))
            n += len(t)
            if n >= tokens:
                break
    path = workdir / "corpus.txt"
    path.write_text("\n".join(out) + "\n")
    return str(path)


def forward_only(variants: dict, repeats: int = 1) -> dict:
    """The model's forward passes alone on the batches extraction builds, for each variant
    (name -> (loaded model, ShardComputer, tasks)): passes of the variants interleaved ``repeats``
    times and the fastest pass of each kept, so that on a shared machine a burst of load elsewhere
    slows one pass, not one variant."""
    prepared = {}
    for name, (lm, comp, tasks) in variants.items():
        batches = [b for t in tasks for b in comp.batches(t)]
        with torch.inference_mode():
            for b in batches[:3]:  # warm-up (kernels, allocator)
                comp.forward(b)
            sync(lm)
        prepared[name] = (lm, comp, batches)
    times: dict = {name: [] for name in variants}
    with torch.inference_mode():
        for _ in range(repeats):
            for name, (lm, comp, batches) in prepared.items():
                t0 = time.perf_counter()
                for b in batches:
                    comp.forward(b)
                sync(lm)
                times[name].append(time.perf_counter() - t0)
    out = {}
    for name, (_, _, batches) in prepared.items():
        sec = min(times[name])
        words = sum(len(b.rows) for b in batches)
        out[name] = {"tokens": words, "seconds": sec, "tokens_per_s": words / sec, "repeats": repeats,
                     **subword_fields(batches, sec)}
    return out


def subword_fields(batches, seconds: float) -> dict:
    """Real subword positions (specials included, padding not) per second, and the padding share."""
    pad = padding_fraction(batches)
    subwords = round(sum(b.ids.size for b in batches) * (1 - pad))
    return {"subword_tokens": subwords, "subword_tokens_per_s": subwords / seconds, "padding_fraction": pad,
            "batches": len(batches)}


def forward_fixed_shape(lm, rows: int, length: int, repeats: int = 5) -> dict:
    """One [rows, length] batch of random ids, no mask, no padding: the model's ceiling at that shape."""
    ids = torch.randint(1000, 2000, (rows, length), device=lm.device)
    with torch.inference_mode():
        lm.model(input_ids=ids, output_hidden_states=True)
        sync(lm)
        t0 = time.perf_counter()
        for _ in range(repeats):
            lm.model(input_ids=ids, output_hidden_states=True)
        sync(lm)
    sec = time.perf_counter() - t0
    n = rows * length * repeats
    return {"tokens": n, "seconds": sec, "tokens_per_s": n / sec, "subword_tokens": n,
            "subword_tokens_per_s": n / sec, "padding_fraction": 0.0, "shape": f"{rows}x{length}"}


class HostSink:
    """Drops finished shards once they reach host memory: the pipeline's upper bound without storage."""

    def __init__(self, store: RunStore, layers: list[int]):
        pass

    def write(self, shard: int, start: int, stop: int, data) -> None:
        pass


def pipeline(run: str, cfg, layers, tasks) -> float:
    worker = ExtractWorker(run, cfg, layers, threads=cfg.cpus_per_worker, sink=HostSink)
    worker.process(tasks[0])  # warm-up
    worker.flush()
    t0 = time.perf_counter()
    worker.process_all(tasks)
    return time.perf_counter() - t0


def disk_write(workdir: Path, layers, n_rows: int, hidden: int, cfg, seconds: float = 0) -> tuple[float, int]:
    """GB/s that whole-shard writes (with fsync, as extraction does) reach from ``writer_threads`` threads
    (stopping after ``seconds`` when it is set)."""
    store = RunStore(workdir / "disk_write")
    create_layer_arrays(store, layers, n_rows, hidden, cfg.shard_rows, cfg.chunk_rows)
    writer = ShardWriter(store, layers)
    ranges = shard_ranges(n_rows, cfg.shard_rows)
    block = np.random.default_rng(0).standard_normal((len(layers), cfg.shard_rows, hidden)).astype(np.float16)
    nxt = iter(range(len(ranges)))
    lock = threading.Lock()
    written = [0]

    def work() -> None:
        while True:
            with lock:
                i = next(nxt, None)
            if i is None or (seconds and time.perf_counter() - t0 > seconds):
                return
            a, b = ranges[i]
            writer.write(i, a, b, block[:, : b - a])
            with lock:
                written[0] += b - a

    t0 = time.perf_counter()
    threads = [threading.Thread(target=work) for _ in range(max(1, cfg.writer_threads))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    shutil.rmtree(store.where())
    return elapsed, written[0] * len(layers) * hidden * 2


def one_sentence_baseline(lm, store: RunStore, layers, pooling: str, limit_rows: int,
                          workdir: Path) -> tuple[int, float]:
    import zarr

    tok, model = lm.tokenizer, lm.model
    tokens = store.read_tokens(["sentence_id", "position"]).to_pydict()
    texts = store.read_sentences().column("text").to_pylist()
    by_sent: dict[int, list[int]] = {}
    for s, p in zip(tokens["sentence_id"], tokens["position"], strict=True):
        by_sent.setdefault(s, []).append(p)
    out = zarr.open_group(str(workdir / "baseline.zarr"), mode="w")
    arrays = [out.create_array(f"layer_{layer}", shape=(limit_rows, lm.hidden_size), chunks=(1024, lm.hidden_size),
                               dtype="float16", compressors=None) for layer in layers]
    row = 0
    # rows gather in a host buffer and go to Zarr a whole chunk at a time (no read-modify-write),
    # as NeuroX writes a dataset per sentence into HDF5
    buf = np.zeros((len(layers), 1024, lm.hidden_size), dtype=np.float16)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for s, positions in by_sent.items():
            if row + len(positions) > limit_rows:
                break
            words = texts[s].split(" ")
            enc = tok(words, is_split_into_words=True, return_tensors="pt", truncation=True,
                      max_length=lm.max_length)
            states = model(**{k: v.to(lm.device) for k, v in enc.items()}, output_hidden_states=True).hidden_states
            host = [states[layer][0].float().cpu().numpy() for layer in layers]  # synchronous, as NeuroX
            wid = np.asarray([-1 if w is None else w for w in enc.word_ids(0)])
            for j, p in enumerate(positions):
                idx = np.flatnonzero(wid == p)
                pick = {"first": idx[:1], "last": idx[-1:], "mean": idx}[pooling]
                for li in range(len(layers)):
                    buf[li, (row + j) % 1024] = host[li][pick].mean(0)
                if (row + j) % 1024 == 1023:
                    for li, arr in enumerate(arrays):
                        arr[row + j - 1023: row + j + 1] = buf[li]
            row += len(positions)
        tail = row % 1024
        for li, arr in enumerate(arrays):
            arr[row - tail: row] = buf[li, :tail]
    seconds = time.perf_counter() - t0
    shutil.rmtree(workdir / "baseline.zarr")
    return row, seconds


CPU_MODES = "forward_only,host_sink,disk_write,full,one_sentence_baseline"


def run_case(args, layers_arg: list[int], corpus: str, workdir: Path) -> list[dict]:
    """One process on this machine's device: forward_only on each forward path (padded, and packed at
    each --pack-lengths value) and full on each path (packed at --pack-length), interleaved and the
    fastest of --repeats kept; the other modes once. All on the same sentences."""
    modes = (args.modes or CPU_MODES).split(",")
    n_layers, hidden = model_shape(args.model)
    layers = resolve_layers(layers_arg, n_layers)
    corpus_cfg = CorpusConfig(path=corpus, tokenizer="whitespace")
    bpt = len(layers) * hidden * 2
    paths = {}
    for path in args.paths.split(","):
        cfg = ExtractConfig(model=args.model, layers=layers_arg, engine="local", writer_threads=args.writer_threads,
                            batch_tokens=args.batch_tokens, shard_rows=args.shard_rows, cpus_per_worker=args.threads,
                            packed=path == "packed", pack_length=args.pack_length)
        run = workdir / f"run_{len(layers)}_{path}"
        shutil.rmtree(run, ignore_errors=True)
        manifest = prepare_store(ingested(run, corpus_cfg), cfg)
        source = ShardTasks(RunStore(run), cfg.shard_rows)
        tasks = [source.task(s) for s in range(manifest["shards"])]
        lm = load_model(cfg.model, cfg.device, cfg.dtype, cfg.max_length, packed=cfg.packed)
        paths[path] = (cfg, run, tasks, lm)
    cfg0, _, _, lm0 = next(iter(paths.values()))
    n_rows = len(RunStore(next(iter(paths.values()))[1]).read_tokens(["row"]))
    gpus = 1 if lm0.device.type == "cuda" else 0
    machine = args.machine or (f"1x {torch.cuda.get_device_name(0)}" if gpus else "2-core CPU box")

    def base(path: str | None, pack_length: int | None) -> dict:
        return {"machine": machine, "model": args.model or "all-MiniLM-L6-v2", "device": lm0.device.type,
                "gpus": gpus, "layers": len(layers), "bytes_per_token": bpt, "engine": "local",
                "packed": None if path is None else path == "packed",
                "pack_length": pack_length if path == "packed" else None, "batch_tokens": cfg0.batch_tokens}

    def computer(path: str, pack_length: int) -> ShardComputer:
        cfg, _, _, lm = paths[path]
        return ShardComputer(lm, layers, cfg.pooling, cfg.batch_tokens, pack_length)

    rows: list[dict] = []
    if "forward_only" in modes:
        variants = {}
        for path, (cfg, _, tasks, lm) in paths.items():
            for length in [int(x) for x in args.pack_lengths.split(",")] if cfg.packed else [cfg.pack_length]:
                variants[(path, length)] = (lm, computer(path, length), tasks)
        for (path, length), result in forward_only(variants, args.repeats).items():
            rows.append({**base(path, length), "mode": "forward_only", **result})
    if "forward_fixed_shape" in modes:
        r, t = (int(x) for x in args.fixed_shape.split("x"))
        rows.append({**base("packed", None), "mode": "forward_fixed_shape", **forward_fixed_shape(lm0, r, t)})
    if "host_sink" in modes:
        for path, (cfg, run, tasks, _) in paths.items():
            sec = pipeline(str(run), cfg, layers, tasks)
            rows.append({**base(path, cfg.pack_length), "mode": "host_sink", "tokens": n_rows, "seconds": sec,
                         "tokens_per_s": n_rows / sec})
    gbps = None
    if "disk_write" in modes:  # storage does not depend on the forward path
        sec, nbytes = disk_write(workdir, layers, n_rows, hidden, cfg0)
        gbps = nbytes / sec / 1e9
        rows.append({**base(None, None), "mode": "disk_write", "tokens": n_rows, "seconds": sec,
                     "tokens_per_s": n_rows / sec, "write_gbps": gbps, "writers": cfg0.writer_threads})
    if "full" in modes:
        best: dict[str, float] = {}
        for i in range(args.repeats):
            for path, (cfg, run, _, _) in paths.items():
                fresh = workdir / f"full_{path}_{i}"
                shutil.copytree(run, fresh)  # tables and empty arrays: extract resumes it from scratch
                sec = extract_run(RunStore(fresh), cfg)["seconds"]
                shutil.rmtree(fresh, ignore_errors=True)
                best[path] = min(best.get(path, sec), sec)
        for path, (cfg, _, tasks, _) in paths.items():
            sec = best[path]
            row = {**base(path, cfg.pack_length), "mode": "full", "tokens": n_rows, "seconds": sec,
                   "tokens_per_s": n_rows / sec, "repeats": args.repeats,
                   **subword_fields([b for t in tasks for b in computer(path, cfg.pack_length).batches(t)], sec)}
            fwd = next((r["tokens_per_s"] for r in rows if r["mode"] == "forward_only"
                        and r["packed"] == row["packed"] and r["pack_length"] == row["pack_length"]), None)
            if fwd and gbps:
                roof = min(fwd, gbps * 1e9 / bpt)
                row.update(write_gbps=gbps, roofline_tokens_per_s=roof, fraction_of_roofline=row["tokens_per_s"] / roof)
            rows.append(row)
    if "one_sentence_baseline" in modes:
        _, run, _, lm = paths[next(iter(paths))]
        n, sec = one_sentence_baseline(lm, RunStore(run), layers, cfg0.pooling, min(n_rows, args.baseline_rows),
                                       workdir)
        rows.append({**base(None, None), "mode": "one_sentence_baseline", "tokens": n, "seconds": sec,
                     "tokens_per_s": n / sec})
    for _, run, _, _ in paths.values():
        shutil.rmtree(run, ignore_errors=True)
    baseline = next((r["tokens_per_s"] for r in rows if r["mode"] == "one_sentence_baseline"), None)
    padded = {r["mode"]: r["tokens_per_s"] for r in rows if r["packed"] is False}
    for r in rows:
        if r["mode"] == "full" and baseline:
            r["speedup_vs_one_sentence"] = r["tokens_per_s"] / baseline
        if r["packed"] and r["mode"] in padded:
            r["speedup_vs_padded"] = r["tokens_per_s"] / padded[r["mode"]]
    return rows


def ray_host_sink(run: str, cfg, layers, source: ShardTasks, n_shards: int, gpus: int,
                  seconds: float = 0, prep: str = "task") -> tuple[int, float, list]:
    """Actors up to pinned host memory, vectors dropped: rows/s after each actor's warm-up shard,
    over the whole corpus or, with ``seconds``, until that much steady-state time has passed.

    Tasks are built as shards are handed out, as the extract stage does, so the driver's share of
    the work is the same as in a real run."""
    import ray

    import cluster_service.extract.ray_pool as ray_pool
    from cluster_service.extract.ray_pool import prepare, worker_timing
    from cluster_service.extract.worker import ExtractWorker

    cpus = max(1, min(4, int(ray.cluster_resources().get("CPU", 1)) // gpus))
    actor_cls = ray.remote(ExtractWorker).options(num_gpus=1, num_cpus=cpus, max_concurrency=2)
    actors = [actor_cls.remote(run, cfg, layers, 0, HostSink) for _ in range(gpus)]
    def call(actor, shard: int):
        task = source.task(shard)
        if prep == "actor":  # the former design: prepared in the actor's own process
            return actor.process.remote(task)
        return actor.process.remote(task.header(), prepare.remote(cfg, task))  # as the extract stage does

    ray.get([call(a, i) for i, a in enumerate(actors)])
    ray.get([a.stats.remote(reset=True) for a in actors])  # time the steady state only
    queue, inflight, rows = list(range(gpus, n_shards)), {}, 0
    load = [0] * gpus
    t0 = time.perf_counter()
    while True:
        if seconds and time.perf_counter() - t0 > seconds:
            queue = []  # the calls in flight finish and count
        elif seconds and not queue:
            queue = list(range(n_shards))  # sinking drops the vectors, so shards may repeat: fill the window
        if not queue and not inflight:
            break
        for i, a in enumerate(actors):
            while queue and load[i] < (2 if prep == "actor" else ray_pool.IN_FLIGHT):
                inflight[call(a, queue.pop())] = i
                load[i] += 1
        ready, _ = ray.wait(list(inflight), num_returns=1)
        load[inflight.pop(ready[0])] -= 1
        rows += ray.get(ready[0])
    elapsed = time.perf_counter() - t0
    timing = worker_timing(actors)
    for a in actors:
        ray.kill(a)
    return rows, elapsed, timing


def timing_fields(timing: list[dict], seconds: float) -> dict:
    """The busiest actor's time split, as fractions of the measured wall time."""
    if not timing:
        return {}
    worst = max(timing, key=lambda t: t["model_s"])
    return {f"actor_{k.removesuffix('_s')}_fraction": round(worst[k] / seconds, 3)
            for k in ("prep_s", "model_s", "write_wait_s")}


def run_gpus(args, layers_arg: list[int], corpus: str, workdir: Path, gpu_counts: list[int]) -> list[dict]:
    """Scaling over GPUs of one host: host_sink and full (Zarr) with Ray actors, one per GPU."""
    modes = (args.modes or "host_sink,disk_write,full").split(",")
    import ray

    import cluster_service.extract.ray_pool as ray_pool
    from cluster_service.extract.ray_pool import init_ray

    n_layers, hidden = model_shape(args.model)
    layers = resolve_layers(layers_arg, n_layers)
    cfg = ExtractConfig(model=args.model, layers=layers_arg, engine="ray", writer_threads=args.writer_threads,
                        batch_tokens=args.batch_tokens, shard_rows=args.shard_rows,
                        packed=args.paths.split(",")[-1] == "packed", pack_length=args.pack_length)
    corpus_cfg = CorpusConfig(path=corpus, tokenizer="whitespace")
    run = workdir / "run_gpus"
    shutil.rmtree(run, ignore_errors=True)
    manifest = prepare_store(ingested(run, corpus_cfg), cfg)
    source = ShardTasks(RunStore(run), cfg.shard_rows)
    init_ray()
    visible = int(ray.cluster_resources().get("GPU", 0))
    machine = args.machine or f"{visible}x {torch.cuda.get_device_name(0)}"
    bpt = len(layers) * hidden * 2
    rows: list[dict] = []
    for g in gpu_counts:
        base = {"machine": machine, "model": args.model, "device": "cuda", "gpus": g, "layers": len(layers),
                "bytes_per_token": bpt, "engine": "ray", "in_flight": ray_pool.IN_FLIGHT, "packed": cfg.packed,
                "pack_length": cfg.pack_length if cfg.packed else None}
        first = len(rows)
        for mode in ("host_sink", "host_sink_prep_in_actor"):
            if mode in modes:
                prep = "actor" if mode.endswith("in_actor") else "task"
                n, sec, timing = ray_host_sink(str(run), cfg, layers, source, manifest["shards"], g,
                                               args.seconds, prep)
                rows.append({**base, "mode": mode, "tokens": n, "seconds": sec, "tokens_per_s": n / sec,
                             **timing_fields(timing, sec)})
        gbps = None
        if "disk_write" in modes:
            writers = dataclasses.replace(cfg, writer_threads=g * cfg.writer_threads)
            sec, nbytes = disk_write(workdir, layers, manifest["tokens"], hidden, writers, args.seconds)
            gbps = nbytes / sec / 1e9
            written = nbytes // bpt
            rows.append({**base, "mode": "disk_write", "tokens": written, "seconds": sec,
                         "tokens_per_s": written / sec, "write_gbps": gbps, "writers": writers.writer_threads})
        if "full" in modes:
            full_run = workdir / f"full_{g}"
            shutil.copytree(run, full_run)  # tables and empty arrays: no re-ingestion; extract resumes it
            summary = extract_run(ingested(full_run, corpus_cfg), dataclasses.replace(cfg, workers=g))
            rate = summary.get("steady_tokens_per_s") or summary["tokens_per_s"]
            fraction = {"write_gbps": gbps, "write_fraction_of_disk": rate * bpt / 1e9 / gbps} if gbps else {}
            rows.append({**base, "mode": "full", "tokens": summary["tokens"], "seconds": summary["seconds"],
                         "tokens_per_s": rate, **fraction,
                         **timing_fields(summary.get("worker_timing", []), summary["seconds"])})
            shutil.rmtree(full_run, ignore_errors=True)
        print_table(rows[first:], ["gpus", "layers", "mode", "tokens", "seconds", "tokens_per_s", "write_gbps"])
        merge_rows("extract", rows, KEYS)  # kept as each count finishes: a later crash loses only its own rows
    one = {r["mode"]: r["tokens_per_s"] for r in rows if r["gpus"] == gpu_counts[0]}
    for r in rows:
        if r["mode"] in one and r["gpus"] != gpu_counts[0]:
            r[f"scaling_vs_{gpu_counts[0]}_gpu"] = r["tokens_per_s"] / one[r["mode"]]
    shutil.rmtree(run, ignore_errors=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="", help="model name/path or random:bert-base (default: packaged MiniLM)")
    ap.add_argument("--tokens", type=int, default=60_000, help="words in the benchmark corpus")
    ap.add_argument("--cases", default="all,6", help="semicolon-free list: 'all' and/or single layer numbers")
    ap.add_argument("--writer-threads", type=int, default=2, help="Zarr writer threads (and disk_write writers)")
    ap.add_argument("--batch-tokens", type=int, default=16384, help="padded subword tokens per batch")
    ap.add_argument("--shard-rows", type=int, default=16384, help="rows per Zarr shard")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--baseline-rows", type=int, default=20_000, help="rows the one-sentence baseline computes")
    ap.add_argument("--machine", default="", help="machine name for the result rows")
    ap.add_argument("--workdir", default="", help="scratch directory (default: a temporary one)")
    ap.add_argument("--seconds", type=float, default=0, help="with --gpus: host_sink and disk_write run for "
                    "this many steady-state seconds (host_sink repeats shards to fill them) instead of once "
                    "over the corpus; full always covers the corpus once")
    ap.add_argument("--modes", default="", help="which modes to run (default: " + CPU_MODES + "; with --gpus "
                    "host_sink,disk_write,full); host_sink_prep_in_actor (--gpus) is host_sink with shards prepared "
                    "in the actor's own process (the design before preparation moved to Ray tasks); "
                    "forward_fixed_shape (packed path) times one --fixed-shape batch without padding")
    ap.add_argument("--paths", default="padded,packed", help="forward paths to measure: padded and/or packed")
    ap.add_argument("--pack-length", type=int, default=ExtractConfig.pack_length,
                    help="subwords per packed row for the pipeline modes")
    ap.add_argument("--pack-lengths", default="", help="pack lengths forward_only tries (default: --pack-length)")
    ap.add_argument("--repeats", type=int, default=1, help="forward_only passes and full runs per path, "
                    "interleaved between the paths (the fastest counts)")
    ap.add_argument("--fixed-shape", default="64x256", help="ROWSxLENGTH of the forward_fixed_shape batch")
    ap.add_argument("--in-flight", type=int, default=0, help="with --gpus: shards in flight per actor "
                    "(default: the extract stage's IN_FLIGHT)")
    ap.add_argument("--gpus", default="", help="GPU counts for the Ray scaling runs, e.g. 1,2,4 (host_sink, "
                    "disk_write, full per count; replaces the single-process modes)")
    args = ap.parse_args()
    args.pack_lengths = args.pack_lengths or str(args.pack_length)
    if args.in_flight:
        import cluster_service.extract.ray_pool as ray_pool

        ray_pool.IN_FLIGHT = args.in_flight
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_extract_"))
    workdir.mkdir(parents=True, exist_ok=True)
    corpus = make_corpus(workdir, args.tokens)
    rows = []
    for case in args.cases.split(","):
        layers = [] if case == "all" else [int(case)]
        if args.gpus:
            rows += run_gpus(args, layers, corpus, workdir, [int(g) for g in args.gpus.split(",")])
        else:
            rows += run_case(args, layers, corpus, workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    print_table(rows, ["machine", "model", "gpus", "layers", "mode", "packed", "pack_length", "tokens", "seconds",
                       "tokens_per_s", "subword_tokens_per_s", "padding_fraction", "speedup_vs_padded", "write_gbps",
                       "roofline_tokens_per_s", "fraction_of_roofline", "speedup_vs_one_sentence",
                       "write_fraction_of_disk", "scaling_vs_1_gpu", "actor_prep_fraction", "actor_model_fraction",
                       "actor_write_wait_fraction"])
    print(merge_rows("extract", rows, KEYS))


if __name__ == "__main__":
    main()
