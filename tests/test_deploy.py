"""deploy/: every manifest parses and says what the code accepts.

The entrypoints are parsed with the job scripts' own parsers and their configs are built, the launcher
config passes Ray's own schema, the KubeRay RayJob runs the same cluster as the RayCluster, and the
Dockerfile installs exactly pyproject's dependencies plus its s3 and serve extras (its derivation command is run for
real here).
"""

from __future__ import annotations

import ast
import importlib.util
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from cluster_service.configs import load_config_file
from cluster_service.jobs.paths import shared_run_path
from cluster_service.pipeline import PipelineConfig

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
pytestmark = pytest.mark.unit


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    lines = [ln for ln in (DEPLOY / "Dockerfile").read_text().splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in joined.splitlines() if ln.strip()]


def app_dir() -> str:
    return [arg for ins, arg in dockerfile_instructions() if ins == "WORKDIR"][-1].strip()


def manifests() -> dict[str, dict]:
    docs = {}
    for path in sorted(DEPLOY.rglob("*.yaml")):
        loaded = list(yaml.safe_load_all(path.read_text()))
        assert len(loaded) == 1 and isinstance(loaded[0], dict), path
        docs[path.relative_to(DEPLOY).as_posix()] = loaded[0]
    return docs


def load_job_module():
    spec = importlib.util.spec_from_file_location("ray_jobs_job", REPO / "ray_jobs" / "_job.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_entrypoint(entrypoint: str, mounts: set[str]) -> None:
    """The command names a real job script, its flags parse with that script's parser, its config
    builds, and its run store is an absolute path on a volume every pod mounts."""
    argv = shlex.split(entrypoint)
    assert argv[0] == "python", entrypoint
    script = REPO / Path(argv[1]).relative_to(app_dir())
    assert script.is_file(), script
    verb = next(node.value.value for node in ast.parse(script.read_text()).body
                if isinstance(node, ast.Assign) and node.targets[0].id == "VERB")
    local = [str(REPO / Path(a).relative_to(app_dir())) if a.startswith(app_dir() + "/") else a for a in argv[2:]]
    args = load_job_module().parse(verb, local)
    sections = load_config_file(args.config)
    PipelineConfig.from_sections(sections, tuple(args.stages.split(",")) if args.stages else None)
    shared_run_path(args.run)
    assert any(args.run.startswith(m + "/") for m in mounts), (args.run, mounts)


def pod_specs(cluster_spec: dict) -> list[dict]:
    return [cluster_spec["headGroupSpec"]["template"]["spec"],
            *(g["template"]["spec"] for g in cluster_spec["workerGroupSpecs"])]


def shared_mounts(cluster_spec: dict, claim: str) -> set[str]:
    """Mount paths of the shared claim that every pod (head and each worker group) has."""
    per_pod = []
    for pod in pod_specs(cluster_spec):
        names = {v["name"] for v in pod["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") == claim}
        per_pod.append({m["mountPath"] for c in pod["containers"] for m in c.get("volumeMounts", [])
                        if m["name"] in names})
    return set.intersection(*per_pod)


def test_every_manifest_parses_and_kinds_are_known():
    docs = manifests()
    kinds = {name: doc.get("kind") for name, doc in docs.items() if "apiVersion" in doc}
    assert kinds == {"kuberay/raycluster.yaml": "RayCluster", "kuberay/rayjob.yaml": "RayJob",
                     "kuberay/storage.yaml": "PersistentVolumeClaim"}
    assert "launcher/aws-gpu.yaml" in docs


def test_kuberay_gpu_workers_shared_volume_and_entrypoint():
    docs = manifests()
    cluster = docs["kuberay/raycluster.yaml"]["spec"]
    job = docs["kuberay/rayjob.yaml"]["spec"]
    assert job["rayClusterSpec"] == cluster, "rayjob.yaml must run the same cluster as raycluster.yaml"
    ray_spec = next(r for r in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
                    if r.startswith("ray"))
    assert Version(cluster["rayVersion"]) in SpecifierSet(ray_spec.split("]", 1)[-1])
    assert cluster["authOptions"]["mode"] == "token"
    gpu_groups = [g for g in cluster["workerGroupSpecs"]
                  if all(int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) >= 1 for c in g["template"]["spec"]
                         ["containers"])]
    assert gpu_groups, "no worker group with nvidia.com/gpu limits"
    claim = docs["kuberay/storage.yaml"]["metadata"]["name"]
    assert docs["kuberay/storage.yaml"]["spec"]["accessModes"] == ["ReadWriteMany"]
    mounts = shared_mounts(cluster, claim)
    assert mounts, "head and workers must all mount the shared volume"
    images = {c["image"] for pod in pod_specs(cluster) for c in pod["containers"]}
    assert images == {docs["launcher/aws-gpu.yaml"]["docker"]["image"]}
    check_entrypoint(job["entrypoint"], mounts)


def test_launcher_config_passes_rays_schema_and_has_gpu_workers():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = manifests()["launcher/aws-gpu.yaml"]
    validate_config(prepare_config(raw))
    workers = [t for name, t in raw["available_node_types"].items() if name != raw["head_node_type"]]
    assert any(re.match(r"(g[4-6]|p[3-5])", t["node_config"]["InstanceType"]) for t in workers)
    assert any("-v /mnt/shared:/mnt/shared" == opt for opt in raw["docker"]["run_options"])
    starts = raw["head_start_ray_commands"] + raw["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in cmd for cmd in starts if "ray start" in cmd)


def test_readme_commands_name_real_scripts_and_flags():
    matches = list(re.finditer(r"python (ray_jobs/\w+\.py) ([^`\n]+)", (DEPLOY / "README.md").read_text()))
    assert matches
    for match in matches:
        assert (REPO / match.group(1)).is_file()
        verb = re.search(r'^VERB = "(\w+)"', (REPO / match.group(1)).read_text(), re.M).group(1)
        argv = shlex.split(match.group(2).replace("ray_jobs/", str(REPO / "ray_jobs") + "/"))
        args = load_job_module().parse(verb, argv)
        if verb == "run":
            check_entrypoint(f"python {app_dir()}/{match.group(1)} " + shlex.join(argv), {"/mnt/shared"})
            assert args.config.endswith("job.toml")
        else:  # serve: its flags parsed above; its run on the shared volume
            assert shared_run_path(args.run, absolute=True).startswith("/mnt/shared/")


def test_dockerfile_installs_exactly_pyprojects_dependencies():
    runs = [arg for ins, arg in dockerfile_instructions() if ins == "RUN"]
    derive = next(r for r in runs if "tomllib" in r)
    command = re.search(r"python -c (\".*?\")\s*>\s*(\S+)", derive)
    assert command, derive
    out = subprocess.run([sys.executable, "-c", shlex.split(command.group(1))[0]], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout.split("\n")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert [line for line in out if line] == project["dependencies"] + extras["s3"] + extras["serve"]
    installs = [shlex.split(part.strip()) for r in runs for part in r.split("&&") if "pip install" in part]
    allowed = (["pip", "install", "--upgrade", "pip"], ["pip", "install", "-r", command.group(2)],
               ["pip", "install", "--no-deps", "."])
    assert installs and all(cmd in allowed for cmd in installs), installs
    copied = " ".join(arg for ins, arg in dockerfile_instructions() if ins == "COPY")
    for needed in ("pyproject.toml", "cluster_service", "ray_jobs"):
        assert needed in copied
    assert app_dir() == "/app"
