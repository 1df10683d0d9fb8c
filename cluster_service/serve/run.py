"""Starting and stopping the concept service: ``serve_run`` (the `serve` verb's entry, which blocks) and
``start``/``stop`` (what tests and the benchmark use around it).

The HTTP proxy binds ``cfg.host`` (127.0.0.1 unless asked otherwise) on ``cfg.port``. Ray is joined at
``cfg.address`` or started locally on loopback; a Ray this module started is shut down again by
``stop`` (with Serve), on one it joined only the application is deleted.
"""

from __future__ import annotations

import logging
import os
import time
import urllib.error
import urllib.request
from typing import Any

from ..errors import UserError
from ..logs import log_event
from .config import ServeConfig

log = logging.getLogger("cluster_service.serve")
_started_ray = False


def start(run: str, cfg: ServeConfig, timeout_s: float = 600.0) -> str:
    """Deploy the application of ``run`` and wait until /healthz answers; returns the API's base URL."""
    global _started_ray
    import ray
    from ray import serve

    from ..extract.ray_pool import init_ray
    from .app import application

    if not ray.is_initialized():
        init_ray(cfg.address)
        _started_ray = not cfg.address
    app = application(run, cfg)  # checks the run before any replica starts
    logging = {"enable_access_log": cfg.access_log}
    serve.start(http_options={"host": cfg.host, "port": cfg.port}, logging_config=logging)
    t0 = time.perf_counter()
    serve.run(app, name=cfg.app_name, route_prefix=cfg.route_prefix, blocking=False, logging_config=logging)
    url = f"http://{cfg.host}:{cfg.port}{cfg.route_prefix.rstrip('/')}"
    wait_healthy(url, timeout_s, headers=auth_header(cfg))
    log_event(log, "concept service ready", url=url, app=cfg.app_name, seconds=round(time.perf_counter() - t0, 1))
    return url


def auth_header(cfg: ServeConfig) -> dict[str, str]:
    """The header a client of this service sends (empty without an API key)."""
    key = os.environ.get(cfg.api_key_env, "") if cfg.api_key_env else ""
    return {"Authorization": f"Bearer {key}"} if key else {}


def wait_healthy(url: str, timeout_s: float, headers: dict[str, str] | None = None) -> None:
    """Poll GET /healthz (bounded) until it answers 200."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            req = urllib.request.Request(f"{url}/healthz", headers=headers or {})
            with urllib.request.urlopen(req, timeout=10) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.5)
    raise UserError(f"{url}/healthz: the service did not come up in {timeout_s:.0f} s ({last})")


def stop(app_name: str, shutdown_serve: bool = False) -> None:
    """Delete the application; shut Serve down too when asked or when ``start`` started Ray (then Ray as
    well). On a cluster that was joined, other Serve applications keep running."""
    global _started_ray
    import ray
    from ray import serve

    if not ray.is_initialized():
        return
    try:
        if shutdown_serve or _started_ray:
            serve.shutdown()
        else:
            serve.delete(app_name)
    finally:
        if _started_ray:
            ray.shutdown()
            _started_ray = False


def serve_run(run: str, cfg: ServeConfig) -> dict[str, Any]:
    """Serve ``run`` until Ctrl-C or SIGTERM; returns what was served. The signals only set a flag, so
    shutting down never starts inside a Ray call the signal interrupted."""
    import signal
    import threading

    stopping = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stopping.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        url = start(run, cfg)
    except BaseException:
        signal.signal(signal.SIGINT, previous[signal.SIGINT])
        signal.signal(signal.SIGTERM, previous[signal.SIGTERM])
        stop(cfg.app_name)
        raise
    print(f"serving {run} at {url} (POST {url}/v1/concepts, schema at {url}/docs); Ctrl-C stops", flush=True)
    try:
        stopping.wait()
        log_event(log, "concept service stopping", url=url)
    finally:
        stop(cfg.app_name)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return {"run": run, "url": url}
