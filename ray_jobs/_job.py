"""What every job entry point shares: check the run path, join the job's cluster, run a CLI verb.

RUN is an object-store URL (s3://bucket/prefix) or a path; inside a job a path must be absolute (see
cluster_service.jobs.paths).

Inside a submitted job Ray sets RAY_ADDRESS to the cluster the job was submitted to; joining it here,
before the verb runs, makes extraction's actors and clustering's tasks use that cluster (the stages
reuse an initialised Ray) instead of starting a private one on the head node.
"""

from __future__ import annotations

import argparse
import os
import sys

from cluster_service.cli import build_parser, main
from cluster_service.errors import UserError
from cluster_service.jobs.paths import in_ray_job, shared_run_path


def parse(verb: str, argv: list[str]) -> argparse.Namespace:
    """The verb's own parser: a job script takes exactly the flags of `cluster-service VERB`."""
    return build_parser().parse_args([verb, *argv])


def run_job(verb: str, argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(verb, argv)
    try:
        shared_run_path(args.run, absolute=in_ray_job())
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if in_ray_job():
        import ray

        ray.init(address=os.environ["RAY_ADDRESS"])
    return main([verb, *argv])
