"""`cluster-service submit CONFIG --address URL --run RUN`: every stage as one Ray job on a cluster.

Uploads the working directory (it must hold ray_jobs/pipeline.py; .gitignore'd files and .git are
left out) and runs `python ray_jobs/pipeline.py --config CONFIG RUN [FLAGS]` on the cluster, the same
code path as `cluster-service run`. RUN must be an absolute path that every Ray node mounts. The job
id goes to stdout; follow the job with `cluster-service logs JOB --follow` and `cluster-service status JOB`.
Flags after `--` are passed on to the pipeline (those of `cluster-service run`) and checked here first.
"""

from __future__ import annotations

import argparse
import logging
import shlex
from pathlib import Path

from ..errors import UserError
from ..logs import log_event

log = logging.getLogger("cluster_service.jobs")
SCRIPT = "ray_jobs/pipeline.py"


def register(sub) -> None:
    p = sub.add_parser("submit", help="run the pipeline as a Ray job on a cluster; prints the job id",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", metavar="CONFIG",
                   help="TOML/YAML job configuration, as for `cluster-service run --config`")
    p.add_argument("--address", default=None,
                   help="Ray dashboard address http://HOST:8265 (default: $RAY_API_SERVER_ADDRESS, else $RAY_ADDRESS)")
    p.add_argument("--run", required=True, metavar="RUN",
                   help="run store: an absolute path every Ray node mounts (shared filesystem)")
    p.add_argument("--working-dir", default=".", metavar="DIR",
                   help="directory uploaded as the job's working directory; must contain ray_jobs/ (default: .)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment variable for the job's driver and actors (repeatable)")
    p.add_argument("pipeline_args", nargs="*", metavar="FLAG",
                   help="after --: flags for ray_jobs/pipeline.py (those of `cluster-service run`)")
    p.set_defaults(func=main)


def entrypoint(config: str, run: str, pipeline_args: list[str]) -> str:
    return shlex.join(["python", SCRIPT, "--config", config, run, *pipeline_args])


def _config_for_job(config: Path, working_dir: Path) -> str:
    """The config as the job sees it: relative to its working directory when uploaded with it."""
    try:
        return config.resolve().relative_to(working_dir).as_posix()
    except ValueError:
        log_event(log, "config is outside the working directory: the head node must see it at this path",
                  level=logging.WARNING, config=str(config.resolve()))
        return str(config.resolve())


def _check_pipeline(config: str, run: str, pipeline_args: list[str]) -> None:
    """Parse and build the job's configuration here, so mistakes fail before anything is uploaded."""
    from ..cli import build_parser
    from .run import pipeline_config

    pipeline_config(build_parser().parse_args(["run", "--config", config, run, *pipeline_args]))


def _env_vars(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--env '{pair}': expected KEY=VALUE")
        env[key] = value
    return env


def main(args: argparse.Namespace) -> int:
    from ..jobs.client import job_client, user_errors
    from ..jobs.paths import shared_run_path

    run = shared_run_path(args.run, where="--run")
    working_dir = Path(args.working_dir).resolve()
    if not (working_dir / SCRIPT).is_file():
        raise UserError(f"--working-dir {working_dir}: no {SCRIPT} there; submit from the repository root "
                        "or point --working-dir at it")
    config = Path(args.config)
    _check_pipeline(str(config), run, args.pipeline_args)
    runtime_env = {"working_dir": str(working_dir), "excludes": [".git"], "env_vars": _env_vars(args.env)}
    client = job_client(args.address)
    command = entrypoint(_config_for_job(config, working_dir), run, args.pipeline_args)
    with user_errors(args.address or "ray"):
        job = client.submit_job(entrypoint=command, runtime_env=runtime_env,
                                metadata={"cluster_service_run": run})
    log_event(log, "job submitted", job=job, run=run, entrypoint=command)
    print(job)
    return 0
