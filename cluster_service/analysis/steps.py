"""The steps of the analyze stage over one layer and K: each reads what it needs from ``LayerInputs``,
calls its pure array module, and returns its tables (by store key) and a summary. ``stage`` decides which
steps run, skips those whose tables are current, and writes what they return.

Every step says in one line why it cannot run (``missing``) and which settings its tables depend on
(``settings``), so a rerun with the same settings skips it and a changed one redoes it alone.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from ..annotate import labels as labelfiles
from ..errors import UserError
from ..store import RunStore
from . import align, layers, neurons, probe, score, stability
from .config import AnalyzeConfig
from .inputs import LayerInputs, clustered_ks, has_assignments, optional_bar, read_assignments

TAGS_KEY = "analysis/tags.parquet"
VERSION = 2


def folder(layer: int, k: int) -> str:
    return f"analysis/layer_{layer}_k{k}"


def layers_folder(layer: int, other: int, k: int) -> str:
    return f"analysis/layers_{layer}_{other}_k{k}"


def _quantiles(values: np.ndarray) -> dict[str, float | None]:
    v = values[np.isfinite(values)]
    if not len(v):
        return {"median": None, "p10": None, "p90": None, "mean": None}
    return {"median": round(float(np.median(v)), 4), "p10": round(float(np.quantile(v, 0.1)), 4),
            "p90": round(float(np.quantile(v, 0.9)), 4), "mean": round(float(v.mean()), 4)}


def _median(values) -> float | None:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    return round(float(np.median(v)), 4) if len(v) else None


def _bar(total: int, desc: str, unit: str, cfg: AnalyzeConfig):
    return optional_bar(total, desc, unit, cfg.progress)


# ---- probe ---------------------------------------------------------------------------------------
def _probe_settings(cfg: AnalyzeConfig) -> probe.ProbeSettings:
    return probe.ProbeSettings(cfg.probe_epochs, cfg.probe_batch, cfg.probe_lr, cfg.probe_l1, cfg.probe_l2,
                               cfg.probe_max_members, cfg.seed)


def run_probe(inp: LayerInputs, cfg: AnalyzeConfig) -> tuple[dict[str, pa.Table], dict[str, Any]]:
    import torch

    x = torch.from_numpy(inp.vectors)
    mean, std = inp.scale
    scale = (torch.from_numpy(mean.astype(np.float32)), torch.from_numpy(std.astype(np.float32)))
    bar = _bar(cfg.probe_epochs, f"probe layer {inp.layer}", "epoch", cfg)
    res = probe.probe_concepts(x, inp.assignments, inp.types, inp.k, _probe_settings(cfg), scale, bar)
    bar.close()
    sizes = np.bincount(inp.assignments, minlength=inp.k)
    table = pa.table({
        "concept": pa.array(np.arange(inp.k), pa.int32()), "size": pa.array(sizes, pa.int64()),
        "members": res["members"], "pairs": res["pairs"],
        "train_accuracy": res["train_accuracy"], "dev_accuracy": res["dev_accuracy"], "accuracy": res["accuracy"],
        "control_accuracy": res["control_accuracy"], "selectivity": res["selectivity"],
        "weights": pa.array(list(res["weights"].astype(np.float32)), pa.list_(pa.float32())),
    })
    summary = {"concepts": inp.k, "accuracy": _quantiles(res["accuracy"]),
               "control_accuracy": _quantiles(res["control_accuracy"]),
               "selectivity": _quantiles(res["selectivity"])}
    return {f"{folder(inp.layer, inp.k)}/probe.parquet": table}, summary


# ---- neurons -------------------------------------------------------------------------------------
def run_neurons(inp: LayerInputs, cfg: AnalyzeConfig) -> tuple[dict[str, pa.Table], dict[str, Any]]:
    sums, counts = inp.sums
    n = cfg.top_neurons
    std = inp.scale[1]
    scores = neurons.probeless(sums, counts, std)
    top = neurons.top_neurons(scores, n)
    columns: dict[str, Any] = {
        "concept": pa.array(np.arange(inp.k), pa.int32()), "size": pa.array(counts, pa.int64()),
        "probeless_top": pa.array(list(top), pa.list_(pa.int32())),
        "probeless_score": pa.array([scores[c, top[c]].astype(np.float32) for c in range(inp.k)],
                                    pa.list_(pa.float32())),
    }
    summary: dict[str, Any] = {"top_n": n}
    probe_key = f"{folder(inp.layer, inp.k)}/probe.parquet"
    if inp.store.has(probe_key):
        weights = np.asarray(inp.store.read_parquet(probe_key, ["weights"]).column("weights").to_pylist())
        ptop = neurons.top_neurons(neurons.weight_mass(weights), n)
        agree = neurons.overlap(top, ptop)
        columns["probe_top"] = pa.array(list(ptop), pa.list_(pa.int32()))
        columns["probeless_probe_overlap"] = agree
        summary["probeless_probe_overlap"] = _quantiles(agree)
    if inp.parent is not None:
        k_parent = int(inp.parent.max()) + 1
        psums, pcounts = neurons.parent_sums(sums, counts, inp.parent, k_parent)
        ptop = neurons.top_neurons(neurons.probeless(psums, pcounts, std), n)
        shared = neurons.overlap(top, ptop[inp.parent])
        columns["parent"] = pa.array(inp.parent, pa.int32())
        columns["parent_overlap"] = shared
        summary.update(parent_k=k_parent, parent_overlap=_quantiles(shared))
    else:
        summary["parent_overlap"] = "no smaller K in this run's tree (cluster with e.g. --k 600,200)"
    return {f"{folder(inp.layer, inp.k)}/neurons.parquet": pa.table(columns)}, summary


# ---- align ---------------------------------------------------------------------------------------
def tags_settings(store: RunStore) -> dict[str, Any]:
    tokens = store.read_tokens(["row"])
    return {"model": align.SPACY_MODEL, "rows": len(tokens), "version": VERSION}


def read_tags(store: RunStore, inp: LayerInputs, cfg: AnalyzeConfig) -> pa.Table:
    """``analysis/tags.parquet``: spaCy's tags of every row, made once per run (any layer's align makes it)."""
    wanted = json.dumps({"model": align.SPACY_MODEL, "rows": len(inp.tokens), "version": VERSION})
    if store.has(TAGS_KEY):
        tags = store.read_parquet(TAGS_KEY)
        if (tags.schema.metadata or {}).get(b"cluster_service.tags_key", b"").decode() == wanted:
            return tags
    tokens = inp.tokens
    sentences = store.read_sentences()
    text = dict(zip(sentences.column("sentence_id").to_pylist(), sentences.column("text").to_pylist(), strict=True))
    sid = tokens.column("sentence_id").to_numpy()
    pos = tokens.column("position").to_numpy()
    words = tokens.column("word").to_pylist()
    ids = sorted(set(sid.tolist()))
    split = [text[i].split(" ") for i in ids]
    tagged = align.tag_sentences(split, cfg.tag_processes)
    where = {i: j for j, i in enumerate(ids)}
    out = {"pos": [], "tag": [], "ent": []}
    for row in range(len(tokens)):
        sent, p = where[int(sid[row])], int(pos[row])
        if p >= len(split[sent]) or split[sent][p] != words[row]:
            raise UserError(f"{store.where('tokens.parquet')}: row {row}: word {words[row]!r} is not at position "
                            f"{p} of sentence {int(sid[row])}; re-run ingest")
        for kind, value in zip(align.KINDS, tagged[sent][p], strict=True):
            out[kind].append(value)
    tags = pa.table({"row": tokens.column("row").cast(pa.int64()), **out}, schema=align.TAGS_SCHEMA)
    tags = tags.replace_schema_metadata({"cluster_service.tags_key": wanted})
    store.write_parquet(TAGS_KEY, tags)
    return tags


def run_align(inp: LayerInputs, cfg: AnalyzeConfig) -> tuple[dict[str, pa.Table], dict[str, Any]]:
    tags = read_tags(inp.store, inp, cfg)
    sizes = np.bincount(inp.assignments, minlength=inp.k)
    columns: dict[str, Any] = {"concept": pa.array(np.arange(inp.k), pa.int32()), "size": pa.array(sizes, pa.int64())}
    aligned_with: list[list[str]] = [[] for _ in range(inp.k)]
    summary: dict[str, Any] = {"threshold": cfg.align_threshold, "coverage": {}}
    for kind in align.KINDS:
        codes, names = align.encode(tags.column(kind).to_pylist())
        best, share = align.majority(codes, inp.assignments, inp.k, len(names))
        aligned = np.where(share >= cfg.align_threshold, best, -1)
        cover = align.coverage(codes, inp.assignments, aligned, len(names))
        columns[kind] = [names[b] if b >= 0 else None for b in best]
        columns[f"{kind}_share"] = share
        for c in np.flatnonzero(aligned >= 0):
            aligned_with[c].append(f"{kind}:{names[aligned[c]]}")
        summary[f"aligned_fraction_{kind}"] = round(float((aligned >= 0).mean()), 4)
        summary["coverage"][kind] = {names[t]: round(float(cover[t]), 4) for t in range(len(names))
                                     if np.isfinite(cover[t]) and cover[t] > 0}
    columns["aligned_with"] = pa.array(aligned_with, pa.list_(pa.string()))
    columns["aligned"] = [bool(a) for a in aligned_with]
    summary["aligned_fraction"] = round(float(np.mean(columns["aligned"])), 4)
    label, agrees = _label_agreement(inp, aligned_with)
    columns["label"], columns["label_agrees"] = pa.array(label, pa.string()), pa.array(agrees, pa.bool_())
    judged = [a for a in agrees if a is not None]
    summary["labelled_aligned"] = len(judged)
    summary["label_agreement"] = round(sum(judged) / len(judged), 4) if judged else None
    return {f"{folder(inp.layer, inp.k)}/align.parquet": pa.table(columns)}, summary


def _label_agreement(inp: LayerInputs, aligned_with: list[list[str]]) -> tuple[list, list]:
    """Labels of the default annotator and whether each names one of its concept's aligned tags."""
    if labelfiles.default_annotator(inp.store, inp.layer, inp.k) is None:
        return [None] * inp.k, [None] * inp.k
    table = labelfiles.concepts_with_labels(inp.store, inp.layer, inp.k)
    by_concept = dict(zip(table.column("concept").to_pylist(), table.column("label").to_pylist(), strict=True))
    labels = [by_concept.get(c) for c in range(inp.k)]
    agrees = []
    for c in range(inp.k):
        verdicts = [align.label_agrees(labels[c], t.split(":", 1)[1]) for t in aligned_with[c]]
        known = [v for v in verdicts if v is not None]
        agrees.append(any(known) if known else None)
    return labels, agrees


