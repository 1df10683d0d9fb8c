"""`cluster-service run [RUN]`: every stage from one configuration, on embedded defaults if none given.

With no flags it fetches the demo corpus (WordNet example sentences, 3,000 sampled), extracts
every layer with the packaged MiniLM on a local Ray, clusters each layer into K=50 concepts with
approximate Ward, labels them with the offline baseline labeller, and prints where the results are.
Each stage resumes, so rerunning the same command after an interruption finishes the job without
redoing finished work. Stage flags are prefixed: --corpus-*, --cluster-*, --annotate-*; extract's
flags have no prefix. --models A,B runs every stage per model into sibling runs RUN/<model>/ after one
shared ingestion; --keep-activations frees each run's activations once its stages are done.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from ..analysis.config import AnalyzeConfig
from ..annotate.config import AnnotateConfig
from ..cluster.config import ClusterConfig
from ..configs import ConfigFile, add_dataclass_arguments, load_config_file
from ..corpus import CorpusConfig
from ..extract.config import ExtractConfig
from ..report.config import ReportConfig
from ..store import RunStore

DEMO_RUN = "runs/demo"
SECTIONS = (("corpus", CorpusConfig, "corpus-"), ("extract", ExtractConfig, ""),
            ("cluster", ClusterConfig, "cluster-"), ("annotate", AnnotateConfig, "annotate-"),
            ("analyze", AnalyzeConfig, "analyze-"), ("report", ReportConfig, "report-"))


def register(sub) -> None:
    p = sub.add_parser("run", help="run every stage (ingest, extract, cluster, annotate, report) from one config",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", nargs="?", default=DEMO_RUN,
                   help=f"run directory or object-store URL such as s3://bucket/prefix (default: {DEMO_RUN})")
    p.add_argument("--config", metavar="FILE",
                   help="TOML or YAML file with [corpus], [extract], [cluster], [annotate] sections; flags override it")
    p.add_argument("--stages", default=None, metavar="LIST",
                   help="stages to run, comma-separated, in any order (default: every stage; "
                        "extract brings ingest along)")
    for _, cls, prefix in SECTIONS:
        add_dataclass_arguments(p, cls, prefix=prefix)
    p.set_defaults(func=main)


def sections_from_args(args: argparse.Namespace) -> tuple[ConfigFile, dict[str, dict]]:
    """The config file's sections, and per section the flags the user passed (kept apart so that an
    error names the flag or the file it came from)."""
    flags = {}
    for name, cls, prefix in SECTIONS:
        given = {f.name: getattr(args, prefix.replace("-", "_") + f.name, None) for f in dataclasses.fields(cls)}
        flags[name] = {k: v for k, v in given.items() if v is not None}
    return load_config_file(args.config), flags


def pipeline_config(args: argparse.Namespace):
    from ..multi import check_models
    from ..pipeline import PipelineConfig

    stages = tuple(s.strip() for s in args.stages.split(",") if s.strip()) if args.stages else None
    file, flags = sections_from_args(args)
    cfg = PipelineConfig.from_sections(file, stages, flags)
    given = [src for src, sec in ((file.where("extract"), file.section("extract")), ("command line", flags["extract"]))
             if {"model", "models"} & set(sec)]
    check_models(cfg.configs["extract"].models, cfg.configs["extract"].model, " and ".join(given) or "[extract]")
    return cfg


def main(args: argparse.Namespace) -> int:
    from ..multi import run_job, run_name
    from .info import summarize

    cfg = pipeline_config(args)
    summary = run_job(args.run, cfg)
    store = RunStore(args.run)
    models = cfg.configs["extract"].models
    runs = [RunStore(store.where(run_name(m))) for m in models] or [store]
    print(json.dumps({r.where(): summarize(r) for r in runs} if models else summarize(store), indent=2))
    local = store.local_path()
    print(f"results: {local.resolve() if local else store.where()}")
    if "report" in summary:  # one model's report, or the index across the models' reports
        print(f"report: {summary['report']['index']}")
    return 0
