"""Ray jobs end to end: a real `ray start --head` on loopback, the pipeline submitted with
`cluster-service submit`, followed with `logs --follow` and `status`, and an extraction actor killed
mid-job. The head is this module's own (own ports, own --temp-dir, token auth on) and is stopped by
killing the processes it started, never with `ray stop`, which would stop every Ray on the machine.
"""

from __future__ import annotations

import importlib.util
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import psutil
import pytest

from cluster_service.annotate.labels import concepts_with_labels
from cluster_service.commands.submit import _config_for_job, entrypoint
from cluster_service.errors import UserError
from cluster_service.jobs.paths import shared_run_path
from cluster_service.store import RunStore

REPO = Path(__file__).resolve().parents[1]
WORDS = "alpha beta gamma delta river mountain quickly slowly London Paris walked running".split()


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class Head:
    """A Ray head of our own, reachable at ``address`` with token ``token``."""

    def __init__(self) -> None:
        self.token = secrets.token_hex(16)
        self.temp_dir = tempfile.mkdtemp(prefix="rjh", dir="/tmp")  # short: Ray's socket paths have a limit
        gcs, dash, client, nm, om, agent, agent_grpc, renv, metrics = free_ports(9)
        self.address = f"http://127.0.0.1:{dash}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token, RAY_USAGE_STATS_ENABLED="0")
        cmd = [shutil.which("ray") or str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
               f"--port={gcs}", "--node-ip-address=127.0.0.1", "--include-dashboard=true",
               "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
               f"--node-manager-port={nm}", f"--object-manager-port={om}",
               f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
               f"--runtime-env-agent-port={renv}", f"--metrics-export-port={metrics}",
               "--num-cpus=2", "--num-gpus=0", f"--temp-dir={self.temp_dir}", "--disable-usage-stats"]
        self.log = open(Path(self.temp_dir) / "ray_start.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_up(dash)

    def _wait_up(self, port: int) -> None:
        deadline = time.time() + 90
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited: {(Path(self.temp_dir) / 'ray_start.log').read_text()}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/version", timeout=2)
                return
            except urllib.error.HTTPError:
                return  # up, and asking for a token
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("the Ray dashboard did not come up in 90 s")

    def processes(self) -> list[psutil.Process]:
        """Everything this head started: the `ray start` process and its descendants."""
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> None:
        procs = self.processes()
        for p in procs:
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=5)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        self.log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def head():
    h = Head()
    yield h
    h.stop()