# ---- layers --------------------------------------------------------------------------------------
def next_layer(inp: LayerInputs, cfg: AnalyzeConfig) -> int | None:
    store = inp.store
    if cfg.next_layer is not None:
        return cfg.next_layer if cfg.next_layer != inp.layer else None
    later = [layer for layer in store.stored_layers() if layer > inp.layer and inp.k in clustered_ks(store, layer)]
    return min(later) if later else None


def assignments_key(inp: LayerInputs, cfg: AnalyzeConfig) -> Any:
    """The settings the next layer's assignments were made with (the cluster stage's state.json)."""
    from ..cluster.checkpoint import LayerDir

    return LayerDir(inp.store, next_layer(inp, cfg)).state.get(f"assignments_k{inp.k}.npy")


def run_layers(inp: LayerInputs, cfg: AnalyzeConfig) -> tuple[dict[str, pa.Table], dict[str, Any]]:
    other = next_layer(inp, cfg)
    assert other is not None
    b = read_assignments(inp.store, other, inp.k)
    if len(b) != len(inp.assignments):
        raise UserError(f"layers {inp.layer} and {other}: {len(inp.assignments)} vs {len(b)} tokens; re-run clustering")
    ia, ib, n = layers.contingency(inp.assignments, b, inp.k)
    m = layers.matches(inp.assignments, b, inp.k, inp.k, cfg.persist_share, cfg.split_share)
    where = layers_folder(inp.layer, other, inp.k)
    cont = pa.table({"concept": pa.array(ia, pa.int32()), "next_concept": pa.array(ib, pa.int32()),
                     "tokens": pa.array(n, pa.int64())})
    match = pa.table({"concept": pa.array(np.arange(inp.k), pa.int32()), "size": m["size"],
                      "best_match": m["best_match"], "shared": m["shared"], "forward": m["forward"],
                      "backward": m["backward"], "jaccard": m["jaccard"], "parts": m["parts"],
                      "fate": pa.array(m["fate"].tolist(), pa.string())})
    fates = {f: int((m["fate"] == f).sum()) for f in (layers.PERSISTS, layers.MERGES, layers.SPLITS, layers.SCATTERS)}
    summary = {"next_layer": other, "nonzero_pairs": len(n), "fates": fates, "jaccard": _quantiles(m["jaccard"]),
               "folder": inp.store.where(where)}
    return {f"{where}/matches.parquet": match, f"{where}/contingency.parquet": cont}, summary


