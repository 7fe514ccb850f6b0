"""Confounds: fMRIPrep-style TSV files, DataFrames and arrays; column selection; n/a filling; errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from daskparcel.errors import InputError
from daskparcel.ingest.confounds import load_confounds

N = 12


@pytest.fixture
def fmriprep_tsv(tmp_path):
    """A small ``*_desc-confounds_timeseries.tsv`` as fMRIPrep writes it (n/a in derivatives' first row)."""
    rng = np.random.default_rng(0)
    table = {}
    for name in ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"):
        values = rng.normal(size=N).cumsum()
        table[name] = values
        deriv = np.r_[np.nan, np.diff(values)]
        table[f"{name}_derivative1"] = deriv
        table[f"{name}_derivative1_power2"] = deriv**2
    table["csf"] = rng.normal(100, 1, size=N)
    table["white_matter"] = rng.normal(200, 1, size=N)
    table["framewise_displacement"] = np.r_[np.nan, rng.random(N - 1)]
    frame = pd.DataFrame(table)
    path = tmp_path / "sub-01_task-rest_desc-confounds_timeseries.tsv"
    frame.to_csv(path, sep="\t", index=False, na_rep="n/a")
    assert "n/a" in path.read_text()
    return path, frame


def test_glob_and_exact_columns_in_given_order(fmriprep_tsv):
    path, frame = fmriprep_tsv
    out = load_confounds(path, N, columns=["trans_?", "rot_?", "csf", "white_matter"])
    expected = frame[
        ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z", "csf", "white_matter"]
    ].to_numpy()
    assert out.shape == (N, 8)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, expected, rtol=1e-12)


def test_first_row_na_of_derivatives_filled_as_nilearn(fmriprep_tsv):
    path, frame = fmriprep_tsv
    out = load_confounds(path, N, columns=["trans_*"])
    cols = [c for c in frame.columns if c.startswith("trans_")]
    assert len(cols) == 9
    expected = frame[cols].to_numpy().copy()
    # nilearn.interfaces.fmriprep.load_confounds_utils.prepare_output: row 0 NaN <- row 1
    nan0 = np.isnan(expected[0])
    expected[0, nan0] = expected[1, nan0]
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, expected, rtol=1e-12)


def test_same_as_nilearn_prepare_output(fmriprep_tsv):
    from nilearn.interfaces.fmriprep.load_confounds_utils import prepare_output

    path, frame = fmriprep_tsv
    cols = ["rot_x", "rot_x_derivative1", "rot_x_derivative1_power2", "csf"]
    _, ref = prepare_output(frame[cols].copy(), demean=False)
    np.testing.assert_allclose(
        load_confounds(path, N, columns=cols), ref[cols].to_numpy(), rtol=1e-12
    )


def test_all_columns_dataframe_array_and_csv(fmriprep_tsv, tmp_path):
    path, frame = fmriprep_tsv
    all_cols = load_confounds(path, N)
    assert all_cols.shape == (N, frame.shape[1])
    np.testing.assert_allclose(load_confounds(frame, N), all_cols)
    arr = np.arange(N * 2, dtype=float).reshape(N, 2)
    np.testing.assert_array_equal(load_confounds(arr, N), arr)
    np.testing.assert_array_equal(load_confounds(arr[:, 0], N), arr[:, :1])
    csv = tmp_path / "conf.csv"
    frame[["csf", "white_matter"]].to_csv(csv, index=False)
    np.testing.assert_allclose(
        load_confounds(csv, N), frame[["csf", "white_matter"]].to_numpy(), rtol=1e-12
    )
    headerless = tmp_path / "conf_noheader.csv"
    np.savetxt(headerless, arr, delimiter=",")
    np.testing.assert_allclose(load_confounds(headerless, N), arr)


def test_missing_column_names_file_column_and_available(fmriprep_tsv):
    path, _ = fmriprep_tsv
    with pytest.raises(InputError) as info:
        load_confounds(path, N, columns=["trans_x", "global_signal"])
    message = str(info.value)
    assert str(path) in message
    assert "global_signal" in message
    assert "white_matter" in message  # the available columns are listed


def test_wrong_length_names_both_lengths(fmriprep_tsv):
    path, _ = fmriprep_tsv
    with pytest.raises(InputError, match=rf"{N} rows but the run has 20 time points"):
        load_confounds(path, 20, columns=["csf"])
    with pytest.raises(InputError, match="3 rows but the run has 5"):
        load_confounds(np.zeros((3, 2)), 5)


def test_other_bad_input(fmriprep_tsv, tmp_path):
    _, frame = fmriprep_tsv
    with pytest.raises(InputError, match="does not exist"):
        load_confounds(tmp_path / "missing.tsv", N)
    with pytest.raises(InputError, match="no column names"):
        load_confounds(np.zeros((N, 2)), N, columns=["a"])
    bad = frame[["csf"]].copy()
    bad.iloc[5, 0] = np.nan
    with pytest.raises(InputError, match=r"csf.*rows \[5\]"):
        load_confounds(bad, N, source="run-1 confounds")
    text = frame[["csf"]].assign(label=["a"] * N)
    with pytest.raises(InputError, match="not numeric"):
        load_confounds(text, N)
    with pytest.raises(InputError, match="pass a numpy array"):
        load_confounds([[1.0]], 1)  # type: ignore[arg-type]
