"""`cluster-service export RUN --format tcn|parquet|jsonl [--out DIR]`: publish a run's concepts.

tcn: the layout of the paper's Transformers ConceptNet (sentences.json, layer{L}/clusters-{K}.txt,
layer{L}/annotations.json), readable by its viewer unchanged; parquet / jsonl: concepts, tokens and
sentences tables with a README.md data card. Writes only under --out (default RUN/export/FORMAT/).
"""

from __future__ import annotations

import argparse
import json

from ..configs import add_dataclass_arguments, from_args, load_config_file
from ..export.config import ExportConfig
from ..store import RunStore
from .annotate import int_list


def register(sub) -> None:
    p = sub.add_parser("export", help="publish the concepts as TCN, Parquet or JSONL (with a data card)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", help="run directory or object-store URL")
    p.add_argument("--layer", dest="layers", type=int_list, default=None, metavar="L[,L...]", help="alias of --layers")
    p.add_argument("--config", default=None, help="TOML/YAML file; its [export] section sets defaults")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_dataclass_arguments(p, ExportConfig)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..export import export_run

    file = load_config_file(args.config)
    cfg = from_args(ExportConfig, args, file.section("export"), where=file.where("export"))
    summary = export_run(RunStore(args.run), cfg)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"exported {', '.join(summary['tables'])} as {summary['format']}: {summary['out']}")
    for copy in summary.get("viewer_copies", []):
        print(f"  {copy}: a copy for the TCN viewer, which opens clusters-600.txt whatever K was")
    for note in summary.get("notes", []):
        print(f"  note: {note}")
    return 0
