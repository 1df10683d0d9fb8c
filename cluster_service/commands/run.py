"""`cluster-service run [RUN]`: every stage from one configuration, on embedded defaults if none given.

With no flags it fetches the demo corpus (WordNet example sentences), extracts vectors with the
packaged MiniLM on a local Ray, and prints where the results are. Each stage resumes, so rerunning
the same command after an interruption finishes the job without redoing finished work.
"""

from __future__ import annotations

import argparse
import json

from ..configs import add_dataclass_arguments, from_args, load_config_file
from ..corpus import CorpusConfig
from ..extract.config import ExtractConfig
from ..store import RunStore

DEMO_RUN = "runs/demo"
#: sentences of the demo corpus the default run uses: a few minutes end to end on a 2-core machine
DEMO_SENTENCES = 5000


def register(sub) -> None:
    p = sub.add_parser("run", help="run every stage (extract, cluster, annotate) from one configuration",
                       description=__doc__)
    p.add_argument("run", metavar="RUN", nargs="?", default=DEMO_RUN, help="run directory")
    p.add_argument("--config", metavar="FILE",
                   help="TOML or YAML file with [corpus], [extract] ... sections; flags override it")
    add_dataclass_arguments(p, CorpusConfig, prefix="corpus-")
    add_dataclass_arguments(p, ExtractConfig)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..extract.stage import run_extract
    from .info import summarize

    file_cfg = load_config_file(args.config)
    corpus_section = dict(file_cfg.get("corpus") or {})
    if not corpus_section.get("path") and not args.corpus_path:
        corpus_section.setdefault("max_sentences", DEMO_SENTENCES)
    corpus = from_args(CorpusConfig, args, corpus_section, prefix="corpus-", where="corpus")
    extract = from_args(ExtractConfig, args, file_cfg.get("extract"), where="extract")
    run_extract(args.run, corpus, extract)
    info = summarize(RunStore(args.run))
    print(json.dumps(info, indent=2))
    print(f"results: {RunStore(args.run).root.resolve()}")
    return 0
