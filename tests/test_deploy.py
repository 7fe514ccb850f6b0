"""Tests of the deployment files in deploy/: they parse, they say what they claim, and the parts that can
run here (the compose cluster's dask commands, the SLURM / PBS job scripts) do run.
"""

from __future__ import annotations

import re
import shlex
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import yaml
from dask.utils import parse_bytes

from daskparcel import runtime
from daskparcel.runtime.workers import WORKER_MALLOC

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
YAML_FILES = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
CLUSTER_FILES = sorted(DEPLOY.rglob("cluster.yaml"))
# the command CI installs with; .ci/run is written by the lead (this is read from it when present)
CI_INSTALL_DEFAULT = 'pip install -e ".[all]"'
PIP_INSTALL = re.compile(
    r"""pip install\s+(?P<flags>(?:-[-\w]+\s+)*)["']?(?P<target>[./\w-]+)\[(?P<extras>[\w,\s-]+)\]["']?"""
)


# flags that change how pip talks, not what it installs
QUIET_FLAGS = {"-q", "--quiet", "--no-cache-dir", "-U", "--upgrade", "--no-input"}


def _pip_install(text: str, where: str) -> tuple[frozenset[str], str, set[str]]:
    """(install flags, target, extras) of the first `pip install TARGET[EXTRAS]` in the text."""
    found = PIP_INSTALL.search(text)
    assert found, f"no `pip install ...[extras]` command in {where}"
    extras = {e.strip() for e in found["extras"].split(",")}
    return frozenset(found["flags"].split()) - QUIET_FLAGS, found["target"], extras


def _ci_install() -> str:
    ci = REPO / ".ci" / "run"
    if ci.is_file():
        text = ci.read_text()
        if PIP_INSTALL.search(text):
            return text
    return CI_INSTALL_DEFAULT


def test_deploy_has_the_promised_files():
    for name in [
        "Dockerfile",
        "README.md",
        "compose/compose.yaml",
        "slurm/cluster.yaml",
        "slurm/job.yaml",
        "slurm/run.sbatch",
        "pbs/cluster.yaml",
        "kubernetes/cluster.yaml",
        "kubernetes/daskcluster.yaml",
        "local/cluster.yaml",
    ]:
        assert (DEPLOY / name).is_file(), name


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_parses(path):
    docs = list(yaml.safe_load_all(path.read_text()))
    assert docs and all(isinstance(doc, dict) and doc for doc in docs)


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_cluster_files_validate(path):
    config = runtime.load_cluster_config(path)
    assert config.kind == path.parent.name  # deploy/<kind>/cluster.yaml
    assert config.source == str(path)


def test_cluster_files_cover_every_kind():
    assert {runtime.load_cluster_config(p).kind for p in CLUSTER_FILES} == set(runtime.KINDS)


# ------------------------------------------------------------------------------------------------
# SLURM / PBS through dask-jobqueue
# ------------------------------------------------------------------------------------------------


def _header_bytes(value: str) -> int:
    """Bytes of a SLURM --mem value (K/M/G/T are powers of 1024 in SLURM)."""
    number, unit = re.fullmatch(r"(\d+)([KMGT]?)", value).groups()  # type: ignore[union-attr]
    return int(number) * 1024 ** "_KMGT".index(unit or "M")


