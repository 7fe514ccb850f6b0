"""Parcellations: nilearn's API and answers, the estimator contract, caching, laziness, bad input."""

from __future__ import annotations

import logging
import pickle

import nibabel as nib
import numpy as np
import pytest
import xarray as xr
from conftest import raise_if_dask_computes, real_scan
from scipy import ndimage
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.metrics import adjusted_rand_score

import daskparcel.clustering
from daskparcel import Parcellations, datasets
from daskparcel.errors import InputError
from daskparcel.metrics import compression_r2

METHODS = list(daskparcel.clustering.METHODS)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A small 4 mm synthetic run (with its planted parcellation) written as NIfTI."""
    folder = tmp_path_factory.mktemp("syn")
    paths, truth = datasets.write_synthetic_nifti(folder, 1, 4, 40, n_parcels=20)
    return paths[0], truth


@pytest.fixture(scope="module")
def nitime_mask(tmp_path_factory):
    mask = np.zeros((10, 10, 18), np.uint8)
    mask[1:9, 1:9, 2:16] = 1
    path = tmp_path_factory.mktemp("mask") / "mask.nii.gz"
    nib.save(nib.Nifti1Image(mask, nib.load(real_scan("nitime1")).affine), path)
    return path


@pytest.mark.parametrize("method", METHODS)
def test_every_method_gives_exactly_k_parcels_and_nilearn_attributes(method, synthetic, tmp_path):
    path, truth = synthetic
    est = Parcellations(
        method=method, n_parcels=20, n_components=20, store=tmp_path, smoothing_fwhm=4.0
    )
    assert est.fit(path) is est
    labels = np.asarray(est.labels_img_.dataobj)
    mask = np.asarray(est.mask_img_.dataobj).astype(bool)
    assert est.labels_img_.get_data_dtype() == np.int32
    assert set(np.unique(labels[mask])) == set(range(1, 21))
    assert (labels[~mask] == 0).all()
    assert est.n_elements_ == 20
    assert est.labels_.dims == ("voxel",) and est.labels_.sizes["voxel"] == mask.sum()
    assert est.components_.shape == (20, mask.sum())
    if method in ("ward", "complete", "average", "rena"):
        for k in range(1, 21):
            assert ndimage.label(labels == k)[1] == 1, f"{method} parcel {k} is not connected"
    # the steps no number of cores can shorten are named in the timings, within the clustering step
    serial = {k: v for k, v in est.timings_.items() if k.startswith("serial: ")}
    expected = {"ward": "ward merge loop", "complete": "complete merge loop",
                "average": "average merge loop", "rena": "rena groupings",
                "kmeans": "mini-batch kmeans (one start)",
                "hierarchical_kmeans": "hierarchical kmeans first level (one start)"}.get(method)  # fmt: skip
    assert list(serial) == ([f"serial: {expected}"] if expected else [])
    assert all(0 < v <= est.timings_["clustering"] for v in serial.values())
    steps = ("inputs", "mask", "signals", "reduction", "clustering")
    assert all(0 < est.timings_[k] for k in steps)
    assert sum(est.timings_[k] for k in steps) <= est.timings_["total"]
    if method in ("ward", "kmeans", "hierarchical_kmeans", "rena"):
        # the planted parcellation is recovered (in the voxels of both masks)
        true = np.asarray(truth.dataobj)
        both = mask & (true > 0)
        assert adjusted_rand_score(true[both], labels[both]) > 0.6


def test_transform_equals_nilearn_labels_masker(tmp_path):
    from nilearn.maskers import NiftiLabelsMasker

    scan, mask = real_scan("rapidtide"), real_scan("rapidtide_mask")
    est = Parcellations(
        method="kmeans", n_parcels=50, mask=mask, smoothing_fwhm=6.0, standardize="zscore_sample", detrend=True,
        n_components=30, store=tmp_path,
    )  # fmt: skip
    ours = est.fit_transform(scan)
    assert isinstance(ours, xr.DataArray) and ours.dims == ("time", "parcel")
    ref = NiftiLabelsMasker(
        est.labels_img_, mask_img=est.mask_img_, smoothing_fwhm=6.0, standardize="zscore_sample", detrend=True,
    ).fit_transform(scan)  # fmt: skip
    np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    # the same run under another file name is read from the image, not from the store: same answer
    copy = tmp_path / "copy.nii.gz"
    copy.write_bytes(scan.read_bytes() + b"")
    nib.save(nib.load(scan), copy)
    np.testing.assert_allclose(
        np.asarray(est.transform(copy)), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max()
    )


def test_transform_and_inverse_transform_are_lazy(synthetic, tmp_path):
    path, _ = synthetic
    est = Parcellations(method="ward", n_parcels=20, n_components=10, store=tmp_path).fit(path)
    with raise_if_dask_computes(0):
        signals = est.transform(path)
        images = est.inverse_transform(signals)
    assert images.dims == ("x", "y", "z", "t")
    values, recon = np.asarray(signals), images.values
    labels = np.asarray(est.labels_img_.dataobj)
    # each voxel takes its parcel's signal; background is 0
    for k in (1, 7, 20):
        voxel = tuple(np.argwhere(labels == k)[0])
        np.testing.assert_allclose(recon[voxel], values[:, k - 1], rtol=1e-6)
    assert (recon[labels == 0] == 0).all()


def test_list_of_runs_gives_list_of_signals(tmp_path, nitime_mask):
    runs = [real_scan("nitime1"), real_scan("nitime2")]
    est = Parcellations(
        method="kmeans", n_parcels=5, mask=nitime_mask, n_components=10, store=tmp_path
    )
    out = est.fit_transform(runs)
    assert isinstance(out, list) and len(out) == 2
    assert all(o.shape == (40, 5) for o in out)
    assert list(out[1]["run"].values[:1]) == ["fmri2"]


def test_estimator_contract(synthetic, tmp_path):
    path, _ = synthetic
    est = Parcellations(method="kmeans", n_parcels=10, n_components=10, store=tmp_path)
    params = est.get_params()
    assert (
        params["n_parcels"] == 10
        and params["smoothing_fwhm"] == 4.0
        and params["mask_strategy"] == "epi"
    )
    twin = clone(est).set_params(n_parcels=12)
    assert twin.n_parcels == 12 and est.n_parcels == 10
    with pytest.raises(NotFittedError, match="not fitted yet"):
        est.transform(path)
    est.fit(path)
    again = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(again.labels_.values, est.labels_.values)
    np.testing.assert_allclose(np.asarray(again.transform(path)), np.asarray(est.transform(path)))


def test_refit_with_other_n_parcels_reuses_signals_reduction_and_tree(synthetic, tmp_path, caplog):
    path, _ = synthetic
    first = Parcellations(method="ward", n_parcels=30, n_components=10, store=tmp_path).fit(path)
    caplog.set_level(logging.INFO, logger="daskparcel.clustering")
    with raise_if_dask_computes(0):
        second = Parcellations(method="ward", n_parcels=15, n_components=10, store=tmp_path).fit(
            path
        )
    # the tree kept in the signals store is cut again, not rebuilt (in this process or a later one)
    assert "ward tree reused" in caplog.text
    np.testing.assert_array_equal(second.tree_.children, first.tree_.children)
    np.testing.assert_array_equal(second.tree_.distances, first.tree_.distances)
    assert second.signals_store_ == first.signals_store_
    # cutting the kept tree = fitting from scratch
    fresh = Parcellations(
        method="ward", n_parcels=15, n_components=10, store=tmp_path / "other"
    ).fit(path)
    assert adjusted_rand_score(fresh.labels_.values, second.labels_.values) == 1.0


def test_same_random_state_same_labels(synthetic, tmp_path):
    path, _ = synthetic
    a = Parcellations(method="kmeans", n_parcels=10, n_components=10, store=tmp_path / "a").fit(
        path
    )
    b = Parcellations(method="kmeans", n_parcels=10, n_components=10, store=tmp_path / "b").fit(
        path
    )
    np.testing.assert_array_equal(a.labels_.values, b.labels_.values)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "n_parcels", "fwhm", "standardize"),
    [("kmeans", 50, 10.0, "zscore_sample"), ("ward", 1000, 2.0, False)],
)
def test_compression_r2_at_least_nilearns_on_the_real_scan(
    method, n_parcels, fwhm, standardize, tmp_path
):
    """The seed's settings on the real scan: R^2 >= nilearn's - 0.01, judged on the same signals."""
    from nilearn.regions import Parcellations as NilearnParcellations

    scan, mask = real_scan("rapidtide"), real_scan("rapidtide_mask")
    kwargs = {
        "method": method,
        "n_parcels": n_parcels,
        "mask": mask,
        "smoothing_fwhm": fwhm,
        "standardize": standardize,
    }
    ours = Parcellations(**kwargs, store=tmp_path).fit(scan)
    theirs = NilearnParcellations(**kwargs).fit(scan)
    signals = ours.store_.signals("cleaned")
    mask_arr = np.asarray(ours.mask_img_.dataobj).astype(bool)
    r2_ours = compression_r2(signals, np.asarray(ours.labels_img_.dataobj)[mask_arr])
    r2_theirs = compression_r2(signals, np.asarray(theirs.labels_img_.dataobj)[mask_arr])
    assert r2_ours >= r2_theirs - 0.01, (r2_ours, r2_theirs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "spectral"}, r"method='spectral': unknown; pass one of kmeans"),
        ({"method": None}, r"method=None: unknown"),
        ({"method": "ward", "n_parcels": 0}, r"n_parcels=0: must be an integer >= 1"),
        ({"method": "ward", "n_parcels": -3}, r"n_parcels=-3: must be an integer >= 1"),
        ({"method": "ward", "n_parcels": 2.5}, r"n_parcels=2.5: must be an integer >= 1"),
        ({"method": "ward", "n_parcels": 10**7}, r"n_parcels=10000000: larger than the \d+ voxels"),
        ({"method": "ward", "smoothing_fwhm": -2}, r"smoothing_fwhm=-2: must be >= 0"),
        ({"method": "ward", "standardize": "minmax"}, r"standardize='minmax': unknown"),
        ({"method": "ward", "low_pass": 0.1}, r"need the repetition time.*pass t_r="),
    ],
)
def test_bad_parameters_refused_before_any_output(kwargs, message, tmp_path):
    data = np.random.default_rng(0).normal(100, 5, (8, 8, 8, 20)).astype(np.float32)
    path = tmp_path / "run.nii.gz"
    img = nib.Nifti1Image(data, np.eye(4))
    img.header.set_xyzt_units("mm", "sec")
    img.header["pixdim"][4] = 0  # no TR in the header
    nib.save(img, path)
    store = tmp_path / "store"
    with pytest.raises(InputError, match=message):
        Parcellations(store=store, mask_strategy="background", **kwargs).fit(path)
    assert not any(store.glob("signals-*")) if store.exists() else True


def test_transform_of_a_run_on_another_grid(synthetic, tmp_path):
    path, _ = synthetic
    est = Parcellations(method="kmeans", n_parcels=5, n_components=5, store=tmp_path).fit(path)
    with pytest.raises(
        InputError, match=r"its grid \(10, 10, 18\) differs from the fitted mask's \(50, 59, 50\)"
    ):
        est.transform(real_scan("nitime1"))
    with pytest.raises(InputError, match="signals have 4 parcels, the parcellation has 5"):
        est.inverse_transform(np.zeros((3, 4)))
    with pytest.raises(InputError, match="confounds: a list of 2 items for 1 runs"):
        est.transform(path, confounds=[np.zeros((40, 1)), np.zeros((40, 1))])


def test_a_large_cohort_weighs_its_features_without_reading_the_signals_again(tmp_path, caplog):
    """Past exact-max-columns (forced here: 3 runs x 20 components > 50), the reduction keeps the signals' scatter
    along the features (``<features>-scatter``) and kmeans' weighting uses it: no read of the signals. Its
    parcellation explains the signals as well as the one weighted from a read of the signals, whose scatter is
    kept in its turn: the next fit reads nothing either. The weighted features are not kept (one product)."""
    import dask
    import zarr

    paths, _ = datasets.write_synthetic_nifti(tmp_path / "in", 3, 4, 40, n_parcels=20)
    params = dict(method="kmeans", n_parcels=20, n_components=20, smoothing_fwhm=4.0)
    caplog.set_level(logging.INFO, logger="daskparcel.clustering")
    kept = "weighted by the scatter kept in the store"
    with dask.config.set({"daskparcel.reduction.exact-max-columns": 50}):
        est = Parcellations(**params, store=tmp_path / "s").fit(paths)
    key = est.store_.features_group(20, 0)
    assert kept in caplog.text
    root = zarr.open_group(str(est.signals_store_), mode="a")
    assert root[key + "-scatter"].attrs["complete"] and key + "-weighted" not in root
    reduction_scatter = np.asarray(root[key + "-scatter"]["scatter"][...])
    # the same fit, its weights from a read of the signals: the scatter removed
    del root[key + "-scatter"]
    caplog.clear()
    with dask.config.set({"daskparcel.reduction.exact-max-columns": 50}):
        read = Parcellations(**params, store=tmp_path / "s").fit(paths)
    assert kept not in caplog.text
    signals = est.store_.signals("cleaned")
    ours = float(compression_r2(signals, est.labels_.values))
    assert ours == pytest.approx(float(compression_r2(signals, read.labels_.values)), abs=0.01)
    # the read's scatter is kept (the reduction's, up to what the runs' dropped components carry) and reused
    read_scatter = np.asarray(root[key + "-scatter"]["scatter"][...])
    assert np.linalg.norm(read_scatter - reduction_scatter) < 0.05 * np.linalg.norm(read_scatter)
    caplog.clear()
    with dask.config.set({"daskparcel.reduction.exact-max-columns": 50}):
        again = Parcellations(**params, store=tmp_path / "s").fit(paths)
    assert kept in caplog.text
    np.testing.assert_array_equal(again.labels_.values, read.labels_.values)


@pytest.mark.real_data
@pytest.mark.parametrize("method", ["kmeans", "ward"])
def test_an_image_in_memory_gives_the_labels_of_its_file(method, tmp_path):
    """A run given as an in-memory image (chunked in place, not copied) is parcellated as its file is."""
    path = real_scan("nitime1")
    loaded = nib.load(path)
    in_memory = nib.Nifti1Image(loaded.get_fdata(dtype=np.float32), loaded.affine, loaded.header)
    kwargs = {"method": method, "n_parcels": 12, "n_components": 10, "mask_strategy": "background"}
    from_file = Parcellations(store=tmp_path / "file", **kwargs).fit(path)
    ours = Parcellations(store=tmp_path / "memory", chunk_volumes=7, **kwargs).fit(in_memory)
    np.testing.assert_array_equal(ours.labels_.values, from_file.labels_.values)
    np.testing.assert_array_equal(ours.mask_img_.get_fdata(), from_file.mask_img_.get_fdata())
