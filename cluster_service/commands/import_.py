"""`cluster-service import TCN_DIR RUN`: read a TCN / ConceptX folder (sentences.json,
layer{L}/clusters-{K}.txt, layer{L}/annotations.json when present) into a new run store, without
activations: the clustering can then be labelled (`annotate`), reported and exported again. The map and
hierarchy views say they are absent (ConceptX files hold no centroids and no tree).
"""

from __future__ import annotations

import argparse
import json

from ..store import RunStore


def register(sub) -> None:
    p = sub.add_parser("import", help="read TCN / ConceptX cluster files (and annotations) into a run store",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", metavar="TCN_DIR", help="folder with sentences.json and layer{L}/clusters-{K}.txt")
    p.add_argument("run", metavar="RUN", help="run directory or object-store URL to create")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..export.importer import import_tcn

    summary = import_tcn(args.source, RunStore(args.run))
    if args.json:
        print(json.dumps(summary, indent=2))
    elif summary["imported"]:
        print(f"imported {summary['tokens']} tokens, {summary['sentences']} sentences, tables "
              f"{', '.join(summary['tables'])} into {summary['run']}")
    else:
        print(f"{summary['run']}: already imported from this folder; nothing to do")
    return 0
