"""`cluster-service analyze RUN [--layer L] [--k K] [--steps ...]`: interpret the concepts of a run: probes
with selectivity, neuron ranking, tagger alignment, concepts across layers, stability and label scoring
(every layer with a concept table at its largest K when no layer or K is given)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..analysis.config import AnalyzeConfig
from ..store import RunStore
from .stage_verb import add_stage_verb, stage_config


def register(sub) -> None:
    p = add_stage_verb(
        sub, "analyze", "interpret concepts: probes, neurons, tagger alignment, layers, stability, label scores",
        __doc__ + " Tables go to RUN/analysis/layer_L_kK/STEP.parquet (one row per concept) with a summary.json; "
        "concepts across layers to RUN/analysis/layers_L_N_kK/. A rerun skips every step whose table is current.",
        AnalyzeConfig, "analyze")
    p.set_defaults(func=main)


def _fmt(q: Any) -> str:
    if isinstance(q, dict):
        return "median " + ("-" if q.get("median") is None else f"{q['median']:.3f}")
    return str(q)


def print_summary(summary: dict[str, Any]) -> None:
    """The tables of the issue, one block per layer and K."""
    steps = summary["steps"]
    print(f"layer {summary['layer']} k {summary['k']} (layer reads: {summary.get('layer_reads', 0)})")
    for name, s in steps.items():
        if "skipped" in s:
            print(f"  {name}: skipped: {s['skipped']}")
        elif name == "probe":
            print(f"  probe: test accuracy {_fmt(s['accuracy'])}, control {_fmt(s['control_accuracy'])}, "
                  f"selectivity {_fmt(s['selectivity'])} ({s['concepts']} concepts)")
        elif name == "neurons":
            print(f"  neurons: top-{s['top_n']} overlap with super-concept {_fmt(s['parent_overlap'])}"
                  + (f", Probeless vs probe weights {_fmt(s['probeless_probe_overlap'])}"
                     if "probeless_probe_overlap" in s else ""))
        elif name == "align":
            print(f"  align: aligned fraction {s['aligned_fraction']:.3f} (pos {s['aligned_fraction_pos']:.3f}, "
                  f"tag {s['aligned_fraction_tag']:.3f}, ent {s['aligned_fraction_ent']:.3f}), label agreement "
                  f"{s['label_agreement']} over {s['labelled_aligned']} labelled aligned concepts")
        elif name == "layers":
            print(f"  layers: vs layer {s['next_layer']}: {s['fates']}, best-match Jaccard {_fmt(s['jaccard'])}")
        elif name == "stability":
            print(f"  stability: {_fmt(s['stability'])} over {s['replicates']} x {s['fraction']:.0%} of "
                  f"{s['tokens']} tokens; share >= 0.5: {s['share_at_least_0.5']}")
        elif name == "score":
            for annotator, a in s.items():
                if annotator == "usage":
                    continue
                print(f"  score [{annotator}]: {a['concepts']} concepts, balanced accuracy "
                      f"{a['balanced_accuracy']}, F1 {a['f1']}, shuffled-label control {a['control_balanced_accuracy']}"
                      f" (margin {a['margin_over_control']}), unparsable prompts {a['unparsable_prompts']}")
            u = s["usage"]
            cost = "unknown" if u["cost_usd"] is None else f"${u['cost_usd']:.4f}"
            print(f"  score usage: {u['calls']} calls ({u['cached']} cached), {u['prompt_tokens']} prompt LLM "
                  f"tokens, cost {cost}")


def main(args: argparse.Namespace) -> int:
    from ..analysis.stage import analyze_run

    summaries = analyze_run(RunStore(args.run), stage_config(args, AnalyzeConfig, "analyze"))
    if args.json:
        print(json.dumps(summaries, indent=1, default=float))
        return 0
    for summary in summaries.values():
        print_summary(summary)
    return 0