# ---- stability -----------------------------------------------------------------------------------
def cluster_settings(store: RunStore):
    """The run's own cluster config (run.json), so the bootstrap reclusters the way the run did."""
    from ..cluster.config import ClusterConfig

    recorded = store.read_manifest().get("config", {}).get("cluster") or {}
    known = {f: v for f, v in recorded.items() if f in ClusterConfig.__dataclass_fields__}
    try:
        return ClusterConfig(**known)
    except TypeError as exc:
        raise UserError(f"{store.where('run.json')}: config.cluster: {exc}") from None


def _clusterer(store: RunStore, size: int) -> Callable[[np.ndarray, int], np.ndarray]:
    import dataclasses

    from ..cluster.approx import ward_tree
    from ..cluster.backend import resolve_backend
    from ..cluster.checkpoint import NoCheckpoint
    from ..cluster.source import ArraySource

    ccfg = cluster_settings(store)
    params = ccfg.approx_params()
    if params.micro > size:
        params = dataclasses.replace(params, micro=0)
    backend = resolve_backend(ccfg.device)
    exact = ccfg.method == "exact"

    def cluster(x: np.ndarray, k: int) -> np.ndarray:
        return ward_tree(ArraySource(x), [k], params, backend, NoCheckpoint(), exact=exact).assignments(k)

    return cluster


