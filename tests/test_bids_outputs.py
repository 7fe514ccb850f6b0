"""A fit folder is a BIDS derivative (the validator passes it) that nilearn reads back."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from conftest import real_scan
from nilearn.connectome import ConnectivityMeasure
from scipy import ndimage

from daskparcel import Parcellations, datasets
from daskparcel.cli import main
from daskparcel.outputs.bids import run_entities
from daskparcel.outputs.results import write_fit_outputs


def _validator_errors(folder):
    """Errors of ``bids-validator-deno`` on ``folder`` (the test skips, with the reason, if it cannot start)."""
    exe = shutil.which("bids-validator-deno")
    if exe is None:
        pytest.skip(
            "bids-validator-deno is not installed (pip install bids-validator-deno: the test extra)"
        )
    try:
        version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"bids-validator-deno cannot start: {exc}")
    if version.returncode != 0:
        pytest.skip(f"bids-validator-deno cannot start: {version.stderr.strip()[-300:]}")
    proc = subprocess.run(
        [exe, "--format", "json", str(folder)], capture_output=True, text=True, timeout=300
    )
    issues = json.loads(proc.stdout)["issues"]["issues"]
    return [
        (i["code"], i.get("location"), i.get("subCode")) for i in issues if i["severity"] == "error"
    ]


def _read_tsv(path):
    return pd.read_csv(path, sep="\t", na_values="n/a", keep_default_na=False)


def _float32_series(path):
    """A time series table's values as the float32 signals they were written from (9 digits round-trip)."""
    return _read_tsv(path).to_numpy(np.float32).astype(np.float64)


@pytest.fixture(scope="module")
def single_fit(tmp_path_factory):
    """One synthetic run under a non-BIDS file name, fitted (ward, 20 parcels) and written with a connectome."""
    folder = tmp_path_factory.mktemp("single")
    paths, _ = datasets.write_synthetic_nifti(folder / "data", 1, 4, 30, n_parcels=20)
    scan = paths[0].with_name("scan_01.nii.gz")
    paths[0].rename(scan)
    est = Parcellations(method="ward", n_parcels=20, n_components=10, store=folder / "cache")
    est.fit(scan)
    out = folder / "fit"
    write_fit_outputs(est, scan, out, connectomes=["covariance"], report=False)
    return est, out


#: The fMRIPrep runs of the cohort fixture (one subject with sessions)
COHORT_RUNS = [
    "sub-01/ses-pre/func/sub-01_ses-pre_task-rest_run-1",
    "sub-01/ses-pre/func/sub-01_ses-pre_task-rest_run-2",
    "sub-02/func/sub-02_task-rest_run-1",
    "sub-02/func/sub-02_task-rest_run-2",
    "sub-03/func/sub-03_task-rest_run-1",
    "sub-03/func/sub-03_task-rest_run-2",
]


@pytest.fixture(scope="module")
def cohort_fit(tmp_path_factory):
    """3 subjects x 2 runs in an fMRIPrep layout (one subject with sessions), fitted from the BIDS folder."""
    from daskparcel.ingest.bids import find_bids_runs

    folder = tmp_path_factory.mktemp("cohort")
    paths, _ = datasets.write_synthetic_nifti(folder / "data", 6, 4, 24, n_parcels=12)
    names = COHORT_RUNS
    root = folder / "fmriprep"
    for path, name in zip(paths, names, strict=True):
        target = root / f"{name}_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz"
        target.parent.mkdir(parents=True, exist_ok=True)
        path.rename(target)
        (root / f"{name}_space-MNI152NLin2009cAsym_desc-preproc_bold.json").write_text(
            json.dumps({"RepetitionTime": 2.0})
        )
    runs = find_bids_runs(root)
    est = Parcellations(method="kmeans", n_parcels=12, n_components=8, store=folder / "cache")
    est.fit(runs)
    out = folder / "fit"
    write_fit_outputs(
        est, runs, out, connectomes=["correlation", "tangent", "partial correlation"], report=False
    )
    return est, out


