"""Several hosts for real: the pipeline job on a three-host Ray cluster, and a host lost mid-job.

The hosts are Linux network namespaces on a private bridge (``cluster_service.testing.hosts``): each
has its own address, port space, /tmp and /dev/shm, and runs one Ray node bound to that address (the
head with the job server on h0, workers on h1 and h2, token authentication on). The run store is an
S3 server (moto's) on the test subnet's gateway address, reached by every host with the AWS_*
variables a node's credentials would give it. Jobs go in through `cluster-service submit`, as a
user's would; where things ran is read from Ray's state API, and every store is compared object by
object with the same configuration run on one host.

Skipped, with the reason, where network namespaces cannot be made (not root, no iproute2).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster_service.testing.hosts import HostsUnavailable, RayHosts, TestHosts

pytestmark = [pytest.mark.multihost, pytest.mark.acceptance]

REPO = Path(__file__).resolve().parents[1]
BUCKET = "multihost"  # moto keeps one in-process state for every server: not the S3 tests' bucket
#: a tiny job: ~2,600 tokens of the demo corpus in shards of 64 rows (many small units, so a host can
#: be lost between them), three extraction actors of one CPU each on three one-CPU hosts (no spare
#: capacity: a lost host's actor has nowhere to restart), 100 k-means micro-clusters (so that
#: assignment runs as Ray tasks) and the baseline labeller
JOB = """stages = ["extract", "cluster", "annotate"]

[corpus]
path = "corpus.txt"

[extract]
layers = [0, 6]
shard_rows = 64
chunk_rows = 64
workers = 3
cpus_per_worker = 1

[cluster]
k = [5]
micro = 100

