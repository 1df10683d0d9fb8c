"""`cluster-service report RUN`: a static HTML concept browser under RUN/report/ (open index.html from
disk: no server, no network). The concept list of every layer and K (labels of every annotator, type,
size, top words, analysis scores when `analyze` has run; sortable, searchable by label and word), a page
per concept (top word types, examples in context, parent and children in the tree, analysis), a 2-D map
of each layer's concepts, the flow between layers when the `layers` analysis exists, and the run page
(model, corpus, configs, stage timings, LLM cost). Rerunning rewrites only what changed.
"""

from __future__ import annotations

import argparse
import json

from ..configs import add_dataclass_arguments, from_args, load_config_file
from ..report.config import ReportConfig
from ..store import RunStore
from .annotate import int_list


def register(sub) -> None:
    p = sub.add_parser("report", help="write the HTML concept browser of a run (RUN/report/index.html)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", help="run directory or object-store URL")
    p.add_argument("--layer", dest="layers", type=int_list, default=None, metavar="L[,L...]", help="alias of --layers")
    p.add_argument("--config", default=None, help="TOML/YAML file; its [report] section sets defaults")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_dataclass_arguments(p, ReportConfig)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..report.stage import report_run

    file = load_config_file(args.config)
    cfg = from_args(ReportConfig, args, file.section("report"), where=file.where("report"))
    summary = report_run(RunStore(args.run), cfg)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"report of {summary['tables']} concept tables ({summary['files']} files, "
              f"{summary['bytes'] / 1e6:.1f} MB): {summary['index']}")
    return 0
