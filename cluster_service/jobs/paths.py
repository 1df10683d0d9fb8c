"""Where a job's run store may live: a POSIX path every Ray node mounts at the same place.

A job's driver runs in a temporary copy of the working directory on the head node and its actors run
on other nodes, so a relative RUN would scatter the store over throw-away directories. Object-store
URLs (s3://, gs:// ...) need done-markers written after data instead of atomic renames; the store does
not do that yet, so they are refused rather than silently written to a local folder named 's3:'.
"""

from __future__ import annotations

import os
import re

from ..errors import UserError

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def in_ray_job() -> bool:
    """True in the driver of a submitted Ray job (Ray sets RAY_ADDRESS there to the job's cluster)."""
    return bool(os.environ.get("RAY_ADDRESS"))


def shared_run_path(run: str, *, where: str = "RUN", absolute: bool = True) -> str:
    """``run`` if it is a POSIX path (absolute unless ``absolute`` is False); a user error otherwise."""
    if _URL.match(run):
        raise UserError(f"{where} '{run}': object-store and other URLs are not supported yet; give a "
                        "shared POSIX path that every Ray node mounts (NFS, EFS, Filestore, a ReadWriteMany volume)")
    if absolute and not os.path.isabs(run):
        raise UserError(f"{where} '{run}': a job's run store must be an absolute path on a filesystem every "
                        "Ray node mounts; a relative path would land in the job's temporary working directory")
    return run
