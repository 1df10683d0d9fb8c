"""`cluster-service annotate RUN --layer L --k K`: label a concept table with an LLM or the baseline."""

from __future__ import annotations

import argparse
import json
from collections import Counter

from ..annotate.config import AnnotateConfig
from ..configs import add_dataclass_arguments, from_args, load_config_file
from ..store import RunStore


def register(sub) -> None:
    p = sub.add_parser(
        "annotate", help="label the concepts of one layer and K (LLM or offline baseline)",
        description=__doc__ + " Labels, their metadata and failure reasons are added to "
        "RUN/concepts/layer_L_kK.parquet; replies are cached in RUN/annotations.sqlite, "
        "so a rerun never repeats a call that succeeded.")
    p.add_argument("run", metavar="RUN", help="run directory or object-store URL")
    p.add_argument("--layer", type=int, required=True, help="layer of the concept table")
    p.add_argument("--k", type=int, required=True, help="number of concepts (K) of the concept table")
    p.add_argument("--config", default=None, help="TOML/YAML config file; its [annotate] section is used")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_dataclass_arguments(p, AnnotateConfig)
    p.set_defaults(func=main)


def _print_summary(summary: dict, store: RunStore, layer: int, k: int) -> None:
    if summary.get("dry_run"):
        cost = summary["est_cost_usd"]
        cost_text = "unknown (no price for this model; see --price-table)" if cost is None else f"${cost:.4f}"
        prompt, completion = summary.get("est_prompt_tokens", 0), summary.get("max_completion_tokens", 0)
        print(f"dry run ({summary['backend']}): {summary['concepts']} concepts, {summary['calls']} calls to "
              f"make, {summary['cached']} cached; estimated tokens {summary['est_tokens']} "
              f"({prompt} prompt + up to {completion} completion); estimated cost {cost_text}")
        if "note" in summary:
            print(summary["note"])
        return
    cost = summary["cost_usd"]
    print(f"annotate layer {layer} k {k} ({summary['backend']}, {summary['model']}): labelled "
          f"{summary['labelled']}/{summary['concepts']}, failed {summary['failed']}; "
          f"calls {summary['calls']} (retries {summary['retries']}), cached {summary['cached']}, "
          f"tokens {summary['tokens']}, cost "
          + ("unknown" if cost is None else f"${cost:.4f}"))
    if summary.get("is_baseline"):
        print("these are baseline labels (not an LLM): spaCy tags and token statistics")
    columns = ["concept", "label", "label_status", "label_error"]
    table = store.read_concepts(layer, k).select(columns).to_pylist()
    for row in table[:5]:
        print(f"  concept {row['concept']}: {row['label'] if row['label_status'] == 'ok' else '(failed)'}")
    reasons = Counter(r["label_error"] for r in table if r["label_status"] != "ok")
    for reason, n in reasons.most_common(3):
        print(f"  failed x{n}: {reason}")


def main(args: argparse.Namespace) -> int:
    from ..annotate.stage import annotate_run

    cfg = from_args(AnnotateConfig, args, load_config_file(args.config).get("annotate"),
                    where=args.config or "annotate")
    store = RunStore(args.run)
    summary = annotate_run(store, args.layer, args.k, cfg)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(summary, store, args.layer, args.k)
    return 0
