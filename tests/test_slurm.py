"""The scheduled-job path against a real SLURM: ``../shared/slurm/start.sh`` starts slurmctld + slurmd + munge on
this machine (one node, partition ``debug``), and dask-jobqueue submits real worker jobs through ``sbatch``.

Every test here skips, with the reason, where that SLURM cannot start (no root, no apt, no shared/ folder).
Scheduler and workers talk over loopback only (``interface: lo``). The fits are compared with the same fit on
the local default (dask's threaded scheduler): the labels must be identical.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dask.array as da
import nibabel as nib
import numpy as np
import pytest
import xarray as xr
import yaml
from conftest import REPO, real_scan

from daskparcel import Parcellations, datasets
from daskparcel.errors import InputError
from daskparcel.outputs.record import FILES
from daskparcel.runtime.clusters import walltime_seconds
from daskparcel.testing import RaiseOnRead

pytestmark = pytest.mark.timeout(900)

START = REPO.parent / "shared" / "slurm" / "start.sh"
WORKER_JOB = "dp-test-worker"
DRIVER_JOB = "dp-test-driver"
METHODS = ["kmeans", "hierarchical_kmeans", "ward", "complete", "average", "rena"]
RAPIDTIDE = {
    "n_parcels": 50,
    "smoothing_fwhm": 10.0,
    "standardize": "zscore_sample",
}  # nilearn's example
COHORT = {"n_parcels": 20}


# ------------------------------------------------------------------------------------------------ SLURM
@pytest.fixture(scope="session")
def slurm() -> Iterator[None]:
    """A running one-node SLURM (started by the shared script), or a skip saying why not."""
    pytest.importorskip("dask_jobqueue", reason='needs pip install "daskparcel[slurm]"')
    if not START.is_file():
        pytest.skip(
            f"no SLURM here: {START} is absent (put the project's shared/ folder beside the checkout)"
        )
    # start.sh declares the node's CPUs with `nproc`, which obeys OMP_NUM_THREADS: distributed sets it to 1 in
    # this process once it has started worker processes (the nanny's pre-spawn-environ), and the node then
    # ran one job at a time
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_THREAD_LIMIT")}
    done = subprocess.run(
        ["bash", str(START)], capture_output=True, text=True, timeout=900, env=env
    )
    if done.returncode != 0:
        reason = (done.stdout + done.stderr).strip().splitlines()
        pytest.skip(
            f"a real SLURM could not start here: {reason[-1] if reason else done.returncode}"
        )
    yield
    for name in (WORKER_JOB, DRIVER_JOB):
        subprocess.run(["scancel", "--name", name], capture_output=True, check=False)


@pytest.fixture(scope="session")
def slots(slurm) -> int:
    """How many worker-shaped jobs (1 core, 2 GiB) this SLURM runs at once: 1 or 2.

    Measured, not read off ``nproc``: a node of 2 CPUs that are one core's two hyperthreads runs one such job at
    a time under ``SelectTypeParameters=CR_Core`` (each job gets a whole core), and so does a node short of
    memory. The tests size their clusters to it (and skip the one that needs two jobs at once, with the reason).
    """
    ids = []
    for _ in range(2):
        done = subprocess.run(
            ["sbatch", "--parsable", f"--job-name={WORKER_JOB}", "--partition=debug", "--cpus-per-task=1",
             "--mem=2G", "--time=00:02:00", "--output=/dev/null", "--wrap", "sleep 120"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        ids.append(done.stdout.strip().split(";")[0])
    try:
        deadline = time.monotonic() + 30
        while True:
            states = [job_info(i) for i in ids]
            running = sum(s.get("JobState") == "RUNNING" for s in states)
            held = [
                s
                for s in states
                if s.get("JobState") == "PENDING" and s.get("Reason") == "Resources"
            ]
            if running == 2 or (running == 1 and held) or time.monotonic() > deadline:
                return max(running, 1)
            time.sleep(0.5)
    finally:
        subprocess.run(["scancel", *ids], capture_output=True, check=False)
        wait_for(lambda: not any(active(i) for i in ids), 60, "the probe jobs to end")


def cluster_doc(folder: Path, **changes: Any) -> dict[str, Any]:
    """A SLURM cluster file for this machine: 1-core worker jobs, loopback only, this venv."""
    doc: dict[str, Any] = {
        "kind": "slurm",
        "cores": 1,
        "processes": 1,
        "memory": "2GiB",
        "walltime": "00:10:00",
        "queue": "debug",
        "job_name": WORKER_JOB,
        "interface": "lo",
        "job_script_prologue": [f"source {Path(sys.prefix) / 'bin' / 'activate'}"],
        "local_directory": str(folder / "scratch"),
        "log_directory": str(folder / "logs"),
        "death_timeout": 15,
        "scale": 2,
    }
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not None}


def write_cluster(folder: Path, name: str = "cluster.yaml", **changes: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(cluster_doc(folder, **changes)))
    return path


def job_info(job_id: str) -> dict[str, str]:
    """``scontrol show job`` as a dict ({} once SLURM has forgotten the job)."""
    done = subprocess.run(
        ["scontrol", "-o", "show", "job", str(job_id)], capture_output=True, text=True
    )
    if done.returncode != 0:
        return {}
    return dict(item.split("=", 1) for item in done.stdout.split() if "=" in item)


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def active(job_id: str) -> bool:
    return job_info(job_id).get("JobState") in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING")


# ------------------------------------------------------------------------------------------------ inputs
@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, dict[str, Any]]]:
    """name -> (imgs, parameters): the rapidtide scan with nilearn's example parameters, a 3-subject cohort."""
    folder = tmp_path_factory.mktemp("cohort")
    paths, _ = datasets.write_synthetic_nifti(folder, 3, 4, 40, n_parcels=COHORT["n_parcels"])
    # a slab of the brain (~9,000 voxels): average linkage takes 90 s on the whole 4 mm brain of this cohort
    brain = datasets.brain_mask(4)
    slab = np.asarray(brain.dataobj).astype(bool)
    slab[:, :, :22] = slab[:, :, 31:] = False
    nib.save(nib.Nifti1Image(slab.astype(np.uint8), brain.affine), folder / "slab.nii.gz")
    return {
        "rapidtide": (str(real_scan("rapidtide")), RAPIDTIDE),
        "cohort": ([str(p) for p in paths], {**COHORT, "mask": str(folder / "slab.nii.gz")}),
    }


