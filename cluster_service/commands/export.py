"""`cluster-service export RUN --format tcn|parquet|jsonl [--out DIR]`: publish a run's concepts.

tcn: the layout of the paper's Transformers ConceptNet (sentences.json, layer{L}/clusters-{K}.txt,
layer{L}/annotations.json), readable by its viewer unchanged; parquet / jsonl: concepts, tokens and
sentences tables with a README.md data card. Writes only under --out (default RUN/export/FORMAT/).
"""

from __future__ import annotations

import argparse
import json

from ..export.config import ExportConfig
from ..store import RunStore
from .stage_verb import add_stage_verb, stage_config


def register(sub) -> None:
    p = add_stage_verb(sub, "export", "publish the concepts as TCN, Parquet or JSONL (with a data card)",
                       __doc__, ExportConfig, "export")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..export import export_run

    summary = export_run(RunStore(args.run), stage_config(args, ExportConfig, "export"))
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"exported {', '.join(summary['tables'])} as {summary['format']}: {summary['out']}")
    for copy in summary.get("viewer_copies", []):
        print(f"  {copy}: a copy for the TCN viewer, which opens clusters-600.txt whatever K was")
    for note in summary.get("notes", []):
        print(f"  note: {note}")
    return 0