def test_single_run_fit_folder_is_a_valid_bids_derivative(single_fit):
    _, out = single_fit
    assert _validator_errors(out) == []
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "daskparcel"
    atlas = json.loads((out / "atlas-ward20_description.json").read_text())
    assert atlas["AtlasName"] == "ward20" and atlas["License"]
    sidecar = json.loads((out / "atlas-ward20_dseg.json").read_text())
    assert sidecar["SpatialReference"] and sidecar["Parcellation"]["Method"] == "ward"
    assert sidecar["Parameters"]["n_parcels"] == 20 and sidecar["Sources"]
    # the subject comes from the file name; daskparcel's own files are still there
    dseg = out / "sub-scan01" / "anat" / "sub-scan01_atlas-ward20_dseg.nii.gz"
    assert dseg.exists()
    for name in ("labels.nii.gz", "fit.json", "parcel_signals.zarr", "mask.nii.gz"):
        assert (out / name).exists()


def test_look_up_table_rows_sizes_and_centroids(single_fit):
    est, out = single_fit
    lut = _read_tsv(out / "atlas-ward20_dseg.tsv")
    labels_img = nib.load(out / "sub-scan01" / "anat" / "sub-scan01_atlas-ward20_dseg.nii.gz")
    labels = np.asarray(labels_img.dataobj)
    np.testing.assert_array_equal(labels, np.asarray(est.labels_img_.dataobj))
    np.testing.assert_allclose(labels_img.affine, est.labels_img_.affine)
    assert list(lut.columns[:3]) == ["index", "name", "color"]
    assert list(lut["index"]) == list(range(21))
    assert lut["name"][0] == "Background" and lut["name"].is_unique
    assert lut["color"].str.fullmatch(r"#[0-9a-f]{6}").all()
    assert lut["color"][1:].is_unique
    values, counts = np.unique(labels, return_counts=True)
    np.testing.assert_array_equal(lut["size"], counts[np.searchsorted(values, lut["index"])])
    centres = ndimage.center_of_mass(np.ones_like(labels), labels, list(range(1, 21)))
    mm = nib.affines.apply_affine(labels_img.affine, np.array(centres))
    np.testing.assert_allclose(lut[["x", "y", "z"]].to_numpy()[1:], mm, atol=1e-3)


def test_single_run_tables_equal_the_zarr_signals(single_fit):
    _, out = single_fit
    func = out / "sub-scan01" / "func"
    series = _read_tsv(func / "sub-scan01_atlas-ward20_stat-mean_timeseries.tsv")
    lut = _read_tsv(out / "atlas-ward20_dseg.tsv")
    assert list(series.columns) == list(lut["name"][1:])
    stored = xr.open_zarr(out / "parcel_signals.zarr", zarr_format=3, consolidated=False)
    np.testing.assert_array_equal(
        series.to_numpy(np.float32), stored["parcel_signals"].values.astype(np.float32)
    )
    relmat = _read_tsv(func / "sub-scan01_atlas-ward20_stat-covariance_relmat.tsv")
    expected = ConnectivityMeasure(kind="covariance").fit_transform(
        [series.to_numpy(np.float32).astype(np.float64)]
    )[0]
    np.testing.assert_allclose(relmat.to_numpy(), expected, rtol=1e-7)
    fit = json.loads((out / "fit.json").read_text())
    assert fit["bids"]["connectomes"] == ["covariance"]


def test_cohort_from_bids_input_is_valid_with_entities_and_connectomes(cohort_fit):
    _, out = cohort_fit
    assert _validator_errors(out) == []
    label = "kmeans12"
    space = "space-MNI152NLin2009cAsym"
    for sub in ("01", "02", "03"):
        assert (
            out / f"sub-{sub}" / "anat" / f"sub-{sub}_{space}_atlas-{label}_dseg.nii.gz"
        ).exists()
    prefixes = COHORT_RUNS
    series = [
        _float32_series(out / f"{p}_{space}_atlas-{label}_stat-mean_timeseries.tsv")
        for p in prefixes
    ]
    assert all(s.shape == (24, 12) for s in series)
    for kind, stat in [
        ("correlation", "correlation"),
        ("tangent", "tangent"),
        ("partial correlation", "partialcorrelation"),
    ]:
        ref = ConnectivityMeasure(kind=kind)
        expected = ref.fit_transform(series)
        for p, matrix in zip(prefixes, expected, strict=True):
            ours = _read_tsv(out / f"{p}_{space}_atlas-{label}_stat-{stat}_relmat.tsv")
            np.testing.assert_allclose(ours.to_numpy(), matrix, rtol=1e-7, atol=1e-9)
        group = _read_tsv(out / f"atlas-{label}_stat-{stat}_relmat.tsv")
        np.testing.assert_allclose(group.to_numpy(), ref.mean_, rtol=1e-7, atol=1e-9)


