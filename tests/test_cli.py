"""The daskparcel command: help for each subcommand, exit codes, one-line errors, nothing left after failure."""

from __future__ import annotations

import re
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from conftest import real_scan

import daskparcel as dp
from daskparcel.cli import build_parser, main

SUBCOMMANDS = list(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]


def test_console_script_help():
    out = subprocess.run(
        [sys.executable, "-m", "daskparcel.cli", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0
    for name in ("convert", "demo"):
        assert name in out.stdout


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_each_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    assert "usage: daskparcel " + name in capsys.readouterr().out


def test_convert_writes_a_store(tmp_path, capsys):
    code = main(["convert", str(real_scan("nipy")), "--out", str(tmp_path / "s"), "--quiet"])
    assert code == 0
    assert "run store" in capsys.readouterr().out
    ds = dp.open_store(tmp_path / "s")
    np.testing.assert_array_equal(
        ds["bold"].values, nib.load(real_scan("nipy")).get_fdata(dtype=np.float32)
    )


def test_bad_input_exits_2_with_one_line_and_nothing_written(tmp_path):
    bad = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((3, 3, 3), np.float32), np.eye(4)), bad)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "daskparcel.cli", "convert", str(bad), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "vol.nii.gz" in lines[0] and "3D image" in lines[0] and "Traceback" not in proc.stderr
    assert not out.exists()


# ------------------------------------------------------------------- fit folder -> transform (issue 20, item 1)
def _fit_nitime(tmp_path, *words):
    out = tmp_path / "fit"
    code = main(["fit", str(real_scan("nitime1")), "--method", "ward", "--n-parcels", "20",
                 "--n-components", "10", "--mask-strategy", "background", "--store", str(tmp_path / "cache"),
                 "--out", str(out), "--quiet", *words])  # fmt: skip
    assert code == 0
    return out


def test_transform_from_a_fit_folder_takes_the_fits_smoothing(tmp_path):
    """The fit's --smoothing-fwhm 2 carries over: transform --labels FITDIR equals the fit's parcel signals."""
    import xarray as xr

    out = _fit_nitime(tmp_path, "--smoothing-fwhm", "2", "--detrend")
    fitted = xr.open_zarr(out / "parcel_signals.zarr", consolidated=False)["parcel_signals"]
    store = tmp_path / "signals.zarr"
    assert main(["transform", str(real_scan("nitime1")), "--labels", str(out), "--out", str(store),
                 "--quiet"]) == 0  # fmt: skip
    again = xr.open_zarr(store, consolidated=False)["parcel_signals"]
    np.testing.assert_allclose(again.values, fitted.values, rtol=1e-5, atol=1e-3)


def test_transform_explicit_no_smoothing_overrides_the_fit(tmp_path):
    """An explicit --smoothing-fwhm 0 (or none) means no smoothing: nilearn's NiftiLabelsMasker unsmoothed."""
    import xarray as xr
    from nilearn.maskers import NiftiLabelsMasker

    out = _fit_nitime(tmp_path, "--smoothing-fwhm", "2")
    masker = NiftiLabelsMasker(
        str(out / "labels.nii.gz"),
        mask_img=str(out / "mask.nii.gz"),
        smoothing_fwhm=None,
        standardize=None,
    )
    expected = masker.fit_transform(str(real_scan("nitime1")))
    for word in ("0", "none"):
        store = tmp_path / f"signals-{word}.zarr"
        assert main(["transform", str(real_scan("nitime1")), "--labels", str(out), "--out", str(store),
                     "--smoothing-fwhm", word, "--quiet"]) == 0  # fmt: skip
        got = xr.open_zarr(store, consolidated=False)["parcel_signals"].values
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-3)


# ------------------------------------------------------------ one parameter table (issue 20, item 15)
def test_every_estimator_parameter_has_a_flag_and_a_job_key():
    import inspect

    from daskparcel.clustering import METHODS
    from daskparcel.jobs import MASK_STRATEGIES as JOB_STRATEGIES
    from daskparcel.jobs import PARAMETERS
    from daskparcel.preprocessing.masking import MASK_STRATEGIES

    names = set(inspect.signature(dp.Parcellations).parameters) - {"store", "client"}
    assert {p.name for p in PARAMETERS} == names
    assert (
        next(p for p in PARAMETERS if p.name == "method").choices == tuple(METHODS)
        and JOB_STRATEGIES == MASK_STRATEGIES
    )
    fit = build_parser()._subparsers._group_actions[0].choices["fit"]  # type: ignore[union-attr]
    flags = {s for a in fit._actions for s in a.option_strings}
    for name in names:
        assert "--" + name.replace("_", "-") in flags, name


