"""`cluster-service run [RUN]`: every stage from one configuration, on embedded defaults if none given.

With no flags it fetches the demo corpus (WordNet example sentences, 3,000 sampled), extracts
every layer with the packaged MiniLM on a local Ray, clusters each layer into K=50 concepts with
approximate Ward, labels them with the offline baseline labeller, and prints where the results are.
Each stage resumes, so rerunning the same command after an interruption finishes the job without
redoing finished work. Stage flags are prefixed: --corpus-*, --cluster-*, --annotate-*; extract's
flags have no prefix.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from ..annotate.config import AnnotateConfig
from ..cluster.config import ClusterConfig
from ..configs import add_dataclass_arguments, load_config_file
from ..corpus import CorpusConfig
from ..extract.config import ExtractConfig
from ..store import RunStore

DEMO_RUN = "runs/demo"
SECTIONS = (("corpus", CorpusConfig, "corpus-"), ("extract", ExtractConfig, ""),
            ("cluster", ClusterConfig, "cluster-"), ("annotate", AnnotateConfig, "annotate-"))


def register(sub) -> None:
    p = sub.add_parser("run", help="run every stage (extract, cluster, annotate) from one configuration",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", nargs="?", default=DEMO_RUN,
                   help=f"run directory or object-store URL such as s3://bucket/prefix (default: {DEMO_RUN})")
    p.add_argument("--config", metavar="FILE",
                   help="TOML or YAML file with [corpus], [extract], [cluster], [annotate] sections; flags override it")
    p.add_argument("--stages", default=None, metavar="LIST",
                   help="stages to run, comma-separated (default: extract,cluster,annotate)")
    for _, cls, prefix in SECTIONS:
        add_dataclass_arguments(p, cls, prefix=prefix)
    p.set_defaults(func=main)


def sections_from_args(args: argparse.Namespace) -> dict:
    """Config-file sections with the flags the user passed laid over them."""
    sections = load_config_file(args.config)
    for name, cls, prefix in SECTIONS:
        merged = dict(sections.get(name) or {})
        for f in dataclasses.fields(cls):
            value = getattr(args, prefix.replace("-", "_") + f.name, None)
            if value is not None:
                merged[f.name] = value
        sections[name] = merged
    return sections


def main(args: argparse.Namespace) -> int:
    from ..pipeline import PipelineConfig, run_pipeline
    from .info import summarize

    stages = tuple(s.strip() for s in args.stages.split(",")) if args.stages else None
    cfg = PipelineConfig.from_sections(sections_from_args(args), stages)
    run_pipeline(args.run, cfg)
    store = RunStore(args.run)
    print(json.dumps(summarize(store), indent=2))
    print(f"results: {store.root.resolve() if store.is_local else store.where()}")
    return 0