def run_stability(inp: LayerInputs, cfg: AnalyzeConfig) -> tuple[dict[str, pa.Table], dict[str, Any]]:
    from ..cluster.micro import sample_indices
    from ..cluster.source import read_rows

    n = len(inp.assignments)
    rows = sample_indices(n, min(cfg.stability_tokens, n), cfg.seed)
    if "vectors" in inp.__dict__:  # already in memory for the probes: no second read
        x = inp.vectors[rows].astype(np.float32)
    else:
        x = read_rows(inp.source, rows, inp.store.where(f"activations.zarr/layer_{inp.layer}"))
    size = max(inp.k, int(round(cfg.stability_fraction * len(rows))))
    bar = _bar(cfg.stability_replicates, f"stability layer {inp.layer}", "replicate", cfg)
    jac = stability.bootstrap(x, inp.assignments[rows], inp.k, _clusterer(inp.store, size), cfg.stability_replicates,
                              cfg.stability_fraction, cfg.seed, bar)
    bar.close()
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(np.where(np.isnan(jac).all(axis=0, keepdims=True), 0, jac), axis=0)
    mean[np.isnan(jac).all(axis=0)] = np.nan
    sampled = np.bincount(inp.assignments[rows], minlength=inp.k)
    table = pa.table({"concept": pa.array(np.arange(inp.k), pa.int32()),
                      "size": pa.array(np.bincount(inp.assignments, minlength=inp.k), pa.int64()),
                      "sampled": pa.array(sampled, pa.int64()), "stability": mean,
                      "replicates": pa.array(list(jac.T), pa.list_(pa.float64()))})
    finite = mean[np.isfinite(mean)]
    summary = {"tokens": len(rows), "replicates": cfg.stability_replicates, "fraction": cfg.stability_fraction,
               "method": cluster_settings(inp.store).method, "stability": _quantiles(mean),
               "share_at_least_0.5": round(float((finite >= 0.5).mean()), 4) if len(finite) else None,
               "share_at_least_0.8": round(float((finite >= 0.8).mean()), 4) if len(finite) else None}
    return {f"{folder(inp.layer, inp.k)}/stability.parquet": table}, summary


