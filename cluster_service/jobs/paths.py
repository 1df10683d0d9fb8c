"""Where a run store may live: a POSIX path every node mounts at the same place, or an object-store URL.

A job's driver runs in a temporary copy of the working directory on the head node and its actors run
on other nodes, so a relative RUN would scatter the store over throw-away directories. An fsspec URL
(s3://bucket/prefix, gs://, az:// ...) is reached by every process through its own credentials (the
provider's standard chain: AWS_* variables including AWS_ENDPOINT_URL, instance roles ...), so it is
accepted wherever the scheme's package is installed. URLs that name no shared place are refused:
``memory://`` lives inside one process (Ray workers are other processes) and ``file://`` is a local
path in disguise, so it is asked for as a path. An unknown scheme or a missing package is refused
here, before anything is written, rather than becoming a local folder named 's3:'.
"""

from __future__ import annotations

import os
import re

from ..errors import UserError

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def in_ray_job() -> bool:
    """True in the driver of a submitted Ray job (Ray sets RAY_ADDRESS there to the job's cluster)."""
    return bool(os.environ.get("RAY_ADDRESS"))


def url_scheme(run: str) -> str | None:
    """The URL scheme of ``run`` ('s3'), or None for a plain path."""
    match = _URL.match(run)
    return match.group(1).lower() if match else None


def check_url(run: str, where: str = "RUN") -> None:
    """Refuse a URL whose scheme fsspec does not know, whose package is missing, or that is not shared."""
    import fsspec
    from fsspec.implementations.local import LocalFileSystem
    from fsspec.implementations.memory import MemoryFileSystem
    from fsspec.registry import known_implementations

    scheme = url_scheme(run)
    try:
        cls = fsspec.get_filesystem_class(scheme)
    except ValueError:
        raise UserError(f"{where} '{run}': unknown URL scheme '{scheme}'; give an absolute path or an object-store "
                        "URL fsspec knows (s3://, gs://, az:// ...)") from None
    except ImportError as exc:
        package = known_implementations.get(scheme, {}).get("class", "").split(".")[0] or "its fsspec package"
        raise UserError(f"{where} '{run}': the '{scheme}' scheme needs a package that is not installed "
                        f"({exc}); pip install {package}") from None
    if issubclass(cls, MemoryFileSystem):
        raise UserError(f"{where} '{run}': a memory:// store lives inside one process and workers are other "
                        "processes; give a shared path or an object-store URL")
    if issubclass(cls, LocalFileSystem):
        raise UserError(f"{where} '{run}': give the local path itself, not a {scheme}:// URL")


def shared_run_path(run: str, *, where: str = "RUN", absolute: bool = True) -> str:
    """``run`` if it is an object-store URL fsspec can open, or a POSIX path (absolute unless ``absolute``
    is False); a user error otherwise."""
    if url_scheme(run) is not None:
        check_url(run, where)
        return run
    if absolute and not os.path.isabs(run):
        raise UserError(f"{where} '{run}': a job's run store must be an absolute path on a filesystem every "
                        "Ray node mounts, or an object-store URL; a relative path would land in the job's "
                        "temporary working directory")
    return run
