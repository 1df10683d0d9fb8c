"""`cluster-service logs JOB --address URL [--follow]`: a submitted job's driver log.

With --follow, streams the log until the job ends and exits 0 only if it succeeded.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from .status import FAILED


def register(sub) -> None:
    p = sub.add_parser("logs", help="log of a job started with `cluster-service submit`",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("job", metavar="JOB", help="job id printed by `cluster-service submit`")
    p.add_argument("--address", default=None,
                   help="Ray dashboard address http://HOST:8265 (default: $RAY_API_SERVER_ADDRESS, else $RAY_ADDRESS)")
    p.add_argument("--follow", "-f", action="store_true", help="stream the log until the job ends")
    p.set_defaults(func=main)


async def _follow(client, job: str) -> None:
    async for lines in client.tail_job_logs(job):
        sys.stdout.write(lines)
        sys.stdout.flush()


def main(args: argparse.Namespace) -> int:
    from ..jobs.client import job_client, user_errors

    client = job_client(args.address)
    with user_errors(args.address or "ray"):
        if not args.follow:
            sys.stdout.write(client.get_job_logs(args.job))
            return 0
        client.get_job_info(args.job)  # an unknown job is an error here, not an empty stream
        asyncio.run(_follow(client, args.job))
        status = str(client.get_job_status(args.job).value)
    print(f"{args.job} {status}", file=sys.stderr)
    return 1 if status in FAILED else 0