# ---- score ---------------------------------------------------------------------------------------
@dataclass
class _Prompt:
    annotator: str
    concept: int
    control: bool
    shown: list[score.Shown]


def score_annotators(inp: LayerInputs, cfg: AnalyzeConfig) -> list[str]:
    found = labelfiles.annotators(inp.store, inp.layer, inp.k)
    return [cfg.annotator] if cfg.annotator else found


def labelled(inp: LayerInputs, annotator: str) -> dict[int, str]:
    table = labelfiles.concepts_with_labels(inp.store, inp.layer, inp.k, annotator)
    return {int(c): lab for c, lab, st in zip(table.column("concept").to_pylist(), table.column("label").to_pylist(),
                                               table.column("label_status").to_pylist(), strict=True)
            if lab and st in ("ok", "truncated")}


def score_fingerprint(inp: LayerInputs, cfg: AnalyzeConfig) -> str:
    """What the scores depend on besides the settings: every scored annotator's labels."""
    h = hashlib.sha1()
    for name in score_annotators(inp, cfg):
        h.update(json.dumps([name, sorted(labelled(inp, name).items())]).encode())
    return h.hexdigest()[:16]


def _sentence_words(inp: LayerInputs, rows: set[int]) -> dict[int, str]:
    """Each shown row's sentence with its word marked."""
    tokens, store = inp.tokens, inp.store
    sid = tokens.column("sentence_id").to_numpy()
    pos = tokens.column("position").to_numpy()
    sentences = store.read_sentences()
    wanted = {int(sid[r]) for r in rows}
    text = {i: t for i, t in zip(sentences.column("sentence_id").to_pylist(), sentences.column("text").to_pylist(),
                                 strict=True) if i in wanted}
    return {r: score.marked(text[int(sid[r])].split(" "), int(pos[r])) for r in rows}


