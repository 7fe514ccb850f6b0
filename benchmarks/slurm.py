"""The SLURM suite (``run.py --suite slurm``): what submitting to SLURM and moving work to worker jobs costs.

The 10-subject 2 mm cohort (kmeans 50, the default mask: no mask file, .nii.gz inputs), each fit from an empty
store in its own process: once on the local default (dask's threads, this machine's cores), once with a SLURM
cluster of 2 worker jobs of 1 core each (dask-jobqueue, ``interface: lo``) on the same machine. Reported: the
time until the workers are up (``sbatch`` to a registered worker), the fit, the cluster's shutdown, per step,
and the ratios to the local fit. Needs a running SLURM (``../shared/slurm/start.sh``, as root).
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from _measure import markdown_table, measure

STEPS = ("mask", "signals", "reduction", "clustering")


def cluster_file(folder: Path, workers: int) -> Path:
    """A SLURM cluster file for this machine: 1-core worker jobs on loopback, activating this venv."""
    folder.mkdir(parents=True, exist_ok=True)
    doc = {
        "kind": "slurm", "cores": 1, "processes": 1, "memory": "4GiB", "walltime": "00:30:00",
        "queue": "debug", "interface": "lo", "job_name": "dp-bench-worker",
        "job_script_prologue": [f"source {Path(sys.prefix) / 'bin' / 'activate'}"],
        "local_directory": str(folder / "scratch"), "log_directory": str(folder / "logs"), "scale": workers,
    }  # fmt: skip
    path = folder / "cluster.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def fit_slurm(
    imgs: list[str], config: dict[str, Any], store: str, cluster: str | None, workers: int
) -> dict:
    """Child process: the fit on the local default (``cluster=None``) or on a SLURM cluster file's jobs."""
    import distributed

    from daskparcel import Parcellations
    from daskparcel.runtime import make_cluster

    cfg, phases = config, {}
    start = time.perf_counter()
    slurm, client = None, None
    if cluster is not None:
        slurm = make_cluster(cluster)
        client = distributed.Client(slurm)
        client.wait_for_workers(workers, timeout=600)
    phases["workers_up"] = time.perf_counter() - start
    est = Parcellations(
        method=cfg["method"], n_parcels=cfg["n_parcels"], smoothing_fwhm=cfg["smoothing_fwhm"],
        standardize=cfg["standardize"], store=store, client=client,
    )  # fmt: skip
    t0 = time.perf_counter()
    est.fit(imgs)
    phases["fit"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if slurm is not None:
        client.close()
        slurm.close()
    phases["shutdown"] = time.perf_counter() - t0
    phases["total"] = time.perf_counter() - start
    jobs = sorted({w.get("slurm_job_id", "") for w in est.workers_} - {""})
    labels = hashlib.sha256(est.labels_.values.astype("int64").tobytes()).hexdigest()
    return {"seconds": phases, "timings": dict(est.timings_), "jobs": jobs, "labels_sha256": labels}


def slurm_suite(run: Any, opts: Any, names: list[str], subjects: int | None) -> None:
    """Local default vs 2 SLURM worker jobs of 1 core, on the same cohort; the overhead in s and as a ratio."""
    if (
        shutil.which("sinfo") is None
        or subprocess.run(["sinfo"], capture_output=True).returncode != 0
    ):
        raise SystemExit(
            "the slurm suite needs a running SLURM: sudo bash ../shared/slurm/start.sh"
        )
    n_subjects = subjects or (3 if opts.quick else 10)
    inp = run.synthetic_input(2, n_subjects, 60 if opts.quick else 150)
    imgs = inp.imgs if isinstance(inp.imgs, list) else [inp.imgs]
    workers = 2
    rows: list[dict[str, Any]] = []
    for name in names:
        cfg = dataclasses.asdict(run.CONFIGS[name])
        labels = {}
        for where in ("local default (threads)", f"SLURM: {workers} jobs x 1 core"):
            store = run.WORK / run._slug(f"slurm-{name}-{inp.name}-{where}")
            shutil.rmtree(store, ignore_errors=True)
            cluster = (
                None
                if where.startswith("local")
                else str(cluster_file(run.WORK / "slurm-cluster", workers))
            )
            print(f"  {name:<10} {inp.name} {where}", end=" ", flush=True)
            m = measure(
                run.SCRIPT.with_name("slurm.py"), "fit_slurm",
                {"imgs": imgs, "config": cfg, "store": str(store), "cluster": cluster, "workers": workers},
                timeout_s=opts.timeout, kill_above=opts.kill_above,
            )  # fmt: skip
            shutil.rmtree(store, ignore_errors=True)
            phases, timings = m.result.get("seconds", {}), m.result.get("timings", {})
            labels[where] = m.result.get("labels_sha256")
            rows.append(
                {"config": name, "input": inp.name, "where": where, "status": m.status,
                 "jobs": ", ".join(m.result.get("jobs", [])), "peak_gib": m.peak_rss / run.GIB, "error": m.error,
                 **phases, **{k: timings.get(k) for k in STEPS}}
            )  # fmt: skip
            print(f"{m.status}: fit {phases.get('fit', float('nan')):.1f} s", flush=True)
            if m.error:
                print("    " + m.error.replace("\n", "\n    "), flush=True)
        local, remote = rows[-2], rows[-1]
        for key in ("fit", "total", *STEPS):
            if local.get(key) and remote.get(key):
                remote[f"{key}_ratio"] = remote[key] / local[key]
                remote[f"{key}_extra"] = remote[key] - local[key]
        remote["same_labels"] = labels[local["where"]] == labels[remote["where"]]
    f1, f2 = run.fmt(".1f"), run.fmt(".2f")
    columns = [("config", "config", run.fmt("")), ("input", "input", run.fmt("")), ("where", "where", run.fmt("")),
               ("status", "status", run.fmt("")), ("workers_up", "workers up (s)", f1),
               ("fit", "fit (s)", f1), ("fit_ratio", "fit / local", f2), ("fit_extra", "fit - local (s)", f1),
               ("shutdown", "shutdown (s)", f1), ("total", "total (s)", f1), ("total_ratio", "total / local", f2),
               *[(s, f"{s} (s)", f1) for s in STEPS], ("same_labels", "same labels", run.fmt("")),
               ("jobs", "SLURM jobs", run.fmt(""))]  # fmt: skip
    run.publish(
        "slurm",
        {"rows": rows},
        [
            "## slurm",
            "",
            markdown_table(rows, columns),
            "",
            "Each fit from an empty store in its own process: the default mask, .nii.gz inputs. Workers up: from "
            "starting the cluster (dask-jobqueue's sbatch) to every worker registered; total = workers up + fit + "
            "shutdown. The local default uses every core of the machine; the SLURM jobs 1 core each, on the same "
            "machine (one node).",
        ],
    )