[annotate]
backend = "baseline"
progress = false
"""
SENTENCES = 300
#: written by the job or made by a run as it goes: their bytes name when or where, not what
VOLATILE = {"run.json"}


@pytest.fixture(scope="module")
def hosts():
    try:
        made = TestHosts(3)
    except HostsUnavailable as exc:
        print(f"multihost tests skipped: {exc}", file=sys.stderr)
        pytest.skip(f"network namespaces unavailable: {exc}")
    try:
        yield made
    finally:
        made.close()
        assert not made.leftovers(), made.leftovers()


@pytest.fixture(scope="module")
def s3(hosts):
    """A moto S3 server on the gateway address, one bucket; the AWS_* environment of every node."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # not a line per request
    server = ThreadedMotoServer(ip_address=hosts.gateway, port=0, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{hosts.gateway}:{server.get_host_and_port()[1]}"}
    try:
        with pytest.MonkeyPatch.context() as mp:
            for name, value in env.items():
                mp.setenv(name, value)
            mp.delenv("AWS_PROFILE", raising=False)
            import s3fs

            s3fs.S3FileSystem.clear_instance_cache()
            fs = s3fs.S3FileSystem()
            fs.mkdir(BUCKET)
            yield env, fs
            s3fs.S3FileSystem.clear_instance_cache()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def cluster(hosts, s3):
    env, _ = s3
    ray = RayHosts(hosts, env={**env, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    yield ray
    # hosts.close() stops every process of every host


@pytest.fixture(scope="module")
def jobdir(tmp_path_factory) -> Path:
    """The job's working directory: the code (as the repository would be uploaded), its config and its
    corpus. Hosts do not see this machine's /tmp, so whatever the job reads travels with it."""
    from cluster_service.demo import fetch_demo_corpus

    root = tmp_path_factory.mktemp("jobdir")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("cluster_service", "ray_jobs"):
        shutil.copytree(REPO / package, root / package, ignore=ignore)
    lines = fetch_demo_corpus().read_text().splitlines()[:SENTENCES]
    (root / "corpus.txt").write_text("\n".join(lines) + "\n")
    (root / "job.toml").write_text(JOB)
    return root


def client_env(token: str | None) -> dict[str, str]:
    """A user's shell on this machine: the cluster's token and nothing else of Ray's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
    if token:
        env["RAY_AUTH_TOKEN"] = token
    return env


def cs(*args: str, env: dict[str, str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cluster_service.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def submit(cluster: RayHosts, jobdir: Path, url: str) -> str:
    out = cs("submit", "job.toml", "--address", cluster.address, "--run", url, "--working-dir", str(jobdir),
             env=client_env(cluster.token), cwd=jobdir)
    assert out.returncode == 0, out.stderr[-3000:]
    job = out.stdout.strip()
    assert job.startswith("raysubmit_"), out.stdout
    return job


def wait_job(cluster: RayHosts, jobdir: Path, job: str, timeout: float = 300) -> tuple[str, str]:
    """The job's final status and its driver log."""
    env = client_env(cluster.token)
    status = cs("status", job, "--address", cluster.address, "--wait", env=env, cwd=jobdir, timeout=timeout)
    logs = cs("logs", job, "--address", cluster.address, env=env, cwd=jobdir, timeout=60)
    return status.stdout.split()[1] if len(status.stdout.split()) > 1 else status.stderr, logs.stdout


def objects(fs, prefix: str) -> dict[str, bytes]:
    """Every object of a run store, by key relative to the run."""
    root = f"{BUCKET}/{prefix}"
    fs.invalidate_cache()  # listings made while the job ran are stale
    return {key[len(root) + 1:]: fs.cat_file(key) for key in fs.find(root)}


def assert_same_store(fs, a: str, b: str) -> None:
    """Object for object, byte for byte (run.json: the same but for timestamps)."""
    ours, theirs = objects(fs, a), objects(fs, b)
    assert sorted(ours) == sorted(theirs), set(ours) ^ set(theirs)
    differ = sorted(k for k in ours if k not in VOLATILE and ours[k] != theirs[k])
    assert not differ, f"{len(differ)} objects differ, e.g. {differ[:5]}"
    assert len(ours) > 50, sorted(ours)  # shards of two layers, markers, trees, concepts, labels


@pytest.fixture(scope="module")
def onehost(s3, jobdir) -> str:
    """The same job file run on one host (this machine, `cluster-service run` with its local engine)."""
    env, _ = s3
    out = cs("run", "--config", "job.toml", f"s3://{BUCKET}/onehost", "--engine", "local",
             env={**client_env(None), **env, "HF_HUB_OFFLINE": "1"}, cwd=jobdir)
    assert out.returncode == 0, out.stderr[-3000:]
    return "onehost"


def hosts_of(cluster: RayHosts, rows: list[dict]) -> set[str]:
    return {cluster.host_of_node(r["node_id"]) for r in rows if r.get("node_id")}


def test_pipeline_job_spreads_over_hosts_and_equals_a_one_host_run(cluster, s3, jobdir, onehost):
    env, fs = s3
    t0 = time.time()
    job = submit(cluster, jobdir, f"s3://{BUCKET}/spread")
    status, log = wait_job(cluster, jobdir, job)
    assert status == "SUCCEEDED", log[-3000:] + cluster.logs()
    assert "pipeline done" in log
    seconds = time.time() - t0
    job_id = cluster.job_id(job)
    actors = cluster.actors(class_name="ExtractWorker", job_id=job_id)
    assert len(actors) == 3, actors
    assert len(hosts_of(cluster, actors)) >= 2, [(a["node_id"], a["state"]) for a in actors]
    deadline = time.time() + 30  # task events reach the state API a little after the tasks end
    while True:
        tasks = [t for t in cluster.tasks(name="assign_shard", job_id=job_id) if t["state"] == "FINISHED"]
        if len(hosts_of(cluster, tasks)) >= 2 or time.time() > deadline:
            break
        time.sleep(1)
    assert len(hosts_of(cluster, tasks)) >= 2, [(t["node_id"], t["state"]) for t in tasks]
    assert_same_store(fs, "spread", onehost)
    lost = [line for line in log.splitlines() if "extraction actor lost" in line]
    print(f"spread job: {seconds:.0f} s; actors on {sorted(hosts_of(cluster, actors))}, "
          f"{len(tasks)} assignment tasks on {sorted(hosts_of(cluster, tasks))}; actors given up: {lost}")


def done_shards(fs, prefix: str) -> int:
    try:
        return len(fs.ls(f"{BUCKET}/{prefix}/extract_done", refresh=True))
    except FileNotFoundError:
        return 0


def test_a_host_lost_mid_extraction_leaves_the_same_store(cluster, hosts, s3, jobdir, onehost):
    """A worker host running an extraction actor disappears (link down, every process SIGKILLed, its
    raylet included) while shards are being written; Ray declares its node dead, but the actor has no
    host with a free CPU to restart on. The pool gives it up once the others run out of work and hands
    its shards to them, so the job finishes on the hosts left (had it failed, the job submitted again
    would have to resume from the store), and the store equals the one-host run object for object."""
    _, fs = s3
    job = submit(cluster, jobdir, f"s3://{BUCKET}/lost")
    deadline, victim = time.time() + 240, None
    while time.time() < deadline:
        done = done_shards(fs, "lost")
        on = {cluster.host_of_node(a["node_id"]) for a in cluster.actors(class_name="ExtractWorker", state="ALIVE")}
        workers = sorted(on & {h.name for h in cluster.workers})
        if done >= 2 and workers:
            victim = hosts.host(workers[0])
            break
        time.sleep(0.2)
    assert victim is not None, "extraction never had an actor on a worker host with shards done"
    victim_node = next(n["node_id"] for n in cluster.alive_nodes() if n["node_ip"] == victim.ip)
    killed = hosts.lose(victim)
    total = json.loads(fs.cat_file(f"{BUCKET}/lost/run.json"))["shards"]
    at_loss = done_shards(fs, "lost")
    assert killed and at_loss < total, f"the loss must land mid-extraction ({at_loss}/{total} shards)"
    assert not hosts.running(victim)
    cluster.wait_node_dead(victim)

    status, log = wait_job(cluster, jobdir, job)
    resubmitted = status != "SUCCEEDED"
    if resubmitted:  # Ray could not finish the job without the host: the store must let it resume
        status, log = wait_job(cluster, jobdir, submit(cluster, jobdir, f"s3://{BUCKET}/lost"))
        plan = re.search(r"extract plan shards=(\d+) done=(\d+)", log)
        assert plan and int(plan.group(2)) >= at_loss, log[-3000:]
    assert status == "SUCCEEDED", log[-3000:] + cluster.logs()
    assert resubmitted or "extraction actor lost" in log, log[-3000:]
    assert_same_store(fs, "lost", onehost)
    actors = cluster.actors(class_name="ExtractWorker", job_id=cluster.job_id(job))
    print(f"lost {victim.name} (node {victim_node[:8]}, {len(killed)} processes) at {at_loss}/{total} shards; "
          f"{'resubmitted' if resubmitted else 'the same job finished'}; actors last on "
          f"{sorted(hosts_of(cluster, actors))}")
