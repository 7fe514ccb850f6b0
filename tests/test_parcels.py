"""Parcel means and expansion: against numpy bincount, scikit-learn FeatureAgglomeration and nilearn."""

from __future__ import annotations

import logging

import dask.array as da
import nibabel as nib
import numpy as np
import pytest
import xarray as xr
from conftest import raise_if_dask_computes, real_scan
from sklearn.cluster import FeatureAgglomeration, KMeans

from daskparcel.errors import InputError
from daskparcel.parcels import expand, parcel_means, to_volumes

N_VOXELS, N_TIME, K = 230, 31, 12
CHUNKINGS = [
    (-1, -1),  # one block
    (50, -1),  # the signals contract: voxel blocks x full time
    (-1, 8),  # volume-major: all voxels, blocks of time points
    (37, 9),  # both
]


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(N_VOXELS, N_TIME)) * 5 + 100).astype(np.float32)
    labels = rng.integers(0, K + 1, size=N_VOXELS)  # 0 = in no parcel
    labels[:K] = np.arange(1, K + 1)  # every parcel 1..K present
    return x, labels


def make_signals(x: np.ndarray, chunks: tuple[int, int]) -> xr.DataArray:
    run = np.repeat([0, 1], [N_TIME // 2, N_TIME - N_TIME // 2])
    return xr.DataArray(
        da.from_array(x, chunks=chunks),
        dims=("voxel", "time"),
        coords={"run": ("time", run), "time": np.arange(x.shape[1]) * 2.0},
    )


def bincount_means(x: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Reference: (time, parcel) means with np.bincount, in float64; NaN for an empty parcel."""
    counts = np.bincount(labels, minlength=k + 1)[1:].astype(float)
    out = np.empty((x.shape[1], k))
    for t in range(x.shape[1]):
        out[t] = np.bincount(labels, weights=x[:, t].astype(np.float64), minlength=k + 1)[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        return out / counts


@pytest.mark.parametrize("chunks", CHUNKINGS)
def test_parcel_means_equal_bincount(data, chunks) -> None:
    x, labels = data
    signals = make_signals(x, chunks)
    with raise_if_dask_computes():
        means = parcel_means(signals, labels)
    assert means.dims == ("time", "parcel")
    assert isinstance(means.data, da.Array)
    assert means.dtype == np.float32
    np.testing.assert_array_equal(means["parcel"].values, np.arange(1, K + 1))
    np.testing.assert_array_equal(means["run"].values, signals["run"].values)
    np.testing.assert_array_equal(means["time"].values, signals["time"].values)
    np.testing.assert_allclose(means.values, bincount_means(x, labels, K), rtol=1e-6)


@pytest.mark.parametrize("chunks", CHUNKINGS[1:3])
def test_parcel_means_cohorts_method(data, chunks) -> None:
    x, labels = data
    means = parcel_means(make_signals(x, chunks), labels, method="cohorts")
    np.testing.assert_allclose(means.values, bincount_means(x, labels, K), rtol=1e-6)


def test_parcel_means_numpy_backed(data) -> None:
    x, labels = data
    signals = xr.DataArray(x, dims=("voxel", "time"))
    np.testing.assert_allclose(
        parcel_means(signals, labels).values, bincount_means(x, labels, K), rtol=1e-6
    )


def test_parcel_means_transposed_input(data) -> None:
    x, labels = data
    signals = make_signals(x, (50, -1)).transpose("time", "voxel")
    np.testing.assert_allclose(
        parcel_means(signals, labels).values, bincount_means(x, labels, K), rtol=1e-6
    )


@pytest.mark.parametrize("chunks", [(50, -1), (-1, 8)])
def test_empty_parcels_are_nan(data, chunks) -> None:
    x, labels = data
    labels = labels.copy()
    labels[labels == 3] = 0  # parcel 3 now empty, and parcels K+1, K+2 too
    means = parcel_means(make_signals(x, chunks), labels, n_parcels=K + 2).values
    assert means.shape == (N_TIME, K + 2)
    assert np.isnan(means[:, [2, K, K + 1]]).all()
    keep = [k for k in range(K) if k != 2]
    np.testing.assert_allclose(means[:, keep], bincount_means(x, labels, K)[:, keep], rtol=1e-6)


def test_label_zero_voxels_are_ignored(data) -> None:
    x, labels = data
    x2 = x.copy()
    x2[labels == 0] = 1e6  # would change every mean if background voxels were counted
    a = parcel_means(make_signals(x, (50, -1)), labels).values
    b = parcel_means(make_signals(x2, (50, -1)), labels).values
    np.testing.assert_array_equal(a, b)


def test_parcel_means_logs_flox_method(data, caplog) -> None:
    x, labels = data
    with caplog.at_level(logging.DEBUG, logger="daskparcel.parcels"):
        parcel_means(make_signals(x, (50, -1)), labels)
    assert any("method=map-reduce" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("chunks", [(50, -1), (-1, 8)])
def test_equal_feature_agglomeration(data, chunks) -> None:
    """transform / inverse_transform = scikit-learn's FeatureAgglomeration(pooling_func=mean)."""
    x, _ = data
    x_samples = x.T.astype(np.float64)  # scikit-learn: (n_samples=time, n_features=voxel)
    agglo = FeatureAgglomeration(n_clusters=K, pooling_func=np.mean).fit(x_samples)
    labels = agglo.labels_ + 1
    with raise_if_dask_computes():
        means = parcel_means(make_signals(x, chunks), labels)
        back = expand(means, labels, voxel_chunks=40)
    np.testing.assert_allclose(means.values, agglo.transform(x_samples), rtol=1e-5)
    assert back.dims == ("voxel", "time")
    assert back.chunks == ((40,) * 5 + (30,), (N_TIME,))
    np.testing.assert_allclose(
        back.values, agglo.inverse_transform(means.values.astype(np.float64)).T, rtol=1e-6
    )


def test_expand_indexing_and_coords(data) -> None:
    x, labels = data
    means = parcel_means(make_signals(x, (50, -1)), labels)
    with raise_if_dask_computes():
        back = expand(means, labels)
    assert isinstance(back.data, da.Array)
    assert back.dtype == np.float32
    assert len(back.chunks[1]) == 1  # full time axis in each chunk
    np.testing.assert_array_equal(back["run"].values, means["run"].values)
    m = means.values
    expected = np.where(labels[:, None] > 0, m.T[np.maximum(labels, 1) - 1], 0.0)
    np.testing.assert_array_equal(back.values, expected)


def test_expand_errors(data) -> None:
    x, labels = data
    means = parcel_means(make_signals(x, (50, -1)), labels)
    with pytest.raises(InputError, match=r"parcel_signals: has 12 parcels but max\(labels\) = 11"):
        expand(means, np.minimum(labels, K - 1))
    with pytest.raises(InputError, match=r"parcel_signals: expected an xarray\.DataArray"):
        expand(means.values, labels)  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"'parcel' coordinate is not 1\.\.K"):
        expand(means.assign_coords(parcel=np.arange(K)[::-1]), labels)
    with pytest.raises(InputError, match="expected one label per voxel"):
        expand(means, labels.reshape(10, 23))


def test_parcel_means_errors(data) -> None:
    x, labels = data
    signals = make_signals(x, (50, -1))
    with pytest.raises(InputError, match=r"labels: shape \(229,\), expected \(230,\)"):
        parcel_means(signals, labels[:-1])
    with pytest.raises(InputError, match=r"negative values.*pass labels \+ 1"):
        parcel_means(signals, labels - 1)
    with pytest.raises(InputError, match="n_parcels=5: smaller than the largest label 12"):
        parcel_means(signals, labels, n_parcels=5)
    with pytest.raises(InputError, match="n_parcels=0: must be an integer >= 1"):
        parcel_means(signals, np.zeros(N_VOXELS, int))
    with pytest.raises(InputError, match="non-integer values"):
        parcel_means(signals, labels + 0.5)
    with pytest.raises(InputError, match=r"dims are \('a', 'b'\)"):
        parcel_means(signals.rename(voxel="a", time="b"), labels)
    with pytest.raises(InputError, match="unknown flox method"):
        parcel_means(signals, labels, method="blockwise")  # type: ignore[arg-type]
    # float labels with integer values are accepted
    np.testing.assert_array_equal(
        parcel_means(signals, labels.astype(float)).values, parcel_means(signals, labels).values
    )


@pytest.mark.parametrize("time_chunks", [None, 7])
def test_to_volumes_equal_nilearn_unmask(time_chunks) -> None:
    from nilearn.masking import unmask

    rng = np.random.default_rng(1)
    mask = rng.random((6, 7, 5)) < 0.6
    x = rng.normal(size=(int(mask.sum()), 20)).astype(np.float32)
    signals = xr.DataArray(
        da.from_array(x, chunks=(40, -1)),
        dims=("voxel", "time"),
        coords={"run": ("time", np.repeat([0, 1], 10))},
    )
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    with raise_if_dask_computes():
        vols = to_volumes(signals, mask, time_chunks=time_chunks, affine=affine)
    assert vols.dims == ("x", "y", "z", "t")
    assert vols.chunks[:3] == ((6,), (7,), (5,))  # whole volumes
    if time_chunks:
        assert vols.chunks[3] == (7, 7, 6)
    assert vols.attrs["affine"] == affine.tolist()
    np.testing.assert_array_equal(vols["run"].values, signals["run"].values)
    expected = unmask(x.T, nib.Nifti1Image(mask.astype(np.uint8), affine)).get_fdata()
    np.testing.assert_array_equal(vols.values, expected)
    assert (vols.values[~mask] == 0).all()


def test_to_volumes_errors() -> None:
    mask = np.ones((2, 2, 2), bool)
    signals = xr.DataArray(np.zeros((7, 3), np.float32), dims=("voxel", "time"))
    with pytest.raises(InputError, match="mask: has 8 voxels but signals has 7"):
        to_volumes(signals, mask)
    with pytest.raises(InputError, match="mask: has 2 dimensions"):
        to_volumes(signals, mask[0])


def _kmeans_labels(mask: np.ndarray, k: int) -> np.ndarray:
    """A compact parcellation of the mask: KMeans on voxel coordinates, labels 1..k."""
    ijk = np.argwhere(mask)
    return KMeans(k, n_init=1, random_state=0, max_iter=30).fit_predict(ijk) + 1


@pytest.mark.real_data
@pytest.mark.parametrize(
    ("name", "k", "chunks"), [("nipy", 15, (97, -1)), ("rapidtide", 300, (-1, 64))]
)
def test_equal_nilearn_labels_masker(name, k, chunks) -> None:
    """parcel means = NiftiLabelsMasker(labels_img, strategy='mean') on a real scan."""
    from nilearn.maskers import NiftiLabelsMasker

    img = nib.load(real_scan(name))
    bold = img.get_fdata(dtype=np.float32)
    if name == "rapidtide":
        mask = np.asarray(nib.load(real_scan("rapidtide_mask")).dataobj) > 0
    else:  # the crop is too small for compute_epi_mask: keep the brighter 60 % of voxels
        mean = bold.mean(axis=-1)
        mask = mean > np.percentile(mean, 40)
    labels = _kmeans_labels(mask, k)
    labels_vol = np.zeros(mask.shape, np.int32)
    labels_vol[mask] = labels
    labels_img = nib.Nifti1Image(labels_vol, img.affine)

    signals = xr.DataArray(da.from_array(bold[mask], chunks=chunks), dims=("voxel", "time"))
    with raise_if_dask_computes():
        ours = parcel_means(signals, labels)
    masker = NiftiLabelsMasker(labels_img, strategy="mean", standardize=None)
    reference = masker.fit_transform(img)
    assert reference.shape == ours.shape
    np.testing.assert_allclose(ours.values, reference, rtol=1e-4)
