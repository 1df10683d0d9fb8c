"""`cluster-service extract RUN`: word vectors at every requested layer, in the run store. A run with no
tokens table is ingested first from the --corpus-* flags (see `cluster-service ingest`)."""

from __future__ import annotations

import argparse
import json

from ..configs import add_dataclass_arguments, from_args, load_config_file
from ..corpus import CorpusConfig
from ..extract.config import ExtractConfig
from ..store import RunStore
from .ingest import add_run_and_config, corpus_config


def register(sub) -> None:
    p = sub.add_parser("extract", help="compute word vectors into the run store (resumable)",
                       description=__doc__)
    add_run_and_config(p)
    add_dataclass_arguments(p, CorpusConfig, prefix="corpus-")
    add_dataclass_arguments(p, ExtractConfig)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..corpus.stage import ingest_run
    from ..extract.stage import extract_check, extract_run

    corpus = corpus_config(args)
    file = load_config_file(args.config)
    cfg = from_args(ExtractConfig, args, file.section("extract"), where=file.where("extract"))
    extract_check(cfg)
    store = RunStore(args.run)
    ingest_run(store, corpus)
    print(json.dumps(extract_run(store, cfg)))
    return 0
