"""Job files and the CLI end to end: fit, transform from a fit folder, report, run (idempotent, resumable)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import xarray as xr

from daskparcel import datasets
from daskparcel.cli import main
from daskparcel.errors import InputError
from daskparcel.jobs import load_job


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cohort")
    paths, truth = datasets.write_synthetic_nifti(folder, 2, 4, 30, n_parcels=20)
    return paths, truth


def test_cli_fit_writes_every_output_then_transform_from_the_fit_folder(runs, tmp_path, capsys):
    paths, _ = runs
    out = tmp_path / "fit"
    code = main(["fit", *map(str, paths), "--method", "ward", "--n-parcels", "20", "--n-components", "10",
                 "--store", str(tmp_path / "cache"), "--out", str(out), "--quiet"])  # fmt: skip
    assert code == 0
    assert "compression R2" in capsys.readouterr().out
    for name in (
        "labels.nii.gz",
        "mask.nii.gz",
        "mean.nii.gz",
        "r2.nii.gz",
        "fit.json",
        "report.html",
    ):
        assert (out / name).exists(), name
    doc = json.loads((out / "fit.json").read_text())
    assert doc["data"]["n_runs"] == 2 and doc["data"]["n_volumes"] == [30, 30]
    assert doc["parameters"]["method"] == "ward" and doc["metrics"]["n_parcels"] == 20
    assert set(np.unique(np.asarray(nib.load(out / "labels.nii.gz").dataobj))) == set(range(21))
    fitted = xr.open_zarr(out / "parcel_signals.zarr", consolidated=False)["parcel_signals"]
    assert fitted.shape == (60, 20)
    # transform the same runs with the fit folder's labels, mask and parameters: the same parcel signals
    store = tmp_path / "signals.zarr"
    assert (
        main(["transform", *map(str, paths), "--labels", str(out), "--out", str(store), "--quiet"])
        == 0
    )
    again = xr.open_zarr(store, consolidated=False)["parcel_signals"]
    np.testing.assert_allclose(again.values, fitted.values, rtol=1e-5, atol=1e-3)
    # the report can be written again
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.html").exists()


def test_cli_fit_refuses_a_non_empty_out_without_overwrite(runs, tmp_path, capsys):
    out = tmp_path / "fit"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code = main(["fit", str(runs[0][0]), "--method", "kmeans", "--out", str(out)])
    assert code == 2
    assert "not empty; pass --overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"


def _write_job(tmp_path, runs, **extra):
    paths, _ = runs
    job = {
        "inputs": {"files": [str(p) for p in paths]},
        "parcellation": {"method": "kmeans", "n_parcels": 10, "n_components": 10},
        "output": str(tmp_path / "job-out"),
        **extra,
    }
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps(job))  # JSON is YAML
    return path


def test_job_runs_once_then_does_nothing(runs, tmp_path, capsys):
    job = _write_job(tmp_path, runs)
    assert main(["run", str(job)]) == 0
    out = tmp_path / "job-out"
    assert (out / "fit" / "labels.nii.gz").exists() and (out / "done.json").exists()
    log = (out / "job.log").read_text()
    assert "job done" in log
    labels = np.asarray(nib.load(out / "fit" / "labels.nii.gz").dataobj)
    before = (out / "fit" / "fit.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["run", str(job)]) == 0
    assert "already done" in capsys.readouterr().out
    assert (out / "fit" / "fit.json").stat().st_mtime_ns == before
    np.testing.assert_array_equal(
        np.asarray(nib.load(out / "fit" / "labels.nii.gz").dataobj), labels
    )


def test_job_resumes_from_completed_stores(runs, tmp_path):
    """A job that stopped after its stores were written runs again without rewriting them."""
    job = _write_job(tmp_path, runs)
    assert main(["run", str(job)]) == 0
    out = tmp_path / "job-out"
    (out / "done.json").unlink()  # as if the job had been killed before its end
    stores = sorted((out / "cache").glob("signals-*.zarr"))
    stamp = {p: (p / "zarr.json").stat().st_mtime_ns for p in stores}
    assert main(["run", str(job)]) == 0
    assert sorted((out / "cache").glob("signals-*.zarr")) == stores
    assert {p: (p / "zarr.json").stat().st_mtime_ns for p in stores} == stamp


def test_job_file_validation(runs, tmp_path):
    job = load_job(_write_job(tmp_path, runs, where=None))
    assert job.parcellation["method"] == "kmeans" and len(job.files) == 2
    assert job.key == load_job(_write_job(tmp_path, runs, where="tcp://elsewhere:8786")).key


def test_job_writes_the_connectomes_it_asks_for(runs, tmp_path):
    """``connectomes:`` in a job file: each run's relmat and the group mean, equal to nilearn's."""
    import pandas as pd
    from nilearn.connectome import ConnectivityMeasure

    job = _write_job(tmp_path, runs, connectomes=["correlation"])
    assert main(["run", str(job)]) == 0
    fit = tmp_path / "job-out" / "fit"
    series = sorted(fit.rglob("*_stat-mean_timeseries.tsv"))
    relmats = sorted(fit.rglob("sub-*_stat-correlation_relmat.tsv"))
    assert len(series) == 2 and len(relmats) == 2
    for ts, rel in zip(series, relmats, strict=True):
        x = pd.read_csv(ts, sep="\t").to_numpy()
        expected = ConnectivityMeasure(kind="correlation").fit_transform([x])[0]
        np.testing.assert_allclose(pd.read_csv(rel, sep="\t").to_numpy(), expected, atol=1e-6)


def test_job_refuses_an_unknown_connectome_before_writing(runs, tmp_path):
    job = _write_job(tmp_path, runs, connectomes=["coherence"])
    with pytest.raises(InputError, match=r"connectomes='coherence': not a connectome kind"):
        load_job(job)
    assert not (tmp_path / "job-out").exists()


# --------------------------------------------------------------------------- issue 20, item 2
def test_job_mask_is_relative_to_the_job_file(runs, tmp_path, monkeypatch):
    folder = tmp_path / "jobs"
    folder.mkdir()
    img = nib.load(runs[0][0])
    mask = np.zeros(img.shape[:3], np.int8)
    mask[10:30, 10:40, 10:30] = 1
    nib.save(nib.Nifti1Image(mask, img.affine), folder / "mask.nii.gz")
    job = folder / "job.yaml"
    job.write_text(
        json.dumps(
            {
                "inputs": {"files": [str(p) for p in runs[0]]},
                "parcellation": {"method": "kmeans", "mask": "mask.nii.gz"},
                "output": "out",
            }
        )
    )
    monkeypatch.chdir(tmp_path)  # not the job's folder
    loaded = load_job(job)
    assert loaded.parcellation["mask"] == str(folder / "mask.nii.gz")
    assert loaded.output == folder / "out"


def test_job_log_records_a_failure(runs, tmp_path, capsys):
    """A job that fails while running (here: more parcels than voxels) leaves the failure in job.log."""
    paths, _ = runs
    job = tmp_path / "job.yaml"
    job.write_text(
        json.dumps(
            {
                "inputs": {"files": [str(paths[0])]},
                "parcellation": {"method": "kmeans", "n_parcels": 10_000_000, "n_components": 5},
                "output": "out",
            }
        )
    )
    assert main(["run", str(job)]) == 2
    log = (tmp_path / "out" / "job.log").read_text()
    assert "job failed" in log and "n_parcels=10000000" in log


def test_job_log_records_an_interruption(runs, tmp_path):
    """SIGINT while the job runs: exit 130 and job.log says it was interrupted (and how to resume)."""
    import signal
    import subprocess
    import sys
    import time

    paths, _ = runs
    job = tmp_path / "job.yaml"
    job.write_text(
        json.dumps(
            {
                "inputs": {"files": [str(p) for p in paths]},
                "parcellation": {"method": "ward", "n_parcels": 20, "n_components": 10},
                "output": "out",
            }
        )
    )
    log = tmp_path / "out" / "job.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "daskparcel.cli", "run", str(job)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (log.exists() and "runs" in log.read_text()) and time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "job interrupted" in log.read_text()


def test_job_saves_the_performance_report_it_asks_for(runs, tmp_path):
    cluster = tmp_path / "local.yaml"
    cluster.write_text(
        "kind: local\nn_workers: 1\nthreads_per_worker: 2\nprocesses: false\nhost: 127.0.0.1\n"
        'dashboard_address: ":0"\n'
    )
    with pytest.raises(InputError, match="performance report needs a distributed scheduler"):
        load_job(_write_job(tmp_path, runs, performance_report="perf.html"))
    job = _write_job(tmp_path, runs, performance_report="perf.html", where=str(cluster))
    assert main(["run", str(job)]) == 0
    assert "Dask Performance Report" in (tmp_path / "perf.html").read_text()
