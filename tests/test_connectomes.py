"""Connectomes of parcel signals equal nilearn's ConnectivityMeasure, per run and for the group."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from nilearn.connectome import ConnectivityMeasure

import daskparcel
from daskparcel.errors import InputError
from daskparcel.outputs.connectomes import KINDS, check_kinds, connectome


def _runs(n_runs=4, n_time=60, n_parcels=7, seed=0):
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(n_parcels, n_parcels))
    return [
        rng.normal(size=(n_time + 5 * i, n_parcels)) @ mixing + rng.normal(size=n_parcels) * 10
        for i in range(n_runs)
    ]


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_equals_nilearn_per_run_and_group(kind):
    runs = _runs()
    ref = ConnectivityMeasure(kind=kind)
    expected = ref.fit_transform(runs)
    ours = connectome(runs, kind=kind)
    assert ours.matrices.dims == ("run", "parcel_i", "parcel_j")
    assert ours.matrices.shape == expected.shape
    np.testing.assert_allclose(ours.matrices.values, expected, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(ours.mean.values, ref.mean_, rtol=1e-7, atol=1e-9)


def test_lazy_xarray_runs_keep_their_names_and_parcel_labels():
    runs = _runs(n_runs=2)
    arrays = [
        xr.DataArray(
            da.from_array(r, chunks=(20, -1)),
            dims=("time", "parcel"),
            coords={
                "parcel": np.arange(10, 10 + r.shape[1]),
                "run": ("time", np.full(r.shape[0], f"sub-0{i}", dtype=object)),
            },
        )
        for i, r in enumerate(runs)
    ]
    ours = daskparcel.connectome(arrays, kind="partial correlation")
    assert list(ours.matrices["run"].values) == ["sub-00", "sub-01"]
    assert list(ours.matrices["parcel_i"].values) == list(range(10, 17))
    expected = ConnectivityMeasure(kind="partial correlation").fit_transform(runs)
    np.testing.assert_allclose(ours.matrices.values, expected, rtol=1e-7, atol=1e-9)


def test_single_run_array():
    (run,) = _runs(n_runs=1)
    expected = ConnectivityMeasure(kind="correlation").fit_transform([run])
    np.testing.assert_allclose(connectome(run).matrices.values, expected, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize(
    ("signals", "kind", "match"),
    [
        (_runs(2), "pearson", r"kind='pearson': not a connectome kind; choose among"),
        (_runs(1), "tangent", r"kind='tangent': one run given; .* give two runs or more"),
        ([np.zeros((10, 3)), np.zeros((10, 4))], "covariance", r"different numbers of parcels"),
        ([np.zeros((1, 3))], "covariance", r"signals\[0\] .*1 time point"),
        ([], "covariance", r"signals: an empty list"),
        ("runs.tsv", "covariance", r"signals: a str; give a \(time, parcel\) array"),
    ],
)
def test_bad_input_is_refused(signals, kind, match):
    with pytest.raises(InputError, match=match):
        connectome(signals, kind=kind)


def test_kinds_are_normalised_and_deduplicated():
    assert check_kinds(["partial_correlation", "Correlation", "correlation"]) == [
        "partial correlation",
        "correlation",
    ]
    assert check_kinds(None) == []
