"""The ``cluster-service`` command: one verb per stage (extract, cluster, annotate, run, info ...)."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .errors import StageFailed, UserError

#: Verb modules under cluster_service.commands, in the order --help lists them (``import_`` holds the
#: verb ``import``, a Python keyword).
VERBS = ("ingest", "extract", "cluster", "annotate", "analyze", "report", "export", "import_", "run", "info",
         "serve", "concepts", "submit", "status", "logs")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cluster-service",
        description="Find the latent concepts a language model has learned and name them. "
        "Stages write into one run directory (the run store); each verb resumes where it stopped.",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="verbosity of the structured log on stderr (default: INFO)")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb in VERBS:
        importlib.import_module(f"cluster_service.commands.{verb}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .logs import setup_logging

    setup_logging(args.log_level)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except StageFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        logging.getLogger("cluster_service").warning("interrupted; rerun the same command to resume")
        return 130


if __name__ == "__main__":
    sys.exit(main())