def test_slurm_job_script_has_the_asked_resources():
    pytest.importorskip("dask_jobqueue", reason='needs pip install "daskparcel[slurm]"')
    path = DEPLOY / "slurm" / "cluster.yaml"
    doc = yaml.safe_load(path.read_text())
    script = runtime.job_script(path, "tcp://10.0.0.1:8786")
    header = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    assert f"#SBATCH -p {doc['queue']}" in header
    assert f"#SBATCH -A {doc['account']}" in header
    assert f"#SBATCH --cpus-per-task={doc['cores']}" in header
    assert f"#SBATCH -t {doc['walltime']}" in header
    for directive in doc["job_extra_directives"]:
        assert f"#SBATCH {directive}" in header
    (mem,) = [line.split("=", 1)[1] for line in header if line.startswith("#SBATCH --mem=")]
    asked = parse_bytes(doc["memory"])
    assert asked <= _header_bytes(mem) < 1.05 * asked
    # the worker command: `processes` workers sharing the job's cores and memory
    worker = shlex.split(script.strip().splitlines()[-1])
    assert "tcp://10.0.0.1:8786" in worker
    assert worker[worker.index("--nworkers") + 1] == str(doc["processes"])
    assert worker[worker.index("--nthreads") + 1] == str(doc["cores"] // doc["processes"])
    per_worker = parse_bytes(worker[worker.index("--memory-limit") + 1])
    assert per_worker == pytest.approx(asked / doc["processes"], rel=0.01)
    assert worker[worker.index("--local-directory") + 1] == doc["local_directory"]
    for line in doc["job_script_prologue"]:
        assert line in script.splitlines()
    # glibc's malloc settings exported before the worker starts (and before the file's own prologue)
    lines = script.splitlines()
    exports = [lines.index(f"export {k}={v}") for k, v in WORKER_MALLOC.items()]
    assert max(exports) < lines.index(doc["job_script_prologue"][0]) < len(lines) - 1
    with dask.config.set(
        {"daskparcel.runtime.worker-malloc": False}
    ):  # distributed's own, as asked
        assert "MALLOC" not in runtime.job_script(path, "tcp://10.0.0.1:8786")


def test_pbs_job_script_has_the_asked_resources():
    pytest.importorskip("dask_jobqueue", reason='needs pip install "daskparcel[slurm]"')
    path = DEPLOY / "pbs" / "cluster.yaml"
    doc = yaml.safe_load(path.read_text())
    header = [line for line in runtime.job_script(path).splitlines() if line.startswith("#PBS")]
    assert f"#PBS -q {doc['queue']}" in header
    assert f"#PBS -A {doc['account']}" in header
    assert f"#PBS -l walltime={doc['walltime']}" in header
    assert f"#PBS -l {doc['resource_spec']}" in header


def test_job_script_is_the_one_the_cluster_submits():
    """Our dry-run job_script equals SLURMCluster.job_script() of the started cluster (no job submitted)."""
    pytest.importorskip("dask_jobqueue", reason='needs pip install "daskparcel[slurm]"')
    doc = yaml.safe_load((DEPLOY / "slurm" / "cluster.yaml").read_text())
    del doc["adapt"]  # adaptive scaling would call sbatch
    doc["scheduler_options"] = {"host": "127.0.0.1", "dashboard_address": ":0"}
    cluster = runtime.make_cluster(doc)
    try:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        assert runtime.job_script(doc, cluster.scheduler_address) == cluster.job_script()
    finally:
        cluster.close()


def test_sbatch_script_runs_the_job_file():
    script = (DEPLOY / "slurm" / "run.sbatch").read_text()
    assert script.startswith("#!/bin/bash")
    assert re.search(r"^#SBATCH --time=", script, re.M)
    assert re.search(r"daskparcel run \"?\$JOB_FILE", script)
    subprocess.run(["bash", "-n", str(DEPLOY / "slurm" / "run.sbatch")], check=True)
    job = yaml.safe_load((DEPLOY / "slurm" / "job.yaml").read_text())
    cluster_file = DEPLOY / "slurm" / job["where"]  # relative to the job file
    assert runtime.load_cluster_config(cluster_file).kind == "slurm"
    try:
        from daskparcel import jobs
    except ImportError:  # the job runner is written separately
        return
    if hasattr(jobs, "TOP_KEYS"):
        assert set(job) <= set(jobs.TOP_KEYS)


# ------------------------------------------------------------------------------------------------
# container image and compose
# ------------------------------------------------------------------------------------------------


def test_dockerfile_installs_like_ci():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    run_lines = "\n".join(re.findall(r"^RUN .*$", dockerfile, re.M))
    flags, target, extras = _pip_install(run_lines, "the RUN lines of deploy/Dockerfile")
    ci_flags, ci_target, ci_extras = _pip_install(_ci_install(), ".ci/run")
    assert (flags, target) == (ci_flags, ci_target)
    assert ci_extras <= extras
    assert {"slurm", "kubernetes"} <= extras  # the cluster extras
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert extras <= set(declared), f"extras not in pyproject: {extras - set(declared)}"
    # the checkout is copied before it is installed, and the install happens in it
    copy = dockerfile.index("COPY . ")
    assert copy < dockerfile.index("RUN pip install")
    workdir = re.findall(r"^WORKDIR (\S+)", dockerfile[:copy], re.M)[-1]
    assert f"COPY . {workdir}" in dockerfile


def test_dockerfile_python_satisfies_requires_python():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    major, minor = re.search(r"^FROM python:(\d+)\.(\d+)", dockerfile, re.M).groups()  # type: ignore[union-attr]
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    low = re.search(r">=\s*(\d+)\.(\d+)", requires).groups()  # type: ignore[union-attr]
    assert (int(major), int(minor)) >= (int(low[0]), int(low[1]))


def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())


