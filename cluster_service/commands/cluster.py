"""`cluster-service cluster RUN`: Ward trees per layer, cut at each K, concept tables in the store."""

from __future__ import annotations

import argparse
import json

from ..cluster.config import ClusterConfig
from ..configs import add_dataclass_arguments, from_args, load_config_file
from ..store import RunStore


def register(sub) -> None:
    p = sub.add_parser("cluster", help="cluster stored activations into concepts (approximate or exact Ward)",
                       description=__doc__)
    p.add_argument("run", metavar="RUN", help="run directory or object-store URL (made by `cluster-service extract`)")
    p.add_argument("--config", default=None, help="TOML/YAML file; its [cluster] section sets defaults")
    p.add_argument("--layer", dest="layers", type=lambda s: [int(x) for x in s.split(",") if x.strip()],
                   default=None, metavar="L[,L...]", help="alias of --layers")
    add_dataclass_arguments(p, ClusterConfig)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..cluster.stage import cluster_run

    file = load_config_file(args.config)
    cfg = from_args(ClusterConfig, args, file.section("cluster"), where=file.where("cluster"))
    summary = cluster_run(RunStore(args.run), cfg)
    print(json.dumps(summary, indent=1, default=float))
    return 0