def test_run_entities_from_bids_names_else_file_names():
    assert run_entities(["sub-01_ses-2_task-rest_run-3", "sub-RAPIDTIDETEST", "fmri_1"]) == [
        {"sub": "01", "ses": "2", "task": "rest", "run": "3"},
        {"sub": "RAPIDTIDETEST"},
        {"sub": "fmri1"},
    ]
    # runs that would share a name are told apart by run-<n>
    assert run_entities(["000-bold", "001-bold"]) == [
        {"sub": "bold", "run": "1"},
        {"sub": "bold", "run": "2"},
    ]


@pytest.mark.real_data
def test_nilearn_reads_the_atlas_back_rapidtide(tmp_path):
    """NiftiLabelsMasker(labels_img=dseg, lut=tsv) with the fit's preprocessing gives the written series."""
    from nilearn.maskers import NiftiLabelsMasker

    scan, mask = real_scan("rapidtide"), real_scan("rapidtide_mask")
    params = {"smoothing_fwhm": 6.0, "standardize": "zscore_sample", "detrend": True}
    est = Parcellations(
        method="kmeans", n_parcels=50, mask=mask, n_components=30, store=tmp_path / "c", **params
    )
    est.fit(scan)
    out = tmp_path / "fit"
    write_fit_outputs(est, scan, out, report=False)
    dseg = out / "sub-RAPIDTIDETEST" / "anat" / "sub-RAPIDTIDETEST_atlas-kmeans50_dseg.nii.gz"
    lut = out / "atlas-kmeans50_dseg.tsv"
    masker = NiftiLabelsMasker(labels_img=dseg, lut=lut, mask_img=out / "mask.nii.gz", **params)
    ref = masker.fit_transform(scan)
    ours = _read_tsv(
        out
        / "sub-RAPIDTIDETEST"
        / "func"
        / "sub-RAPIDTIDETEST_atlas-kmeans50_stat-mean_timeseries.tsv"
    )
    assert list(masker.region_names_.values()) == list(ours.columns)
    np.testing.assert_allclose(ours.to_numpy(), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_cli_fit_and_transform_write_tables_and_connectomes(single_fit, tmp_path):
    _, fit_folder = single_fit
    scan = next((fit_folder.parent / "data").glob("scan_01.nii.gz"))
    out = tmp_path / "signals.zarr"
    tables = tmp_path / "tables"
    code = main(
        [
            "transform", str(scan), "--labels", str(fit_folder), "--out", str(out),
            "--tables", str(tables), "--connectome", "correlation", "--quiet",
        ]
    )  # fmt: skip
    assert code == 0
    stored = xr.open_zarr(out, zarr_format=3, consolidated=False)["parcel_signals"].values
    func = tables / "sub-scan01" / "func"
    series = _read_tsv(func / "sub-scan01_atlas-ward20_stat-mean_timeseries.tsv")
    np.testing.assert_array_equal(series.to_numpy(np.float32), stored.astype(np.float32))
    relmat = _read_tsv(func / "sub-scan01_atlas-ward20_stat-correlation_relmat.tsv")
    expected = ConnectivityMeasure(kind="correlation").fit_transform(
        [series.to_numpy(np.float32).astype(np.float64)]
    )[0]
    np.testing.assert_allclose(relmat.to_numpy(), expected, rtol=1e-7)
    assert _validator_errors(tables) == []


def test_cli_bad_connectome_exits_2_before_anything_is_written(single_fit, tmp_path):
    _, fit_folder = single_fit
    scan = next((fit_folder.parent / "data").glob("scan_01.nii.gz"))
    out = tmp_path / "fit"
    proc = subprocess.run(
        [
            sys.executable, "-m", "daskparcel.cli", "fit", str(scan), "--method", "ward",
            "--n-parcels", "5", "--out", str(out), "--connectome", "pearson",
        ],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pearson" in lines[0] and "choose among" in lines[0], proc.stderr
    assert not out.exists() and not out.with_name("fit.partial").exists()


# ------------------------------------------------------------------------------------ NIfTI-Zarr
@pytest.mark.parametrize("source", ["store", "nifti_blocks"])
def test_nifti_zarr_export_round_trips_through_the_nifti_zarr_package(source, tmp_path):
    niizarr = pytest.importorskip("niizarr", reason="nifti-zarr is not installed (the test extra)")
    from daskparcel import convert, open_nifti
    from daskparcel.outputs.nifti_zarr import to_nifti_zarr

    scan = real_scan("nipy")
    original = nib.load(scan)
    if source == "store":
        convert([scan], tmp_path / "run-store")
        data = tmp_path / "run-store"
    else:
        data = open_nifti(scan, chunk_volumes=3)  # 7 blocks of volumes, the last one short
    path = to_nifti_zarr(data, tmp_path / "run.nii.zarr")
    try:  # the OME-Zarr metadata, checked by nifti-zarr's "validate" extra when installed
        import ome_zarr_models
        import zarr
    except ImportError:
        pass
    else:
        image = ome_zarr_models.open_ome_zarr(zarr.open_group(path, mode="r"))
        assert type(image).__name__ == "Image"
    back = niizarr.zarr2nii(path)
    np.testing.assert_array_equal(
        np.asarray(back.dataobj, dtype=np.float32), original.get_fdata(dtype=np.float32)
    )
    np.testing.assert_allclose(back.header.get_best_affine(), original.affine, atol=1e-6)
    ours, theirs = back.header, original.header
    assert ours.get_data_dtype() == np.float32
    for field in ("dim", "pixdim", "xyzt_units", "qform_code", "sform_code", "srow_x", "srow_y",
                  "srow_z", "quatern_b", "quatern_c", "quatern_d", "qoffset_x", "descrip"):  # fmt: skip
        np.testing.assert_array_equal(ours[field], theirs[field], err_msg=field)


def test_nifti_zarr_input_gives_the_same_signals_as_the_nifti(tmp_path):
    pytest.importorskip("niizarr", reason="nifti-zarr is not installed (the test extra)")
    from daskparcel.outputs.nifti_zarr import open_nifti_zarr, to_nifti_zarr

    scan = real_scan("nipy")
    img = nib.load(scan)
    path = to_nifti_zarr(scan, tmp_path / "run.nii.zarr")
    run = open_nifti_zarr(path)
    assert run["bold"].dims == ("x", "y", "z", "t") and run.attrs["t_r"] == pytest.approx(2.0)
    np.testing.assert_array_equal(run["bold"].values, img.get_fdata(dtype=np.float32))
    labels = np.zeros(img.shape[:3], np.int32)
    labels[2:15, 2:19, :] = 1 + (np.arange(13)[:, None, None] // 4)
    est = Parcellations.from_labels(nib.Nifti1Image(labels, img.affine), smoothing_fwhm=4.0)
    np.testing.assert_allclose(
        np.asarray(est.transform(run)), np.asarray(est.transform(scan)), rtol=1e-6
    )


def test_nifti_zarr_bad_paths_are_refused(tmp_path):
    pytest.importorskip("niizarr", reason="nifti-zarr is not installed (the test extra)")
    from daskparcel.errors import InputError
    from daskparcel.outputs.nifti_zarr import open_nifti_zarr, to_nifti_zarr

    with pytest.raises(
        InputError, match=r"run\.zarr: a NIfTI-Zarr image is a folder named \*\.nii\.zarr"
    ):
        to_nifti_zarr(real_scan("nipy"), tmp_path / "run.zarr")
    assert not (tmp_path / "run.zarr").exists()
    (tmp_path / "empty.nii.zarr").mkdir()
    with pytest.raises(InputError, match=r"empty\.nii\.zarr: not a NIfTI-Zarr image"):
        open_nifti_zarr(tmp_path / "empty.nii.zarr")


def test_cli_convert_nifti_zarr(tmp_path, capsys):
    niizarr = pytest.importorskip("niizarr", reason="nifti-zarr is not installed (the test extra)")
    scan = real_scan("nitime1")
    out = tmp_path / "fmri1.nii.zarr"
    assert main(["convert", str(scan), "--out", str(out), "--format", "nifti-zarr"]) == 0
    assert "NIfTI-Zarr image" in capsys.readouterr().out
    np.testing.assert_array_equal(
        np.asarray(niizarr.zarr2nii(out).dataobj, dtype=np.float32),
        nib.load(scan).get_fdata(dtype=np.float32),
    )
    code = main(
        ["convert", str(scan), str(real_scan("nitime2")), "--out", str(tmp_path / "two.nii.zarr"),
         "--format", "nifti-zarr"]
    )  # fmt: skip
    assert code == 2 and not (tmp_path / "two.nii.zarr").exists()


def test_look_up_table_keeps_label_values_with_gaps_and_an_oblique_affine():
    from daskparcel.errors import InputError
    from daskparcel.outputs.bids import look_up_table

    rng = np.random.default_rng(0)
    labels = rng.choice([0, 5, 18, 31], size=(6, 7, 5)).astype(np.int16)
    affine = np.array([[2.0, 0.3, 0, -10], [0, 2.5, 0.2, 4], [0.1, 0, 3.0, 7], [0, 0, 0, 1]])
    lut = look_up_table(nib.Nifti1Image(labels, affine))
    assert list(lut["index"]) == [0, 5, 18, 31]
    assert list(lut["name"]) == ["Background", "parcel005", "parcel018", "parcel031"]
    assert list(lut["size"]) == [int((labels == k).sum()) for k in (0, 5, 18, 31)]
    for row, k in zip(range(1, 4), (5, 18, 31), strict=True):
        ijk = np.argwhere(labels == k).mean(axis=0)
        np.testing.assert_allclose(
            lut.loc[row, ["x", "y", "z"]], affine[:3, :3] @ ijk + affine[:3, 3]
        )
    with pytest.raises(InputError, match="labels_img: a labels image must be 3D with labels >= 0"):
        look_up_table(nib.Nifti1Image(-np.ones((2, 2, 2), np.int16), np.eye(4)))


def test_nilearn_plots_the_dseg_with_the_lut_colours(single_fit):
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from nilearn import plotting

    _, out = single_fit
    lut = _read_tsv(out / "atlas-ward20_dseg.tsv")
    dseg = out / "sub-scan01" / "anat" / "sub-scan01_atlas-ward20_dseg.nii.gz"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        display = plotting.plot_roi(dseg, cmap=lut, bg_img=out / "mean.nii.gz")
    assert not [w for w in caught if "color" in str(w.message)], [str(w.message) for w in caught]
    # nilearn builds its colormap from the table's colours (background row left out), from first to last
    image = display.axes["x"].ax.get_images()[-1]
    assert image.cmap.name == "custom_colormap"
    assert matplotlib.colors.to_hex(image.cmap(0.0)) == lut["color"][1]
    assert matplotlib.colors.to_hex(image.cmap(1.0)) == lut["color"].iloc[-1]
    plt.close("all")


def test_cli_fit_with_tangent_on_one_run_exits_2_and_writes_nothing(single_fit, tmp_path, capsys):
    _, fit_folder = single_fit
    scan = next((fit_folder.parent / "data").glob("scan_01.nii.gz"))
    out = tmp_path / "fit"
    code = main(
        ["fit", str(scan), "--method", "ward", "--n-parcels", "5", "--n-components", "5",
         "--store", str(fit_folder.parent / "cache"), "--out", str(out), "--connectome", "tangent",
         "correlation", "--quiet"]
    )  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'tangent': one run" in err[0] and "give two runs" in err[0], err
    assert not out.exists() and not out.with_name("fit.partial").exists()


def test_the_report_draws_the_group_connectomes(cohort_fit):
    """A fit folder with connectomes: its report shows each group matrix (issue 22, item 2)."""
    from daskparcel.outputs.report import render_report

    _, out = cohort_fit
    page = render_report(out)
    kinds = sorted(
        p.name.split("_stat-")[1][: -len("_relmat.tsv")] for p in out.glob("atlas-*_relmat.tsv")
    )
    assert kinds == ["correlation", "partialcorrelation", "tangent"]
    for kind in kinds:
        section = page.split(f"<h3>Group connectome ({kind})</h3>")[1].split("<h3>")[0]
        assert '<img src="data:image/png;base64,' in section, section[:300]