def test_compose_has_scheduler_two_workers_and_jupyter_sharing_data():
    services = _compose()["services"]
    assert "data" in _compose()["volumes"]
    workers = [s for s in services.values() if s["command"][:2] == ["dask", "worker"]]
    schedulers = [s for s in services.values() if s["command"][:2] == ["dask", "scheduler"]]
    jupyters = [s for s in services.values() if s["command"][:2] == ["jupyter", "lab"]]
    assert (len(schedulers), len(workers), len(jupyters)) == (1, 2, 1)
    port = schedulers[0]["command"][schedulers[0]["command"].index("--port") + 1]
    address = f"tcp://scheduler:{port}"
    for service in [*schedulers, *workers, *jupyters]:
        assert any(v.split(":")[0] == "data" for v in service["volumes"])
        assert service["image"] == "daskparcel:latest"
        assert service["environment"]["DASK_SCHEDULER_ADDRESS"] == address
    for worker in workers:
        assert address in worker["command"]
        assert "scheduler" in worker["depends_on"]
        assert {k: worker["environment"].get(k) for k in WORKER_MALLOC} == WORKER_MALLOC


def test_the_image_sets_the_workers_malloc():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    for name, value in WORKER_MALLOC.items():
        assert re.search(rf"^\s*{name}={value}\b", dockerfile, re.M), name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.cluster
@pytest.mark.slow
def test_compose_commands_run_a_real_cluster(tmp_path):
    """Run the compose file's scheduler and worker commands here (on 127.0.0.1) and compute on them."""
    services = _compose()["services"]
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"

    (scheduler,) = [
        s["command"] for s in services.values() if s["command"][:2] == ["dask", "scheduler"]
    ]
    compose_port = scheduler[scheduler.index("--port") + 1]
    substitutions = {
        f"tcp://scheduler:{compose_port}": address,  # the scheduler's service name -> here
        compose_port: str(port),  # a free port rather than 8786
        ":8787": ":0",  # a free dashboard port
        "/tmp/dask-worker": str(tmp_path / "worker"),
    }
    commands = [
        [
            sys.executable,
            "-m",
            "dask",
            *[substitutions.get(a, a) for a in s["command"][1:]],
            "--host",
            "127.0.0.1",
        ]
        for s in services.values()
        if s["command"][0] == "dask"
    ]
    procs = []
    try:
        for command in commands:
            procs.append(
                subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
            if command[3] == "scheduler":
                time.sleep(0.5)
        with runtime.connect(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
            assert len(client.scheduler_info()["workers"]) == 2
            x = da.random.default_rng(3).standard_normal((400, 30), chunks=(50, 30))
            result = (x.T @ x).compute()
            client.shutdown()  # stops the scheduler and the workers (faster than SIGTERM each)
        np.testing.assert_allclose(result, (x.T @ x).compute(scheduler="threads"), rtol=1e-12)
    finally:
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


# ------------------------------------------------------------------------------------------------
# Kubernetes
# ------------------------------------------------------------------------------------------------


def test_daskcluster_manifest_is_consistent():
    manifest = yaml.safe_load((DEPLOY / "kubernetes" / "daskcluster.yaml").read_text())
    assert manifest["apiVersion"] == "kubernetes.dask.org/v1"
    assert manifest["kind"] == "DaskCluster"
    name = manifest["metadata"]["name"]
    spec = manifest["spec"]
    assert spec["scheduler"]["service"]["selector"]["dask.org/cluster-name"] == name
    (worker,) = spec["worker"]["spec"]["containers"]
    (scheduler,) = spec["scheduler"]["spec"]["containers"]
    assert worker["image"] == scheduler["image"]
    assert worker["args"][:2] == ["dask", "worker"] and scheduler["args"][:2] == [
        "dask",
        "scheduler",
    ]
    # both mount the claim that data-pvc.yaml defines, at the same path
    pvc = yaml.safe_load((DEPLOY / "kubernetes" / "data-pvc.yaml").read_text())
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]
    for part in (spec["worker"]["spec"], spec["scheduler"]["spec"]):
        (volume,) = part["volumes"]
        assert volume["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert worker["volumeMounts"] == scheduler["volumeMounts"]
    # the Python-side configuration uses the same image
    assert (
        runtime.load_cluster_config(DEPLOY / "kubernetes" / "cluster.yaml").options["image"]
        == (worker["image"])
    )


def test_readme_uses_the_ci_install_and_covers_every_setup():
    readme = (DEPLOY / "README.md").read_text()
    flags, target, extras = _pip_install(_ci_install(), ".ci/run")
    assert _pip_install(readme, "deploy/README.md")[:2] == (flags, target)
    assert extras <= _pip_install(readme, "deploy/README.md")[2]
    for needle in [
        "docker build -f deploy/Dockerfile",
        "docker compose -f deploy/compose/compose.yaml up",
        "sbatch deploy/slurm/run.sbatch",
        "kubectl apply -f deploy/kubernetes/daskcluster.yaml",
        "--cluster deploy/",
        "--scheduler tcp://",
        "DASK_SCHEDULER_ADDRESS",
    ]:
        assert needle in readme, needle
