"""`cluster-service annotate RUN [--layer L] [--k K]`: label concept tables with an LLM or the baseline
(every concept table of the run when no layer or K is given)."""

from __future__ import annotations

import argparse
import json
from collections import Counter

from ..annotate import labels
from ..annotate.config import AnnotateConfig
from ..configs import add_dataclass_arguments, field_docs, from_args, load_config_file
from ..errors import UserError
from ..store import RunStore
from .stage_verb import int_list


def register(sub) -> None:
    p = sub.add_parser(
        "annotate", help="label the concepts of one layer and K (LLM or offline baseline)",
        description=__doc__ + " Labels, their metadata and failure reasons go to "
        "RUN/labels/layer_L_kK/ANNOTATOR.parquet (ANNOTATOR: 'baseline' or BACKEND-MODEL-PROMPT), beside other "
        "annotators' labels; RUN/labels/layer_L_kK/default.json names the one readers get, the last that "
        "labelled every concept. Replies are cached in RUN/annotations.sqlite, so a rerun never repeats a call "
        "that succeeded and retries only the concepts that failed. Exit status 1 when any concept failed.")
    p.add_argument("run", metavar="RUN", help="run directory or object-store URL")
    p.add_argument("--layer", dest="layers", type=int_list, default=None, metavar="L[,L...]",
                   help="alias of --layers")
    p.add_argument("--k", type=int_list, default=None, metavar="K[,K...]", help=field_docs(AnnotateConfig)["k"]
                   + " (default: all)")
    p.add_argument("--config", default=None, help="TOML/YAML config file; its [annotate] section is used")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--set-default", metavar="NAME", default=None,
                   help="make annotator NAME's labels the default of this layer and K, and label nothing")
    add_dataclass_arguments(p, AnnotateConfig, skip=("k",))
    p.set_defaults(func=main)



def _print_summary(summary: dict, store: RunStore, layer: int, k: int) -> None:
    if summary.get("dry_run"):
        cost = summary["est_cost_usd"]
        cost_text = "unknown (no price for this model; see --price-table)" if cost is None else f"${cost:.4f}"
        prompt, completion = summary.get("est_prompt_tokens", 0), summary.get("max_completion_tokens", 0)
        print(f"dry run ({summary['backend']}): {summary['concepts']} concepts, {summary['calls']} calls to "
              f"make, {summary['cached']} cached; estimated LLM tokens {summary['est_llm_tokens']} "
              f"({prompt} prompt + up to {completion} completion); estimated cost {cost_text}")
        if "note" in summary:
            print(summary["note"])
        return
    cost = summary["cost_usd"]
    print(f"annotate layer {layer} k {k} ({summary['annotator']}, {summary['model']}): labelled "
          f"{summary['labelled']}/{summary['concepts']}, truncated {summary['truncated']}, failed "
          f"{summary['failed']}; calls {summary['calls']} (retries {summary['retries']}), cached "
          f"{summary['cached']}, LLM tokens {summary['llm_tokens']}, cost "
          + ("unknown" if cost is None else f"${cost:.4f}"))
    if summary.get("is_baseline"):
        print("these are baseline labels (not an LLM): spaCy tags and token statistics")
    columns = ["concept", "label", "label_status", "label_error"]
    table = labels.concepts_with_labels(store, layer, k, summary["annotator"]).select(columns).to_pylist()
    for row in table[:5]:
        print(f"  concept {row['concept']}: {row['label'] if row['label_status'] != 'failed' else '(failed)'}")
    reasons = Counter(r["label_error"] for r in table if r["label_status"] != "ok")
    for reason, n in reasons.most_common(3):
        print(f"  not clean x{n}: {reason}")
    print(f"labels: {summary['labels_file']}")


def main(args: argparse.Namespace) -> int:
    from ..annotate.stage import AnnotationFailed, annotate_run

    store = RunStore(args.run)
    if args.set_default:
        if len(args.layers or []) != 1 or len(args.k or []) != 1:
            raise UserError("--set-default: give exactly one --layer and one --k")
        (layer,), (k,) = args.layers, args.k
        labels.set_default(store, layer, k, args.set_default)
        print(f"default labels of layer {layer} k {k}: {args.set_default}")
        return 0
    file = load_config_file(args.config)
    cfg = from_args(AnnotateConfig, args, file.section("annotate"), where=file.where("annotate"))
    try:
        summaries = annotate_run(store, cfg)
    except AnnotationFailed as exc:
        _report(exc.summary, args.json, store)
        raise
    _report(summaries, args.json, store)
    return 0


#: A dry run over more tables than this prints only its total (--json has every table).
DRY_RUN_TABLE_LINES = 10


def _report(summaries: dict, as_json: bool, store: RunStore) -> None:
    from ..annotate.stage import TOTAL

    if as_json:
        print(json.dumps(summaries, indent=2))
        return
    total = summaries.get(TOTAL)
    tables = {name: s for name, s in summaries.items() if name != TOTAL}
    for name, summary in tables.items():
        if total is not None and len(tables) > DRY_RUN_TABLE_LINES:
            break
        layer, k = (int(part) for part in name.removeprefix("layer_").split("_k"))
        if summary.get("dry_run"):
            print(f"layer {layer} k {k}: ", end="")
        _print_summary(summary, store, layer, k)
    if total is not None:
        _print_total(total)


def _print_total(total: dict) -> None:
    cost = total["est_cost_usd"]
    cost_text = "unknown (no price for this model; see --price-table)" if cost is None else f"${cost:.2f}"
    hierarchy = (f"; {total['hierarchy_prompts']} short prompts from children's labels, "
                 f"{total['copied_from_child']} copied from an only child" if total["hierarchy_prompts"]
                 or total["copied_from_child"] else "")
    print(f"dry run total ({total['backend']}{', ' + total['model'] if total['model'] else ''}): "
          f"{total['tables']} tables, {total['concepts']} concepts, {total['calls']} calls to make, "
          f"{total['cached']} cached{hierarchy}; estimated LLM tokens {total['est_llm_tokens']} "
          f"({total['est_prompt_tokens']} prompt + up to {total['max_completion_tokens']} completion); "
          f"estimated cost {cost_text}; about {total['est_minutes_at_limits']} min at the --rpm/--tpm limits "
          f"({total['binding_limit']} binds)")
