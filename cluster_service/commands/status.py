"""`cluster-service status JOB --address URL`: a submitted job's state (PENDING, RUNNING, SUCCEEDED ...).

Exit code 0 while the job is pending or running and when it succeeded, 1 when it failed or was
stopped, so scripts can branch on it; --wait blocks until the job ends.
"""

from __future__ import annotations

import argparse
import time

FAILED = ("FAILED", "STOPPED")


def register(sub) -> None:
    p = sub.add_parser("status", help="state of a job started with `cluster-service submit`",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("job", metavar="JOB", help="job id printed by `cluster-service submit`")
    p.add_argument("--address", default=None,
                   help="Ray dashboard address http://HOST:8265 (default: $RAY_API_SERVER_ADDRESS, else $RAY_ADDRESS)")
    p.add_argument("--wait", action="store_true", help="poll until the job has ended")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..jobs.client import job_client, user_errors

    client = job_client(args.address)
    with user_errors(args.address or "ray"):
        info = client.get_job_info(args.job)
        while args.wait and not info.status.is_terminal():
            time.sleep(1.0)
            info = client.get_job_info(args.job)
    status = str(info.status.value)
    print(f"{args.job} {status}" + (f" {info.message}" if info.message else ""))
    return 1 if status in FAILED else 0