def client_env(token: str | None) -> dict[str, str]:
    """The user's shell: no RAY_AUTH_MODE (our client must switch token mode on itself)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    if token is not None:
        env["RAY_AUTH_TOKEN"] = token
    return env


def cs(*args: str, token: str | None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cluster_service.cli", *args], env=client_env(token), cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def write_job(tmp_path: Path, n_sentences: int) -> Path:
    rng = np.random.default_rng(0)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(WORDS, size=int(rng.integers(4, 12))))
                                for _ in range(n_sentences)) + "\n")
    config = tmp_path / "job.toml"
    config.write_text(f'[corpus]\npath = "{corpus}"\n\n[extract]\nlayers = [0, 6]\nshard_rows = 128\n'
                      'chunk_rows = 64\n\n[cluster]\nk = [5]\n\n[annotate]\nbackend = "baseline"\nprogress = false\n')
    return config


def submit(head: Head, config: Path, run: Path) -> str:
    out = cs("submit", str(config), "--address", head.address, "--run", str(run), "--env", "HF_HUB_OFFLINE=1",
             token=head.token)
    assert out.returncode == 0, out.stderr
    job = out.stdout.strip()
    assert job.startswith("raysubmit_"), out.stdout
    return job


def follow(head: Head, job: str) -> str:
    logs = cs("logs", job, "--address", head.address, "--follow", token=head.token)
    status = cs("status", job, "--address", head.address, token=head.token)
    assert logs.returncode == 0 and status.returncode == 0, logs.stdout[-3000:] + logs.stderr[-2000:]
    assert status.stdout.split()[:2] == [job, "SUCCEEDED"], status.stdout
    return logs.stdout


def stored_concepts(run: Path) -> dict:
    store = RunStore(run)
    out = {f"layer_{layer}": np.asarray(store.layer_array(layer)[:]) for layer in store.read_manifest()["layers"]}
    out["tokens"] = store.read_tokens().to_pydict()
    for layer in (0, 6):
        table = concepts_with_labels(store, layer, 5)
        out[f"concepts_{layer}"] = table.select([c for c in table.column_names if c != "label_raw"]).to_pydict()
    return out


@pytest.fixture(scope="module")
def reference_job(head, tmp_path_factory):
    """One uninterrupted pipeline job on 400 sentences: the store every other job is compared with."""
    tmp = tmp_path_factory.mktemp("job_ref")
    config, run = write_job(tmp, 400), tmp / "run"
    log = follow(head, submit(head, config, run))
    return config, run, log


@pytest.mark.acceptance
def test_pipeline_job_succeeds_and_fills_the_store(reference_job):
    _, run, log = reference_job
    assert "pipeline done" in log
    assert "Started a local Ray instance" not in log  # the job joined the cluster it was submitted to
    stages = RunStore(run).read_manifest()["stages"]
    assert stages["extract"]["status"] == "done"
    for layer in (0, 6):
        assert stages[f"cluster:layer_{layer}"]["status"] == "done"
        table = concepts_with_labels(RunStore(run), layer, 5)
        assert table.num_rows == 5
        labels = table.column("label").to_pylist()
        assert all(isinstance(label, str) and label for label in labels), labels
    assert any(name.startswith("annotate") and entry["status"] == "done" for name, entry in stages.items())


def wait_for_shards(run: Path, n: int) -> int:
    """Poll the store until at least ``n`` shards are durable; the count seen."""
    done_dir = RunStore(run).local_path("extract_done")
    deadline = time.time() + 180
    while time.time() < deadline:
        done = len(list(done_dir.glob("shard_*"))) if done_dir.is_dir() else 0
        if done >= n:
            return done
        time.sleep(0.02)
    raise AssertionError(f"fewer than {n} shards done in 180 s")


def kill_head_processes(head: Head, needle: str) -> list[int]:
    """SIGKILL this head's processes whose command line contains ``needle`` (never another test's)."""
    killed = []
    for p in head.processes():
        try:
            if any(needle in part for part in p.cmdline()):
                p.send_signal(signal.SIGKILL)
                killed.append(p.pid)
        except psutil.NoSuchProcess:
            continue
    return killed


@pytest.mark.acceptance
def test_killed_actor_and_killed_job_resume_to_an_identical_store(head, reference_job, tmp_path):
    """An extraction actor SIGKILLed mid-job is restarted; then the job's driver is SIGKILLed, the job
    fails, and the same job submitted again resumes from the store and ends bit-identical."""
    config, ref_run, _ = reference_job
    run = tmp_path / "run"
    job = submit(head, config, run)
    at_actor_kill = wait_for_shards(run, 2)
    assert kill_head_processes(head, "ExtractWorker"), "no extraction actor found to kill"
    at_driver_kill = wait_for_shards(run, at_actor_kill + 2)
    assert kill_head_processes(head, "ray_jobs/pipeline.py"), "no job driver found to kill"
    status = cs("status", job, "--address", head.address, "--wait", token=head.token)
    assert status.returncode == 1 and "FAILED" in status.stdout, status.stdout + status.stderr
    total = RunStore(run).read_manifest()["shards"]
    assert at_driver_kill < total, "the kills must land mid-extraction"
    log = follow(head, submit(head, config, run))
    plan = re.search(r"extract plan shards=(\d+) done=(\d+)", log)
    assert plan and int(plan.group(1)) == total and int(plan.group(2)) >= at_driver_kill, log[-3000:]
    a, b = stored_concepts(ref_run), stored_concepts(run)
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], np.ndarray):
            assert np.array_equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


@pytest.mark.acceptance
def test_stage_scripts_with_the_ray_cli(head, reference_job):
    """`ray job submit ... -- python ray_jobs/cluster.py` and `annotate.py` on the reference run, at a new K."""
    config, run, _ = reference_job
    env = {**client_env(head.token), "RAY_AUTH_MODE": "token"}
    ray_cli = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
    for script, extra in (("cluster.py", ["--k", "3"]), ("annotate.py", ["--layer", "6", "--k", "3"])):
        out = subprocess.run([ray_cli, "job", "submit", "--address", head.address, "--working-dir", str(REPO),
                              "--", "python", f"ray_jobs/{script}", str(run), "--config", str(config), *extra],
                             env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0 and "succeeded" in out.stdout, out.stdout[-3000:] + out.stderr[-2000:]
    labels = concepts_with_labels(RunStore(run), 6, 3).column("label").to_pylist()
    assert len(labels) == 3 and all(labels), labels


@pytest.mark.integration
def test_wrong_token_and_unreachable_address_are_one_line_errors(head, tmp_path):
    config = write_job(tmp_path, 10)
    for args, token, needle in (
        (("status", "raysubmit_x", "--address", head.address), "not-the-token", "authentication"),
        (("submit", str(config), "--address", head.address, "--run", str(tmp_path / "r")), None, "authentication"),
        (("logs", "raysubmit_x", "--address", f"http://127.0.0.1:{free_ports(1)[0]}"), head.token, "cannot reach"),
        (("status", "raysubmit_nosuchjob", "--address", head.address), head.token, "nosuchjob"),
    ):
        out = cs(*args, token=token, timeout=120)
        err = out.stderr.strip()
        assert out.returncode == 2, (args, out.stdout, err)
        assert "Traceback" not in err and needle in err.splitlines()[-1].lower(), err


@pytest.mark.unit
def test_run_store_must_be_a_shared_path_or_an_object_store_url():
    assert shared_run_path("/shared/runs/demo") == "/shared/runs/demo"
    assert shared_run_path("s3://bucket/run") == "s3://bucket/run"
    for url, needle in (("gs://bucket/run", "pip install gcsfs"), ("nosuch://bucket/run", "unknown URL scheme"),
                        ("memory://run", "inside one process"), ("file:///tmp/run", "local path itself")):
        with pytest.raises(UserError, match=needle):
            shared_run_path(url)
    with pytest.raises(UserError, match="absolute path"):
        shared_run_path("runs/demo")
    assert shared_run_path("runs/demo", absolute=False) == "runs/demo"
    with pytest.raises(UserError, match="unknown URL scheme"):
        shared_run_path("nosuch://bucket/run", absolute=False)


@pytest.mark.integration
def test_bad_submissions_fail_before_contacting_the_cluster(tmp_path):
    config = write_job(tmp_path, 10)
    nowhere = f"http://127.0.0.1:{free_ports(1)[0]}"
    bad_config = tmp_path / "bad.toml"
    bad_config.write_text("[cluster]\nkk = [5]\n")
    for args, needle in (
        (("submit", str(config), "--address", nowhere, "--run", "gs://bucket/run"), "gs://bucket/run"),
        (("submit", str(config), "--address", nowhere, "--run", "runs/x"), "absolute path"),
        (("submit", str(bad_config), "--address", nowhere, "--run", str(tmp_path / "r")), "kk"),
        (("submit", str(config), "--address", nowhere, "--run", str(tmp_path / "r"), "--working-dir", str(tmp_path)),
         "ray_jobs/pipeline.py"),
        (("submit", str(config), "--address", nowhere, "--run", str(tmp_path / "r"), "--", "--cluster-k", "five"),
         "--cluster-k"),
    ):
        out = cs(*args, token=None, timeout=60)
        assert out.returncode == 2, (args, out.stderr)
        assert "Traceback" not in out.stderr and needle in out.stderr.strip().splitlines()[-1], out.stderr


@pytest.mark.integration
def test_job_script_refuses_a_bad_url_or_relative_run_inside_a_job(tmp_path):
    config = write_job(tmp_path, 10)
    in_job = {**client_env(None), "RAY_ADDRESS": "127.0.0.1:1"}  # as Ray sets it in a job's driver
    for run, env, needle in (("nosuch://bucket/run", in_job, "unknown URL scheme"), ("runs/x", in_job, "absolute path"),
                             ("gs://bucket/run", client_env(None), "pip install gcsfs")):
        out = subprocess.run([sys.executable, "ray_jobs/extract.py", run, "--config", str(config)], env=env,
                             cwd=REPO, capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and needle in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert not (REPO / "gs:").exists()


@pytest.mark.unit
def test_submitted_entrypoint_uses_the_config_inside_the_uploaded_working_dir(tmp_path):
    inside = _config_for_job(REPO / "ray_jobs" / "job.toml", REPO)
    assert inside == "ray_jobs/job.toml"
    assert _config_for_job(tmp_path / "job.toml", REPO) == str((tmp_path / "job.toml").resolve())
    command = entrypoint(inside, "/mnt/shared/runs/x", ["--cluster-k", "7"])
    argv = shlex.split(command)
    assert argv[:2] == ["python", "ray_jobs/pipeline.py"] and (REPO / argv[1]).is_file()
    spec = importlib.util.spec_from_file_location("ray_jobs_job", REPO / "ray_jobs" / "_job.py")
    job_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job_module)
    args = job_module.parse("run", argv[2:])
    assert args.config == "ray_jobs/job.toml" and args.run == "/mnt/shared/runs/x" and args.cluster_k == [7]