@pytest.fixture(scope="module")
def local_labels(inputs, tmp_path_factory) -> Callable[[str, str], np.ndarray]:
    """(input, method) -> the labels of the fit on the local default (computed once each)."""
    store = tmp_path_factory.mktemp("local-store")
    done: dict[tuple[str, str], np.ndarray] = {}

    def labels(name: str, method: str) -> np.ndarray:
        if (name, method) not in done:
            imgs, params = inputs[name]
            est = Parcellations(method=method, store=store, **params).fit(imgs)
            assert est.workers_ == []  # the local default has no workers to record
            done[name, method] = np.asarray(est.labels_img_.dataobj)
        return done[name, method]

    return labels


# ------------------------------------------------------------------------------------------------ the CLI
def test_cli_fit_on_slurm_submits_worker_jobs_and_equals_the_local_fit(
    slurm, inputs, local_labels, tmp_path
):
    """The issue's run: `daskparcel fit <rapidtide> --cluster slurm.yaml`, workers as SLURM jobs, same labels."""
    cluster = write_cluster(tmp_path)
    scan, _ = inputs["rapidtide"]
    out = tmp_path / "fit"
    done = subprocess.run(
        [
            "daskparcel", "fit", scan, "--method", "kmeans", "--n-parcels", "50", "--smoothing-fwhm", "10",
            "--standardize", "zscore_sample", "--cluster", str(cluster), "--out", str(out),
            "--store", str(tmp_path / "store"), "--verbose", "1",
        ],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    labels = np.asarray(nib.load(out / FILES["labels"]).dataobj)
    np.testing.assert_array_equal(labels, local_labels("rapidtide", "kmeans"))
    runtime = json.loads((out / FILES["fit"]).read_text())["runtime"]
    job_ids = [w["slurm_job_id"] for w in runtime["workers"]]
    assert len(job_ids) >= 1 and all(job_ids), runtime
    assert "slurm_job_id" not in runtime["client"]  # the client ran here, outside any allocation
    for job_id in job_ids:
        assert job_id in done.stderr  # the log names the worker jobs
        assert job_info(job_id).get("JobName") == WORKER_JOB  # and SLURM knows them as ours
    assert "SLURM job" in done.stderr


# ------------------------------------------------------------------------------------------------ every method
@pytest.fixture(scope="class")
def slurm_client(slurm, slots, tmp_path_factory) -> Iterator[Any]:
    """One SLURM cluster for the class: as many worker jobs as run at once (2 here, 1 on a one-slot node), kept
    by adapt."""
    import distributed

    from daskparcel.runtime import make_cluster

    folder = tmp_path_factory.mktemp("slurm-module")
    cluster = make_cluster(
        write_cluster(folder, scale=None, adapt={"minimum": slots, "maximum": slots})
    )
    try:
        with distributed.Client(cluster, set_as_default=False) as client:
            client.wait_for_workers(slots, timeout=120)
            client.slots = slots
            client.fits = []  # (workers_ of each fit)
            client.folder = folder
            yield client
    finally:
        cluster.close()


def _fit_on_slurm(
    client: Any, imgs: Any, params: dict[str, Any], method: str, store: Path
) -> Parcellations:
    est = Parcellations(method=method, store=store, client=client, **params).fit(imgs)
    client.fits.append(est.workers_)
    assert est.workers_ and all("slurm_job_id" in w for w in est.workers_), est.workers_
    return est


class TestOnOneCluster:
    """Fits on one SLURM cluster (2 worker jobs of 1 core), released before the tests that start their own:
    on a 2-core node its jobs hold every core."""

    @pytest.mark.parametrize("method", METHODS)
    @pytest.mark.parametrize("name", ["rapidtide", "cohort"])
    def test_every_method_on_slurm_equals_the_local_default(
        self, slurm_client, inputs, local_labels, name, method, tmp_path
    ):
        """One store per input, empty for its first method: mask, signals and reduction run in the worker jobs
        once, and every method's distributed steps there too (starts, weighting, ReNA's blocks): identical labels."""
        imgs, params = inputs[name]
        est = _fit_on_slurm(
            slurm_client, imgs, params, method, slurm_client.folder / f"store-{name}"
        )
        np.testing.assert_array_equal(
            np.asarray(est.labels_img_.dataobj), local_labels(name, method)
        )

    def test_a_worker_cancelled_mid_fit_is_replaced_and_the_fit_completes(
        self, slurm_client, inputs, local_labels, tmp_path
    ):
        """`scancel` of a worker job while it computes: adapt submits another, the fit gives the same labels."""
        imgs, params = inputs["rapidtide"]
        result: dict[str, Any] = {}

        def fit() -> None:
            try:
                result["est"] = _fit_on_slurm(
                    slurm_client, imgs, params, "ward", tmp_path / "store"
                )
            except BaseException as exc:  # re-raised below, in the test's thread
                result["error"] = exc

        thread = threading.Thread(target=fit)
        thread.start()
        busy = wait_for(
            lambda: [w for w, tasks in slurm_client.processing().items() if tasks],
            120,
            "a busy worker",
        )
        job_id = slurm_client.run(lambda: os.environ["SLURM_JOB_ID"], workers=busy[:1])[busy[0]]
        subprocess.run(["scancel", job_id], check=True)
        thread.join(600)
        assert "error" not in result, result.get("error")
        workers = result["est"].workers_
        lost = [w for w in workers if w.get("left")]
        assert job_id in [w["slurm_job_id"] for w in lost], workers
        assert job_info(job_id).get("JobState") in ("CANCELLED", None)
        np.testing.assert_array_equal(
            np.asarray(result["est"].labels_img_.dataobj), local_labels("rapidtide", "ward")
        )
        # adapt replaced the cancelled job
        wait_for(
            lambda: len(slurm_client.scheduler_info()["workers"]) == slurm_client.slots,
            180,
            "a replacement worker job",
        )
        now = slurm_client.run(lambda: os.environ["SLURM_JOB_ID"])
        assert job_id not in now.values()


def test_workers_killed_at_their_walltime_are_replaced_and_the_fit_completes(
    slurm, slots, inputs, local_labels, tmp_path
):
    """Worker jobs with a 1-minute walltime and a longer --lifetime: SLURM kills them (state TIMEOUT) while fits
    run; the cluster submits new jobs and every fit equals the local default. Fits go on until a worker was
    killed during one of them; then its job is replaced."""
    import distributed

    from daskparcel.runtime import make_cluster

    imgs, params = inputs["rapidtide"]
    doc = {"walltime": "00:01:00", "worker_extra_args": ["--lifetime", "1h"], "scale": None}
    adapt = {"minimum": slots, "maximum": slots}
    cluster = make_cluster(write_cluster(tmp_path, adapt=adapt, **doc))
    killed: list[str] = []
    try:
        with distributed.Client(cluster, set_as_default=False) as client:
            client.wait_for_workers(slots, timeout=120)
            client.fits = []
            deadline = time.monotonic() + 300
            n = 0
            while not killed:
                assert time.monotonic() < deadline, (
                    f"no worker reached its walltime during {n} fits"
                )
                est = _fit_on_slurm(client, imgs, params, "ward", tmp_path / f"store-{n}")
                labels = np.asarray(est.labels_img_.dataobj)
                np.testing.assert_array_equal(labels, local_labels("rapidtide", "ward"))
                killed = [
                    w["slurm_job_id"]
                    for w in est.workers_
                    if w.get("left") and job_info(w["slurm_job_id"]).get("JobState") == "TIMEOUT"
                ]
                n += 1
            wait_for(
                lambda: len(client.scheduler_info()["workers"]) == slots,
                180,
                "replacement worker jobs",
            )
            now = client.run(lambda: os.environ["SLURM_JOB_ID"])
            assert not set(killed) & set(now.values())
    finally:
        cluster.close()


# ------------------------------------------------------------------------------------------------ job files
def _job_file(folder: Path, imgs: list[str], where: str | None, output: Path) -> Path:
    doc: dict[str, Any] = {
        "inputs": {"files": imgs},
        "convert": True,
        "parcellation": {"method": "ward", "n_parcels": COHORT["n_parcels"]},
        "output": str(output),
    }
    if where is not None:
        doc["where"] = where
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _job_ids_known() -> set[str]:
    done = subprocess.run(["squeue", "-h", "-o", "%i", "-t", "all"], capture_output=True, text=True)
    return set(done.stdout.split())


def test_job_file_on_slurm_writes_what_the_local_job_writes_and_runs_once(slurm, inputs, tmp_path):
    imgs, _ = inputs["cohort"]
    cluster = write_cluster(tmp_path / "cluster")
    outputs = {}
    for where in (None, str(cluster)):
        out = tmp_path / ("slurm" if where else "local")
        job = _job_file(tmp_path / f"job-{out.name}", imgs, where, out)
        done = subprocess.run(
            ["daskparcel", "run", str(job)], capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stderr[-3000:]
        outputs[out.name] = out
    local, slurm_out = outputs["local"] / "fit", outputs["slurm"] / "fit"
    assert sorted(p.name for p in slurm_out.rglob("*")) == sorted(p.name for p in local.rglob("*"))
    np.testing.assert_array_equal(
        np.asarray(nib.load(slurm_out / FILES["labels"]).dataobj),
        np.asarray(nib.load(local / FILES["labels"]).dataobj),
    )
    assert (slurm_out / FILES["parcels"]).read_text() == (local / FILES["parcels"]).read_text()
    workers = json.loads((slurm_out / FILES["fit"]).read_text())["runtime"]["workers"]
    assert workers and all(w.get("slurm_job_id") for w in workers)
    assert "SLURM job" in (outputs["slurm"] / "job.log").read_text()
    # a second run of a finished job does nothing: no job submitted, nothing rewritten
    before, stamp = _job_ids_known(), (slurm_out / FILES["fit"]).stat().st_mtime_ns
    again = subprocess.run(
        ["daskparcel", "run", str(tmp_path / "job-slurm" / "job.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stdout + again.stderr
    assert _job_ids_known() <= before
    assert (slurm_out / FILES["fit"]).stat().st_mtime_ns == stamp


def _submit_driver(job: Path, folder: Path) -> str:
    """`sbatch deploy/slurm/run.sbatch job.yaml`: the deploy example itself, its site lines overridden."""
    env = {**os.environ, "DASKPARCEL_VENV": sys.prefix}
    done = subprocess.run(
        [
            "sbatch", "--parsable", f"--job-name={DRIVER_JOB}", "--partition=debug", "--cpus-per-task=1",
            "--mem=2G", "--time=00:15:00", f"--output={folder}/driver-%j.out", f"--chdir={folder}",
            str(REPO / "deploy" / "slurm" / "run.sbatch"), str(job),
        ],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    return done.stdout.strip().split(";")[0]


def test_sbatch_driver_job_runs_the_fit_and_resumes_after_a_scancel(slurm, slots, inputs, tmp_path):
    """The client runs in its own allocation and its workers in others; cancelled mid-fit and submitted again,
    the job resumes: the converted runs, the mask and the signals store are reused, not recomputed."""
    if slots < 2:
        pytest.skip(
            "this SLURM node runs one 1-core job at a time (one core's two hyperthreads under CR_Core, or too "
            "little memory): a driver job and its worker job cannot run together"
        )
    imgs, _ = inputs["cohort"]
    out = tmp_path / "out"
    cluster = write_cluster(tmp_path / "cluster", scale=1, death_timeout=10)
    job = _job_file(tmp_path, imgs, str(cluster), out)
    first = _submit_driver(job, tmp_path)
    log = out / "job.log"
    wait_for(
        lambda: log.is_file() and re.search(r"INFO: signals: [0-9.]+ s", log.read_text()),
        300,
        "the first driver's signals step",
    )
    subprocess.run(["scancel", first], check=True)
    wait_for(lambda: not active(first), 60, f"the driver job {first} to end")
    assert not (out / "done.json").exists(), (
        "the driver finished before it was cancelled: the test needs a longer fit"
    )
    log_first = log.read_text()
    second = _submit_driver(job, tmp_path)
    wait_for(lambda: not active(second), 600, f"the second driver job {second} to end")
    driver_log = (tmp_path / f"driver-{second}.out").read_text()
    assert (out / "done.json").is_file(), driver_log[-3000:]
    # the second run reused what the first completed
    second_part = log.read_text()[len(log_first) :]
    assert "up to date, nothing written" in second_part  # the run stores
    assert "mask reused" in second_part
    assert "is up to date: reused" in second_part  # the signals store
    # the folder is complete, and the client ran in the second driver's allocation, the workers in their own
    fit = out / "fit"
    record = json.loads((fit / FILES["fit"]).read_text())
    for name in record["files"].values():
        assert (fit / name).exists(), name
    assert record["runtime"]["client"].get("slurm_job_id") == second
    worker_jobs = {w["slurm_job_id"] for w in record["runtime"]["workers"]}
    assert worker_jobs and second not in worker_jobs and first not in worker_jobs
    labels = np.asarray(nib.load(fit / FILES["labels"]).dataobj)
    reference = Parcellations(
        method="ward", n_parcels=COHORT["n_parcels"], store=tmp_path / "local"
    )
    np.testing.assert_array_equal(labels, np.asarray(reference.fit(imgs).labels_img_.dataobj))


# ------------------------------------------------------------------------------------------------ bad cluster files
BAD = {
    "queue": ({"queue": "nosuchpartition"}, "queue='nosuchpartition' is not a partition"),
    "memory": ({"memory": "100TiB"}, "memory='100TiB' is more than a node"),
    "cores": ({"cores": 4096}, "cores=4096 is more than a node"),
}


@pytest.mark.parametrize("key", sorted(BAD))
def test_a_cluster_file_the_site_cannot_run_is_refused_before_any_data_is_read(
    slurm, inputs, key, tmp_path
):
    change, message = BAD[key]
    cluster = write_cluster(tmp_path, **change)
    shape = (8, 8, 8, 10)
    unread = xr.Dataset(
        {"bold": (("x", "y", "z", "t"), da.from_array(RaiseOnRead(shape), chunks=shape))},
        attrs={"affine": np.eye(4).tolist()},
    )
    with pytest.raises(InputError, match=message):
        Parcellations(method="ward", store=tmp_path / "store", client=str(cluster)).fit(unread)
    # the CLI: exit 2, one line naming the key, nothing written
    out = tmp_path / "fit"
    done = subprocess.run(
        ["daskparcel", "fit", inputs["cohort"][0][0], "--method", "ward", "--cluster", str(cluster),
         "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and str(cluster) in lines[0], done.stderr
    assert not out.exists()
    # a job file: refused before its runs are converted
    job = _job_file(tmp_path / "job", [inputs["cohort"][0][0]], str(cluster), tmp_path / "jobout")
    done = subprocess.run(
        ["daskparcel", "run", str(job)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert not (tmp_path / "jobout" / "cache").exists()


def test_the_site_check_warns_where_a_job_holds_a_whole_hyperthreaded_core(slurm, tmp_path, caplog):
    """Where sinfo's sockets:cores:threads has 2+ threads per core, a job of cores=1 holds a whole core under
    CR_Core: the site check says so (a warning, not an error), and only then."""
    import logging

    from daskparcel.runtime import load_cluster_config
    from daskparcel.runtime.site import check_site

    done = subprocess.run(
        ["sinfo", "-h", "-p", "debug", "-o", "%z"], capture_output=True, text=True, check=True
    )
    threads = int(done.stdout.split()[0].split(":")[-1])
    for cores in (1, threads):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="daskparcel"):
            check_site(load_cluster_config(cluster_doc(tmp_path, cores=cores)))
        warned = "hardware threads per core" in caplog.text
        assert warned == (cores % threads != 0), (cores, threads, caplog.text)


def test_slurm_time_formats():
    """The walltime check reads SLURM's formats as SLURM does (sbatch --time)."""
    assert walltime_seconds("infinite") is None
    assert walltime_seconds("30") == 30 * 60  # minutes
    assert walltime_seconds("30:15") == 30 * 60 + 15  # minutes:seconds
    assert walltime_seconds("02:00:00") == 2 * 3600
    assert walltime_seconds("1-00:00:00") == 24 * 3600
    assert walltime_seconds("2-12") == 2 * 24 * 3600 + 12 * 3600  # days-hours


def test_no_sinfo_means_nothing_is_checked(monkeypatch, tmp_path):
    """A laptop checking a file meant for a cluster: no sinfo, no error (the file's keys are still checked)."""
    from daskparcel.runtime import load_cluster_config
    from daskparcel.runtime.site import check_site

    monkeypatch.setenv("PATH", str(tmp_path))
    check_site(load_cluster_config(cluster_doc(tmp_path, queue="only-on-the-cluster")))
    assert shutil.which("sinfo") is None
