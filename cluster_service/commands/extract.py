"""`cluster-service extract RUN`: corpus → word vectors at every requested layer, in the run store."""

from __future__ import annotations

import argparse
import json

from ..configs import add_dataclass_arguments, from_args, load_config_file
from ..corpus import CorpusConfig
from ..extract.config import ExtractConfig


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="run directory or object-store URL such as s3://bucket/prefix "
                        "(created if missing, resumed if it exists)")
    parser.add_argument("--config", metavar="FILE",
                        help="TOML or YAML file with [corpus], [extract], [cluster], [annotate] sections; "
                             "flags override it")


def register(sub) -> None:
    p = sub.add_parser("extract", help="compute word vectors into the run store (resumable)",
                       description=__doc__)
    add_common(p)
    add_dataclass_arguments(p, CorpusConfig, prefix="corpus-")
    add_dataclass_arguments(p, ExtractConfig)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..extract.stage import run_extract

    file_cfg = load_config_file(args.config)
    corpus = from_args(CorpusConfig, args, file_cfg.get("corpus"), prefix="corpus-", where="corpus")
    cfg = from_args(ExtractConfig, args, file_cfg.get("extract"), where="extract")
    summary = run_extract(args.run, corpus, cfg)
    print(json.dumps(summary))
    return 0
