"""`cluster-service ingest RUN`: a corpus file → the run's sentences and tokens tables (word-tokenized,
ConceptX-filtered). `extract` runs this first on its own when the run has no tokens table yet."""

from __future__ import annotations

import argparse
import json

from ..configs import add_dataclass_arguments, from_args, load_config_file
from ..corpus import CorpusConfig
from ..store import RunStore


def add_run_and_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="run directory or object-store URL such as s3://bucket/prefix "
                        "(created if missing, resumed if it exists)")
    parser.add_argument("--config", metavar="FILE",
                        help="TOML or YAML file with [corpus], [extract], [cluster], [annotate] sections; "
                             "flags override it")


def register(sub) -> None:
    p = sub.add_parser("ingest", help="read, word-tokenize and filter a corpus into the run store",
                       description=__doc__)
    add_run_and_config(p)
    add_dataclass_arguments(p, CorpusConfig, prefix="corpus-")
    p.set_defaults(func=main)


def corpus_config(args: argparse.Namespace) -> CorpusConfig:
    from ..pipeline import SECTIONS

    file = load_config_file(args.config)
    file.check_sections(SECTIONS)
    return from_args(CorpusConfig, args, file.section("corpus"), prefix="corpus-", where=file.where("corpus"))


def main(args: argparse.Namespace) -> int:
    from ..corpus.stage import ingest_run

    print(json.dumps(ingest_run(RunStore(args.run), corpus_config(args))))
    return 0