def run_score(inp: LayerInputs, cfg: AnalyzeConfig) -> tuple[dict[str, pa.Table], dict[str, Any]]:
    from .scoring import price, run_scorer

    annotators = score_annotators(inp, cfg)
    labels = {a: labelled(inp, a) for a in annotators}
    concepts = sorted(set().union(*labels.values()))
    if cfg.score_max_concepts and len(concepts) > cfg.score_max_concepts:
        pick = np.random.default_rng(cfg.seed).choice(len(concepts), cfg.score_max_concepts, replace=False)
        concepts = [concepts[i] for i in sorted(pick)]
    shown: dict[int, list[score.Shown]] = {}
    n = len(inp.assignments)
    for c in concepts:
        rng = np.random.default_rng([cfg.seed, c])
        hard = score.hard_pool(c, inp.parent, inp.centroids)
        shown[c] = score.choose(c, inp.members, n, inp.assignments, hard, cfg.score_members, cfg.score_nonmembers, rng)
    text = _sentence_words(inp, {s.row for items in shown.values() for s in items})
    prompts: list[tuple[_Prompt, list, list, int]] = []
    control_of: dict[tuple[str, int], int] = {}
    for a in annotators:
        mine = [c for c in concepts if c in labels[a]]
        perm = score.derangement(len(mine), np.random.default_rng([cfg.seed, 1]))
        for i, c in enumerate(mine):
            other = mine[perm[i]]
            control_of[(a, c)] = other
            for control, label in ((False, labels[a][c]), (True, labels[a][other])):
                items = shown[c]
                for lo in range(0, len(items), cfg.score_per_prompt):
                    chunk = items[lo:lo + cfg.score_per_prompt]
                    sents = [text[s.row] for s in chunk]
                    prompts.append((_Prompt(a, c, control, chunk), score.messages(label, sents),
                                    score.messages(label, sents, retry=True), len(chunk)))
    answers, usage = run_scorer(inp.store, cfg, [(p[1], p[2], p[3]) for p in prompts])
    rows, summary = _score_rows(inp, prompts, answers, labels, control_of, shown), {}
    cost = usage.cost(price(cfg))
    table = pa.Table.from_pylist(rows) if rows else pa.table({"annotator": pa.array([], pa.string()),
                                                              "concept": pa.array([], pa.int64())})
    for a in annotators:
        mine = [r for r in rows if r["annotator"] == a]
        real = _median(r["balanced_accuracy"] for r in mine)
        ctrl = _median(r["control_balanced_accuracy"] for r in mine)
        summary[a] = {"concepts": len(mine), "precision": _median(r["precision"] for r in mine),
                      "recall": _median(r["recall"] for r in mine), "f1": _median(r["f1"] for r in mine),
                      "balanced_accuracy": real, "control_balanced_accuracy": ctrl,
                      "margin_over_control": None if real is None or ctrl is None else round(real - ctrl, 4),
                      "unparsable_prompts": sum(r["unparsable"] for r in mine)}
    scored = max(len(rows), 1)
    summary["usage"] = {"model": cfg.scorer_model, "prompts": len(prompts), "calls": usage.calls,
                        "cached": usage.cached, "retries": usage.retries, "prompt_tokens": usage.prompt_tokens,
                        "completion_tokens": usage.completion_tokens, "cost_usd": cost,
                        "calls_per_concept": round(sum(r["calls"] for r in rows) / scored, 2),
                        "prompt_tokens_per_concept": round(sum(r["prompt_tokens"] for r in rows) / scored, 1)}
    return {f"{folder(inp.layer, inp.k)}/score.parquet": table}, summary


def _score_rows(inp: LayerInputs, prompts: list, answers: list, labels: dict, control_of: dict,
                shown: dict) -> list[dict[str, Any]]:
    acc: dict[tuple[str, int, bool], dict[str, list]] = {}
    for (p, *_), ans in zip(prompts, answers, strict=True):
        slot = acc.setdefault((p.annotator, p.concept, p.control), {"truth": [], "pred": [], "bad": 0, "calls": 0,
                                                                    "tokens": 0, "prompts": 0})
        slot["calls"] += ans.calls
        slot["tokens"] += ans.prompt_tokens
        slot["prompts"] += 1
        if ans.answers is None:
            slot["bad"] += 1
            continue
        slot["truth"] += [s.member for s in p.shown]
        slot["pred"] += ans.answers
    sizes = np.bincount(inp.assignments, minlength=inp.k)
    rows = []
    for (a, c), other in control_of.items():
        real, ctrl = acc[(a, c, False)], acc[(a, c, True)]
        m = score.metrics(np.array(real["truth"], bool), np.array(real["pred"], bool))
        mc = score.metrics(np.array(ctrl["truth"], bool), np.array(ctrl["pred"], bool))
        rows.append({"annotator": a, "concept": c, "size": int(sizes[c]), "label": labels[a][c],
                     "members_shown": sum(s.member for s in shown[c]),
                     "nonmembers_shown": sum(not s.member for s in shown[c]), "prompts": real["prompts"],
                     "unparsable": real["bad"], **m, "control_concept": other, "control_label": labels[a][other],
                     "control_unparsable": ctrl["bad"], **{f"control_{k}": v for k, v in mc.items()},
                     "calls": real["calls"] + ctrl["calls"], "prompt_tokens": real["tokens"] + ctrl["tokens"]})
    return rows


# ---- the steps -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[LayerInputs, AnalyzeConfig], tuple[dict[str, pa.Table], dict[str, Any]]]
    fields: tuple[str, ...]  # config fields its tables depend on
    missing: Callable[[LayerInputs, AnalyzeConfig], str | None]
    key: Callable[[LayerInputs, AnalyzeConfig], str]  # the table whose metadata records the settings
    extra: Callable[[LayerInputs, AnalyzeConfig], dict[str, Any]] = lambda inp, cfg: {}