def test_fit_flags_reach_the_estimator(tmp_path):
    """--mask-args (JSON or key=value), --scaling, --n-iter, --kmeans-method, --verbose: recorded and used."""
    import json

    from nilearn.masking import compute_epi_mask

    out = tmp_path / "fit"
    code = main(["fit", str(real_scan("nitime1")), "--method", "rena", "--n-parcels", "30",
                 "--n-components", "5", "--mask-args", "lower_cutoff=0.2 upper_cutoff=0.9 connected=false opening=0",
                 "--scaling", "--n-iter", "3", "--kmeans-method", "lloyd", "--verbose", "1",
                 "--no-standardize-confounds", "--out", str(out), "--quiet"])  # fmt: skip
    assert code == 0
    params = json.loads((out / "fit.json").read_text())["parameters"]
    assert params["mask_args"] == {
        "lower_cutoff": 0.2,
        "upper_cutoff": 0.9,
        "connected": False,
        "opening": 0,
    }
    assert params["scaling"] is True and params["n_iter"] == 3 and params["verbose"] == 1
    assert params["kmeans_method"] == "lloyd" and params["standardize_confounds"] is False
    expected = compute_epi_mask(
        str(real_scan("nitime1")), lower_cutoff=0.2, upper_cutoff=0.9, connected=False, opening=0
    )
    np.testing.assert_array_equal(
        np.asarray(nib.load(out / "mask.nii.gz").dataobj) > 0, expected.get_fdata() > 0
    )


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (
            ["--mask-args", "{bad json"],
            r"--mask-args \{bad json: must be a JSON object .*not valid JSON",
        ),
        (
            ["--mask-args", "opening"],
            r"--mask-args opening: must be a JSON object or key=value words \('opening' is not",
        ),
        (
            ["--smoothing-fwhm", "4mm"],
            r"--smoothing-fwhm 4mm: must be >= 0 \(a FWHM in mm\), fast, or none",
        ),
        (["--n-iter", "0"], r"--n-iter 0: must be an integer >= 1"),
        (["--standardize", "yes"], r"--standardize yes: must be one of none"),
        (["--kmeans-method", "fast"], r"--kmeans-method fast: must be one of minibatch"),
        (
            ["--connectivity", "nograph.npz"],
            r"--connectivity nograph\.npz: must be an existing file \(nograph\.npz does not exist",
        ),
    ],
)
def test_bad_flag_values_exit_2_with_one_line(tmp_path, capsys, words, message):
    import re

    out = tmp_path / "out"
    code = main(["fit", str(real_scan("nitime1")), "--method", "kmeans", "--out", str(out), *words])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and re.search(message, err[0]), err
    assert not out.exists()


# ------------------------------------------------------- output locations checked first (issue 20, item 7)
@pytest.mark.parametrize("command", ["fit", "transform", "convert"])
def test_out_dot_is_refused_and_nothing_is_removed(tmp_path, monkeypatch, capsys, command):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("mine")
    words = {"fit": ["--method", "kmeans"], "transform": ["--labels", str(tmp_path / "keep.txt")]}
    code = main(
        [command, str(real_scan("nitime1")), *words.get(command, []), "--out", ".", "--overwrite"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "--out .: is the current folder" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_read_only_out_is_refused_before_reading(tmp_path, capsys):
    import os

    if os.geteuid() == 0:
        pytest.skip(
            "root writes into read-only folders; the /proc cases of test_bad_inputs cover root"
        )
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        code = main(
            ["fit", str(real_scan("nitime1")), "--method", "kmeans", "--out", str(folder / "o")]
        )
    finally:
        folder.chmod(0o755)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "cannot write" in err[0], err


# -------------------------------------------------------------------- progress (issue 20, item 11)
def test_fit_without_a_terminal_prints_one_timed_line_per_step(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "daskparcel.cli", "fit", str(real_scan("nitime1")), "--method", "ward",
         "--n-parcels", "20", "--n-components", "10", "--mask-strategy", "background",
         "--out", str(tmp_path / "fit")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for step in ("estimator INFO: mask", "estimator INFO: signals", "estimator INFO: reduction",
                 "estimator INFO: clustering", " INFO: outputs"):  # fmt: skip
        assert re.search(rf"daskparcel\.?{step}: \d+\.\d s", proc.stderr), proc.stderr
    assert re.search(r"ward: clustering \d+ voxels into 20 parcels", proc.stderr), proc.stderr


@pytest.mark.parametrize(("verbose", "levels"), [(0, set()), (1, {"INFO"}), (2, {"INFO", "DEBUG"})])
def test_verbose_is_nilearns_through_logging(tmp_path, caplog, verbose, levels):
    """verbose=0 logs nothing, 1 each step of fit, 2 the details too (as nilearn's verbose)."""
    est = dp.Parcellations(
        method="ward", n_parcels=20, n_components=10, mask_strategy="background",
        store=tmp_path / "cache", verbose=verbose,
    )  # fmt: skip
    est.fit(str(real_scan("nitime1")))
    records = [r for r in caplog.records if r.name == "daskparcel.estimator"]
    assert {r.levelname for r in records} == levels
    steps = [r.getMessage().split(":")[0] for r in records if r.levelname == "INFO"]
    assert steps == (["mask", "signals", "reduction", "ward", "clustering"] if verbose else [])


def test_fit_saves_dasks_performance_report(tmp_path):
    """--performance-report FILE.html: the fit's task stream and worker profiles, from a cluster file."""
    cluster = tmp_path / "local.yaml"
    cluster.write_text(
        "kind: local\nn_workers: 1\nthreads_per_worker: 2\nprocesses: false\nhost: 127.0.0.1\n"
        'dashboard_address: ":0"\n'
    )
    report = tmp_path / "perf.html"
    args = ["fit", str(real_scan("nitime1")), "--method", "ward", "--n-parcels", "10",
            "--n-components", "5", "--mask-strategy", "background", "--out", str(tmp_path / "fit"),
            "--quiet"]  # fmt: skip
    # refused before any read without a distributed scheduler, or with another suffix
    assert main([*args, "--performance-report", str(report)]) == 2
    assert (
        main([*args, "--cluster", str(cluster), "--performance-report", str(tmp_path / "p.txt")])
        == 2
    )
    assert not (tmp_path / "fit").exists() and not report.exists()
    assert main([*args, "--cluster", str(cluster), "--performance-report", str(report)]) == 0
    page = report.read_text()
    assert "Dask Performance Report" in page and "Task Stream" in page
