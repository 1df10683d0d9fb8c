"""Several test hosts on one machine: Linux network namespaces on a private bridge, a Ray node in each.

A real multi-node Ray cluster needs machines; these are the next best thing that a test (root, Linux,
iproute2) can build and tear down by itself. Each host is a network namespace with its own loopback,
its own port space and one address in a private subnet (198.18.X.0/24, the range set aside for network
tests, RFC 2544); the hosts meet on a bridge that lives in a namespace of its own, and one veth gives
this machine's root namespace an address on the same subnet (the "gateway": the test process, the S3
server it runs and the `cluster-service submit` client talk to the hosts through it). Nothing else is
routed: traffic stays between these namespaces.

Processes of a host are started with ``ip netns exec``, so every process a Ray node forks (raylet,
workers, actors, the job driver) belongs to that namespace and ``ip netns pids`` finds them all: that
is how a host is lost on purpose (``TestHosts.lose``) and how teardown leaves nothing behind.

Names carry the owning test process's pid (``cst-<pid>-h0``, the root link ``cst-<pid>``), so a later
run can tell leftovers of a crashed run (their pid is gone) from those of a run still going, and
removes only the former (``clean_stale``). Teardown runs from ``close()`` (use the context manager),
and from ``atexit`` should the test process end without it. Every wait here is bounded.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

PREFIX = "cst-"
_NAME = re.compile(r"^cst-(\d+)(?:-|$)")
IP = shutil.which("ip") or "/usr/sbin/ip"


class HostsUnavailable(RuntimeError):
    """This machine cannot make network namespaces (not root, no iproute2, no CAP_NET_ADMIN ...)."""


def _ip(*args: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess:
    out = subprocess.run([IP, *args], capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {out.stderr.strip() or out.stdout.strip()}")
    return out


def namespaces_unavailable() -> str | None:
    """Why network namespaces cannot be made here, or None when they can (tried for real, then removed)."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux (this is {sys.platform})"
    if not Path(IP).exists():
        return "iproute2's `ip` is not installed (apt-get install iproute2)"
    probe = f"{PREFIX}{os.getpid()}-probe"
    try:
        made = _ip("netns", "add", probe, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`ip netns add` failed: {exc}"
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip() or 'exit ' + str(made.returncode)} (needs root)"
    link = _ip("-n", probe, "link", "add", "v0", "type", "veth", "peer", "name", "v1", check=False)
    _ip("netns", "del", probe, check=False)
    if link.returncode != 0:
        return f"veth pairs cannot be made: {link.stderr.strip()}"
    return None


def _owner_alive(pid: int) -> bool:
    return pid == os.getpid() or _running(pid)