def _needs_layer(inp: LayerInputs, cfg: AnalyzeConfig) -> str | None:
    if inp.layer not in inp.store.stored_layers():
        return f"no activations for layer {inp.layer} in {inp.store.where('activations.zarr')}"
    return None


def _needs_tokens(inp: LayerInputs, cfg: AnalyzeConfig) -> str | None:
    store = inp.store
    for key in ("tokens.parquet", "sentences.parquet"):
        if not store.has(key):
            return f"no {store.where(key)}"
    return None


def _needs_next(inp: LayerInputs, cfg: AnalyzeConfig) -> str | None:
    other = next_layer(inp, cfg)
    if other is None:
        return f"no later layer clustered at K={inp.k} (give --next-layer N)"
    if not has_assignments(inp.store, other, inp.k):
        return f"layer {other} has no clustering at K={inp.k}"
    return None


def _needs_scorer(inp: LayerInputs, cfg: AnalyzeConfig) -> str | None:
    if cfg.scorer_backend == "baseline":
        return ("no scorer LLM with --scorer-backend baseline (give --scorer-backend openai and "
                "--scorer-base-url/--scorer-model)")
    found = labelfiles.annotators(inp.store, inp.layer, inp.k)
    if not found:
        return f"no labels in {inp.store.where(labelfiles.folder(inp.layer, inp.k))}"
    if cfg.annotator and cfg.annotator not in found:
        return f"no labels of annotator {cfg.annotator!r} (known: {', '.join(found)})"
    return _needs_tokens(inp, cfg)


def _probe_key_of(inp: LayerInputs, cfg: AnalyzeConfig) -> dict[str, Any]:
    key = f"{folder(inp.layer, inp.k)}/probe.parquet"
    if not inp.store.has(key):
        return {"probe": None}
    meta = inp.store.read_parquet(key, ["concept"]).schema.metadata or {}
    return {"probe": (meta.get(SETTINGS_META) or b"").decode()}


SETTINGS_META = b"cluster_service.analysis_settings"
SUMMARY_META = b"cluster_service.analysis_summary"

STEPS: dict[str, Step] = {s.name: s for s in (
    Step("probe", run_probe, ("seed", "probe_epochs", "probe_batch", "probe_lr", "probe_l1", "probe_l2",
                              "probe_max_members"), _needs_layer,
         lambda inp, cfg: f"{folder(inp.layer, inp.k)}/probe.parquet"),
    Step("neurons", run_neurons, ("top_neurons",), _needs_layer,
         lambda inp, cfg: f"{folder(inp.layer, inp.k)}/neurons.parquet", _probe_key_of),
    Step("align", run_align, ("align_threshold",), _needs_tokens,
         lambda inp, cfg: f"{folder(inp.layer, inp.k)}/align.parquet",
         lambda inp, cfg: {"default_labels": labelfiles.default_annotator(inp.store, inp.layer, inp.k)}),
    Step("layers", run_layers, ("persist_share", "split_share"), _needs_next,
         lambda inp, cfg: f"{layers_folder(inp.layer, next_layer(inp, cfg), inp.k)}/matches.parquet",
         lambda inp, cfg: {"next": next_layer(inp, cfg), "next_assignments": assignments_key(inp, cfg)}),
    Step("stability", run_stability, ("seed", "stability_tokens", "stability_replicates", "stability_fraction"),
         _needs_layer, lambda inp, cfg: f"{folder(inp.layer, inp.k)}/stability.parquet",
         lambda inp, cfg: {"cluster": json.dumps(cluster_settings(inp.store).approx_params().__dict__, sort_keys=True),
                           "method": cluster_settings(inp.store).method}),
    Step("score", run_score, ("seed", "annotator", "score_members", "score_nonmembers", "score_per_prompt",
                              "score_max_concepts", "scorer_base_url", "scorer_model", "scorer_max_tokens"),
         _needs_scorer, lambda inp, cfg: f"{folder(inp.layer, inp.k)}/score.parquet",
         lambda inp, cfg: {"labels": score_fingerprint(inp, cfg)}),
)}
