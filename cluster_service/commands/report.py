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

from ..report.config import ReportConfig
from ..store import RunStore
from .stage_verb import add_stage_verb, stage_config


def register(sub) -> None:
    p = add_stage_verb(sub, "report", "write the HTML concept browser of a run (RUN/report/index.html)",
                       __doc__, ReportConfig, "report")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..report.stage import report_run

    summary = report_run(RunStore(args.run), stage_config(args, ReportConfig, "report"))
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"report of {summary['tables']} concept tables ({summary['files']} files, "
              f"{summary['bytes'] / 1e6:.1f} MB): {summary['index']}")
    return 0
