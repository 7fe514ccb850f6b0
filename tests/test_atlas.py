"""``transform`` takes any atlas (issue 22, item 4): label values with gaps kept as the ``parcel`` coordinate, a BIDS
look-up table naming them, labels on another grid resampled as nilearn's ``NiftiLabelsMasker`` does."""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from conftest import raise_if_dask_computes, real_scan

from daskparcel import Parcellations
from daskparcel.cli import main
from daskparcel.errors import InputError

pytestmark = pytest.mark.real_data

VALUES = np.array([5, 18, 31, 44, 60, 77, 203])  # an atlas's labels: gaps, not 1..K


def _gap_atlas(shape: tuple[int, ...], affine: np.ndarray) -> nib.Nifti1Image:
    """Slabs labelled with VALUES (in a shuffled order, so label order != spatial order), 0 on the borders."""
    i, j, k = np.indices(shape)
    order = np.array([3, 0, 6, 1, 5, 2, 4])
    labels = VALUES[order[((i * 3) // shape[0] * 3 + (k * 3) // shape[2]) % 7]]
    labels[(i == 0) | (j == 0)] = 0
    return nib.Nifti1Image(labels.astype(np.int16), affine)


def _lut(tmp_path: Path) -> Path:
    """A BIDS look-up table: background, the labels (names, colours) and a label absent from the image."""
    rows = [(0, "Background", "#000000")] + [(int(v), f"region-{v}", "#ff0000") for v in VALUES]
    rows.append((999, "absent", "#00ff00"))
    path = tmp_path / "atlas_dseg.tsv"
    pd.DataFrame(rows, columns=["index", "name", "color"]).to_csv(path, sep="\t", index=False)
    return path


CLEAN = {"smoothing_fwhm": 4.0, "standardize": "zscore_sample", "detrend": True}


@pytest.mark.parametrize("chunk_volumes", [7, None])
def test_gap_atlas_equals_nilearn_labels_masker(tmp_path, chunk_volumes):
    from nilearn.maskers import NiftiLabelsMasker

    scan = real_scan("nitime1")
    img = nib.load(scan)
    atlas, lut = _gap_atlas(img.shape[:3], img.affine), _lut(tmp_path)
    est = Parcellations.from_labels(atlas, lut=lut, chunk_volumes=chunk_volumes, **CLEAN)
    ours = est.transform(scan)
    masker = NiftiLabelsMasker(labels_img=atlas, lut=lut, **CLEAN)
    ref = masker.fit_transform(scan)
    # columns in label order, the label values kept, the look-up table's names
    assert ours.dims == ("time", "parcel") and ours.shape == ref.shape == (40, VALUES.size)
    np.testing.assert_array_equal(ours["parcel"].values, VALUES)
    np.testing.assert_array_equal(
        ours["parcel"].values, [v for k, v in masker.region_ids_.items() if k != "background"]
    )
    assert list(ours["name"].values) == [f"region-{v}" for v in VALUES]
    assert list(ours["name"].values) == [
        n for k, n in masker.region_names_.items() if k != "background"
    ]
    np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    # inverse_transform maps each label value's column back to its voxels, as nilearn's
    back = est.inverse_transform(ours)
    ref_back = masker.inverse_transform(ref).get_fdata()
    np.testing.assert_allclose(back.values, ref_back, rtol=1e-4, atol=1e-4 * np.abs(ref_back).max())


def test_atlas_on_another_grid_is_resampled_as_nilearn(tmp_path):
    from nilearn.maskers import NiftiLabelsMasker

    scan = real_scan("nitime1")
    img = nib.load(scan)
    coarse = img.affine.copy()
    coarse[:3, :3] *= 2.0  # voxels twice as large, half the grid: the labels go to the run's grid
    atlas = _gap_atlas((5, 5, 9), coarse)
    est = Parcellations.from_labels(atlas, lut=_lut(tmp_path), **CLEAN)
    with pytest.warns(
        UserWarning, match=r"labels_img: its grid \(5, 5, 9\) differs from .*resampled"
    ):
        with raise_if_dask_computes(0):  # the labels are resampled, the run is still read lazily
            ours = est.transform(scan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nilearn's own resampling warning
        masker = NiftiLabelsMasker(labels_img=atlas, resampling_target="data", **CLEAN)
        ref = masker.fit_transform(scan)
    assert ref.shape == ours.shape == (40, VALUES.size)
    np.testing.assert_array_equal(ours["parcel"].values, VALUES)
    np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_cli_transform_takes_an_atlas_its_lut_and_another_grid(tmp_path, capsys):
    from nilearn.maskers import NiftiLabelsMasker

    scan = real_scan("nitime1")
    img = nib.load(scan)
    coarse = img.affine.copy()
    coarse[:3, :3] *= 2.0
    atlas = tmp_path / "atlas.nii.gz"
    nib.save(_gap_atlas((5, 5, 9), coarse), atlas)
    lut = _lut(tmp_path)
    out, tables = tmp_path / "signals.zarr", tmp_path / "tables"
    args = ["transform", str(scan), "--labels", str(atlas), "--lut", str(lut), "--out", str(out)]
    code = main([*args, "--smoothing-fwhm", "0", "--tables", str(tables), "--quiet"])
    assert code == 0
    # the CLI says each distinct warning once, on one line
    warned = [line for line in capsys.readouterr().err.splitlines() if "warning:" in line]
    assert len(warned) == 1 and "resampled to the run's grid" in warned[0]
    written = xr.open_zarr(out, consolidated=False)["parcel_signals"]
    np.testing.assert_array_equal(written["parcel"].values, VALUES)
    assert list(written["name"].values) == [f"region-{v}" for v in VALUES]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = NiftiLabelsMasker(labels_img=str(atlas), lut=lut).fit_transform(scan)
    np.testing.assert_allclose(written.values, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    (table,) = tables.rglob("*_timeseries.tsv")
    assert list(pd.read_csv(table, sep="\t").columns) == [f"region-{v}" for v in VALUES]


def test_labels_missing_from_the_lut_are_unknown_as_in_nilearn(tmp_path):
    img = nib.load(real_scan("nitime1"))
    lut = pd.DataFrame({"index": [0, 5, 18], "name": ["Background", "a", "b"]})
    with pytest.warns(UserWarning, match=r"labels \[31, 44, 60, 77, 203\] .* named 'unknown'"):
        est = Parcellations.from_labels(_gap_atlas(img.shape[:3], img.affine), lut=lut)
    assert est.atlas_.names == ["a", "b"] + ["unknown"] * 5


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("index\tlabel\n5\ta\n", r"bad_dseg\.tsv: has no column \['name'\]"),
        ("index\tname\n5\ta\n5\tb\n", r"bad_dseg\.tsv: index \[5\] repeated"),
        ("index\tname\nfive\ta\n", r"bad_dseg\.tsv: column index has non-integer values"),
    ],
)
def test_a_bad_lut_is_refused_before_anything_is_written(tmp_path, content, message):
    img = nib.load(real_scan("nitime1"))
    atlas = tmp_path / "atlas.nii.gz"
    nib.save(_gap_atlas(img.shape[:3], img.affine), atlas)
    lut = tmp_path / "bad_dseg.tsv"
    lut.write_text(content)
    with pytest.raises(InputError, match=message):
        Parcellations.from_labels(atlas, lut=lut)
    out = tmp_path / "out.zarr"
    args = ["transform", str(real_scan("nitime1")), "--labels", str(atlas), "--lut", str(lut)]
    assert main([*args, "--out", str(out), "--quiet"]) == 2
    assert not out.exists()


def test_inverse_transform_refuses_signals_of_other_labels():
    img = nib.load(real_scan("nitime1"))
    est = Parcellations.from_labels(_gap_atlas(img.shape[:3], img.affine))
    other = xr.DataArray(
        np.zeros((3, VALUES.size)), dims=("time", "parcel"), coords={"parcel": VALUES + 1}
    )
    with pytest.raises(InputError, match=r"parcel coordinate \[6, 19.*is not the atlas's labels"):
        est.inverse_transform(other)
    # a plain array is taken in the atlas's label order
    back = est.inverse_transform(np.arange(VALUES.size, dtype=np.float32)[None, :])
    volume = np.asarray(est.labels_img_.dataobj)
    where = volume == VALUES[3]
    assert np.all(back.values[..., 0][where] == 3)


def test_a_label_lost_in_resampling_keeps_its_column_as_nan():
    """nilearn drops a label that has no voxel on the run's grid; here its column stays (NaN), so every run of a
    cohort has the same columns, and the others equal nilearn's."""
    from nilearn.maskers import NiftiLabelsMasker

    scan = real_scan("nitime1")
    img = nib.load(scan)
    fine = img.affine.copy()
    fine[:3, :3] /= 2.0  # voxels half as large: the run's grid samples the even voxels only
    shape = tuple(2 * s for s in img.shape[:3])
    labels = np.asarray(_gap_atlas(shape, fine).dataobj).copy()
    labels[3, 3, 3] = 999  # one odd voxel: lost on the run's grid
    atlas = nib.Nifti1Image(labels, fine)
    est = Parcellations.from_labels(atlas, smoothing_fwhm=None)
    with pytest.warns(UserWarning, match=r"labels \[999\] have no voxel once resampled"):
        with pytest.warns(UserWarning, match="resampled to the run's grid"):
            ours = est.transform(scan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = NiftiLabelsMasker(labels_img=atlas).fit_transform(scan)
    np.testing.assert_array_equal(ours["parcel"].values, [*VALUES, 999])
    assert np.isnan(ours.values[:, -1]).all()
    np.testing.assert_allclose(ours.values[:, :-1], ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