def _kill_netns_processes(netns: list[str], grace_s: float = 3.0) -> None:
    """SIGTERM, then SIGKILL, every process of the namespaces ``netns``; returns once they are gone
    (bounded by twice ``grace_s``)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = [pid for name in netns for pid in netns_pids(name)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.time() + grace_s
        while pids and time.time() < deadline:
            pids = [p for p in pids if _running(p)]
            time.sleep(0.1)
        if not pids:
            return


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def netns_pids(netns: str) -> list[int]:
    """Every process whose network namespace is ``netns``."""
    out = _ip("netns", "pids", netns, check=False)
    return [int(p) for p in out.stdout.split() if p.isdigit()] if out.returncode == 0 else []


def clean_stale() -> list[str]:
    """Remove namespaces, links and temporary folders left by a test process that no longer runs."""
    removed = []
    listed = _ip("netns", "list", check=False).stdout.split("\n")
    for line in listed:
        name = line.split(" ")[0]
        match = _NAME.match(name)
        if match and not _owner_alive(int(match.group(1))):
            _kill_netns_processes([name])
            _ip("netns", "del", name, check=False)
            removed.append(name)
    for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        match = _NAME.match(name)
        if match and not _owner_alive(int(match.group(1))):
            _ip("link", "del", name, check=False)
            removed.append(name)
    for folder in Path(tempfile.gettempdir()).glob(f"{PREFIX}*"):
        match = _NAME.match(folder.name)
        if match and not _owner_alive(int(match.group(1))):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(str(folder))
    return removed


def _free_subnet() -> int:
    """A third octet X such that nothing on this machine uses 198.18.X.0/24 (start from our pid, so
    two test processes at once pick different ones)."""
    used = _ip("-4", "-o", "addr", "show", check=False).stdout + _ip("-4", "route", "show", check=False).stdout
    start = os.getpid() % 250
    for i in range(250):
        x = (start + i) % 250 + 1
        if f"198.18.{x}." not in used:
            return x
    raise HostsUnavailable("no free /24 left in 198.18.0.0/16")


@dataclass
class Host:
    """One test host: its name, its namespace and its address on the test subnet."""

    name: str
    netns: str
    ip: str
    root: Path
    """This machine's folder that is the host's /tmp (the host sees only its own)."""

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"


class TestHosts:
    """``n`` hosts on a private bridge, and a gateway address in this (root) namespace.

    Use as a context manager; ``close()`` is idempotent and also runs at interpreter exit.
    """

    __test__ = False  # not a pytest class

    def __init__(self, n: int = 3) -> None:
        reason = namespaces_unavailable()
        if reason:
            raise HostsUnavailable(reason)
        clean_stale()
        self.tag = f"{PREFIX}{os.getpid()}"
        self.switch = f"{self.tag}-sw"
        self.root_link = self.tag
        x = _free_subnet()
        self.subnet = f"198.18.{x}.0/24"
        self.gateway = f"198.18.{x}.1"
        self.hosts = [Host(f"h{i}", f"{self.tag}-h{i}", f"198.18.{x}.{10 + i}",
                           Path(tempfile.gettempdir()) / f"{self.tag}-h{i}") for i in range(n)]
        self.procs: list[subprocess.Popen] = []
        self._closed = False
        atexit.register(self.close)
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        _ip("netns", "add", self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        _ip("link", "add", self.root_link, "type", "veth", "peer", "name", "uplink", "netns", self.switch)
        _ip("-n", self.switch, "link", "set", "uplink", "master", "br0", "up")
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.root_link)
        _ip("link", "set", self.root_link, "up")
        for host in self.hosts:
            (host.tmp / "home").mkdir(parents=True)
            _ip("netns", "add", host.netns)
            _ip("-n", self.switch, "link", "add", host.name, "type", "veth", "peer", "name", "eth0",
                "netns", host.netns)
            _ip("-n", self.switch, "link", "set", host.name, "master", "br0", "up")
            _ip("-n", host.netns, "link", "set", "lo", "up")
            _ip("-n", host.netns, "addr", "add", f"{host.ip}/24", "dev", "eth0")
            _ip("-n", host.netns, "link", "set", "eth0", "up")

    def __enter__(self) -> TestHosts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def host(self, name: str) -> Host:
        return next(h for h in self.hosts if h.name == name)

    def host_of_ip(self, ip: str) -> Host | None:
        return next((h for h in self.hosts if h.ip == ip), None)

    @staticmethod
    def inside(host: Host, argv: list[str]) -> list[str]:
        """``argv`` run in ``host``: its network namespace, and a mount namespace of its own where /tmp is
        the host's folder and /dev/shm a fresh tmpfs, so hosts share no scratch space (as machines do
        not) and ``$HOME`` (/tmp/home) is per host. The rest of the filesystem (the installed code, as
        on a node's image) is this machine's."""
        mounts = (f"mount --bind {shlex.quote(str(host.tmp))} /tmp && "
                  "mount -t tmpfs -o size=1g,mode=1777 shm /dev/shm && exec \"$@\"")
        return [IP, "netns", "exec", host.netns, "sh", "-c", mounts, "sh", *argv]

    def env(self, env: dict[str, str]) -> dict[str, str]:
        return {**env, "HOME": "/tmp/home", "TMPDIR": "/tmp"}

    def popen(self, host: Host, argv: list[str], *, env: dict[str, str], log: Path) -> subprocess.Popen:
        """Start ``argv`` inside ``host`` (its output appended to ``log``, a path of this machine)."""
        with open(log, "ab") as out:
            proc = subprocess.Popen(self.inside(host, argv), env=self.env(env), stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(proc)
        return proc

    def run(self, host: Host, argv: list[str], *, env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
        """Run ``argv`` inside ``host`` to completion."""
        return subprocess.run(self.inside(host, argv), env=self.env(env if env is not None else dict(os.environ)),
                              capture_output=True, text=True, timeout=timeout)

    def pids(self, host: Host) -> list[int]:
        return netns_pids(host.netns)

    def lose(self, host: Host) -> list[int]:
        """The host disappears: its link goes down (no goodbye reaches the others), then every one of
        its processes is SIGKILLed. Returns the pids killed."""
        _ip("-n", host.netns, "link", "set", "eth0", "down", check=False)
        pids = self.pids(host)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.time() + 10
        while time.time() < deadline and any(_running(p) for p in pids):
            time.sleep(0.05)
        for proc in self.procs:
            proc.poll()  # reap the `ray start` we launched there
        return pids

    def running(self, host: Host) -> list[int]:
        """The processes of ``host`` that still run (not zombies)."""
        return [p for p in self.pids(host) if _running(p)]

    def close(self) -> None:
        """Stop every process of every host, remove the namespaces and links (bounded; idempotent)."""
        if self._closed:
            return
        self._closed = True
        _kill_netns_processes([host.netns for host in self.hosts])
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        for host in self.hosts:
            _ip("netns", "del", host.netns, check=False)
        _ip("link", "del", self.root_link, check=False)
        _ip("netns", "del", self.switch, check=False)
        for folder in Path(tempfile.gettempdir()).glob(f"{self.tag}-*"):
            shutil.rmtree(folder, ignore_errors=True)
        deadline = time.time() + 10  # links of deleted namespaces go away asynchronously
        while time.time() < deadline and self.leftovers():
            time.sleep(0.1)
        atexit.unregister(self.close)

    def leftovers(self) -> list[str]:
        """Namespaces and root links of this instance that still exist (empty after close)."""
        names = [line.split(" ")[0] for line in _ip("netns", "list", check=False).stdout.splitlines()]
        links = _ip("-o", "link", "show", check=False).stdout
        return ([n for n in names if n.startswith(self.tag + "-")]
                + ([self.root_link] if re.search(rf":\s{re.escape(self.root_link)}[@:]", links) else []))


class RayHosts:
    """A Ray cluster on ``TestHosts``: the head (with the job server) on the first host, a worker on each
    other, every node bound to its host's address with token authentication on.

    ``env`` is what each node's processes get besides Ray's settings (a node's credentials, e.g. the
    AWS_* variables of an S3 store). The head is told to declare a silent node dead after a few seconds.
    """

    DASHBOARD_PORT = 8265
    GCS_PORT = 6379

    def __init__(self, hosts: TestHosts, *, env: dict[str, str], cpus: tuple[int, ...] = (1, 1, 1),
                 wait_s: float = 180) -> None:
        self.hosts = hosts
        self.token = secrets.token_hex(16)
        self.head = hosts.hosts[0]
        self.workers = hosts.hosts[1:]
        self.address = f"http://{self.head.ip}:{self.DASHBOARD_PORT}"
        base = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
        base.update(env, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token, RAY_USAGE_STATS_ENABLED="0",
                    # a lost host is declared dead after ~5 s of silence rather than Ray's ~30 s
                    RAY_health_check_initial_delay_ms="1000", RAY_health_check_period_ms="1000",
                    RAY_health_check_timeout_ms="1000", RAY_health_check_failure_threshold="4")
        self.env = base
        ray = str(Path(sys.executable).with_name("ray"))
        common = ["--block", "--num-gpus=0", "--disable-usage-stats", f"--object-store-memory={200 << 20}"]
        self._start(self.head, [ray, "start", "--head", f"--port={self.GCS_PORT}", f"--node-ip-address={self.head.ip}",
                                "--include-dashboard=true", f"--dashboard-host={self.head.ip}",
                                f"--dashboard-port={self.DASHBOARD_PORT}", f"--num-cpus={cpus[0]}", *common])
        self.wait_nodes(1, wait_s)
        for host, n in zip(self.workers, cpus[1:], strict=True):
            self._start(host, [ray, "start", f"--address={self.head.ip}:{self.GCS_PORT}",
                               f"--node-ip-address={host.ip}", f"--num-cpus={n}", *common])
        self.wait_nodes(len(hosts.hosts), wait_s)

    def _start(self, host: Host, argv: list[str]) -> None:
        # Ray's temp dir is its default /tmp/ray, inside the host's own /tmp
        self.hosts.popen(host, argv, env=self.env, log=host.root / "ray_start.log")

    def log_tail(self, host: Host, chars: int = 3000) -> str:
        path = host.root / "ray_start.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def logs(self, chars: int = 3000) -> str:
        """The end of every node's `ray start` output and raylet log: what to print when a test fails."""
        out = []
        for host in self.hosts.hosts:
            out.append(f"--- {host.name} ray start\n{self.log_tail(host, chars)}")
            for raylet in sorted(host.tmp.glob("ray/session_latest/logs/raylet.out"))[:1]:
                out.append(f"--- {host.name} raylet\n{raylet.read_text(errors='replace')[-chars:]}")
        return "\n".join(out)

    # ---- the state API, over the dashboard's HTTP endpoints with the cluster's token
    def api(self, path: str, timeout: float = 10) -> Any:
        request = urllib.request.Request(self.address + path, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return json.loads(reply.read())

    def _state(self, kind: str, **filters: str) -> list[dict]:
        query = "&".join(f"filter_keys={k}&filter_predicates=%3D&filter_values={v}" for k, v in filters.items())
        out = self.api(f"/api/v0/{kind}?limit=10000&detail=1&{query}")
        return out["data"]["result"]["result"]

    def nodes(self) -> list[dict]:
        return self._state("nodes")

    def actors(self, **filters: str) -> list[dict]:
        return self._state("actors", **filters)

    def tasks(self, **filters: str) -> list[dict]:
        return self._state("tasks", **filters)

    def job_id(self, submission_id: str) -> str:
        return self.api(f"/api/jobs/{submission_id}")["job_id"]

    def host_of_node(self, node_id: str) -> str:
        """The test host (h0, h1 ...) a Ray node id runs on."""
        ip = next(n["node_ip"] for n in self.nodes() if n["node_id"] == node_id)
        host = self.hosts.host_of_ip(ip)
        if host is None:
            raise AssertionError(f"node {node_id} has address {ip}, not one of the test hosts")
        return host.name

    def alive_nodes(self) -> list[dict]:
        return [n for n in self.nodes() if n["state"] == "ALIVE"]

    def wait_nodes(self, n: int, timeout_s: float) -> None:
        """Until ``n`` nodes are alive (bounded); a node that exited fails at once with its log."""
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            for proc in self.hosts.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"`ray start` exited with {proc.returncode}:\n{self.logs()}")
            try:
                if len(self.alive_nodes()) >= n:
                    return
            except (OSError, urllib.error.URLError, KeyError, ValueError):
                pass  # the dashboard is not up yet
            time.sleep(1)
        raise RuntimeError(f"fewer than {n} Ray nodes alive after {timeout_s:.0f} s")

    def wait_node_dead(self, host: Host, timeout_s: float = 60) -> None:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if not any(n["node_ip"] == host.ip and n["state"] == "ALIVE" for n in self.nodes()):
                return
            time.sleep(0.5)
        raise AssertionError(f"Ray still reports {host.name}'s node alive {timeout_s:.0f} s after it was lost")
