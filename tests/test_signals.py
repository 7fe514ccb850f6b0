"""The signals store: equal to nilearn's maskers, several runs, a cache keyed by what shapes it."""

from __future__ import annotations

import logging

import dask
import nibabel as nib
import numpy as np
import pytest
import zarr
from conftest import raise_if_dask_computes, real_scan
from nilearn.maskers import NiftiMasker

from daskparcel.errors import InputError
from daskparcel.ingest.nifti import open_nifti
from daskparcel.preprocessing.pipeline import write_signals
from daskparcel.store.runs import quiet_zarr
from daskparcel.store.signals import CleanParams, RunInput


def _run(path, chunk=None, name="run", stream=False):
    """A run of ``path``; ``stream``: marked as the untouched file, so a .nii.gz is read in one stream."""
    data = open_nifti(path, chunk_volumes=chunk)
    return RunInput(name, data, f"id-{path}", name, nifti=str(path) if stream else None)


def _mask_of(path):
    return np.asarray(nib.load(path).dataobj) > 0


@pytest.mark.parametrize(("voxel_chunk", "stream"), [(4096, False), (30_529, False), (4096, True)])
def test_equal_to_nilearn_masker_on_real_scan(tmp_path, voxel_chunk, stream):
    scan, mask_path = real_scan("rapidtide"), real_scan("rapidtide_mask")
    mask = _mask_of(mask_path)
    params = CleanParams(smoothing_fwhm=4.0, detrend=True, standardize="zscore_sample")
    store = write_signals(
        [_run(scan, 16, stream=stream)], mask, nib.load(scan).affine, params, tmp_path,
        voxel_chunk=voxel_chunk,
    )  # fmt: skip
    ours = store.signals().values.T
    ref = NiftiMasker(
        mask_img=mask_path, smoothing_fwhm=4.0, detrend=True, standardize="zscore_sample"
    ).fit_transform(scan)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    assert store.signals().data.chunks[0][0] == min(voxel_chunk, mask.sum())
    # the smoothed (uncleaned) signals kept for transform equal nilearn's masker without cleaning
    smoothed = store.signals("smoothed").values.T
    ref_smoothed = NiftiMasker(
        mask_img=mask_path, smoothing_fwhm=4.0, standardize=None
    ).fit_transform(scan)
    np.testing.assert_allclose(smoothed, ref_smoothed, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(("time_chunk", "voxel_chunk"), [(7, 50), (40, 1000)])
def test_several_runs_cleaned_one_by_one_and_concatenated(tmp_path, time_chunk, voxel_chunk):
    a, b = real_scan("nitime1"), real_scan("nitime2")
    mask = np.zeros((10, 10, 18), bool)
    mask[2:8, 2:8, 3:15] = True
    mask_img = nib.Nifti1Image(mask.astype(np.uint8), nib.load(a).affine)
    params = CleanParams(
        smoothing_fwhm=3.0, detrend=True, standardize="zscore_sample", low_pass=0.1, t_r=1.35
    )
    runs = [_run(a, time_chunk, "a"), _run(b, time_chunk, "b")]
    store = write_signals(runs, mask, nib.load(a).affine, params, tmp_path, voxel_chunk=voxel_chunk)
    signals = store.signals()
    assert signals.dims == ("voxel", "time")
    assert list(np.unique(signals["run"].values)) == ["a", "b"]
    assert signals.sizes["time"] == 80
    masker = NiftiMasker(
        mask_img=mask_img,
        smoothing_fwhm=3.0,
        detrend=True,
        standardize="zscore_sample",
        low_pass=0.1,
        t_r=1.35,
    )
    ref = np.vstack([masker.fit_transform(a), masker.fit_transform(b)])
    np.testing.assert_allclose(signals.values.T, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    i, _, k = np.nonzero(mask)
    np.testing.assert_array_equal(signals["i"].values, i)
    np.testing.assert_array_equal(signals["k"].values, k)
    # each run's full time axis is one chunk
    assert signals.data.chunks[1] == (40, 40)


@pytest.mark.parametrize(("time_chunk", "voxel_chunk"), [(7, 50), (40, 333)])
def test_streamed_gzip_runs_equal_blockwise_reads(tmp_path, caplog, time_chunk, voxel_chunk):
    # int16 with scl_slope/scl_inter (scaled like nibabel), a second run with another length, and a plain
    # .nii (never streamed): the stores are identical whichever way the volumes were read
    rng = np.random.default_rng(1)
    affine = np.diag([3.0, 3.0, 3.5, 1.0])
    paths = []
    for name, n_time in (("a", 45), ("b", 31)):
        img = nib.Nifti1Image(rng.integers(-300, 3000, (9, 8, 7, n_time)).astype(np.int16), affine)
        img.header.set_slope_inter(0.37, 12.5)
        paths.append(tmp_path / f"{name}.nii.gz")
        nib.save(img, paths[-1])
    paths.append(tmp_path / "c.nii")
    nib.save(nib.Nifti1Image(rng.normal(size=(9, 8, 7, 20)).astype(np.float32), affine), paths[-1])
    mask = np.zeros((9, 8, 7), bool)
    mask[1:8, 2:7, 1:6] = True
    params = CleanParams(smoothing_fwhm=5.0, detrend=True, standardize="zscore_sample")
    caplog.set_level(logging.INFO, logger="daskparcel.preprocessing.pipeline")
    stores = []
    for stream in (False, True):
        runs = [_run(p, time_chunk, p.name.split(".")[0], stream) for p in paths]
        stores.append(
            write_signals(
                runs, mask, affine, params, tmp_path / str(stream), voxel_chunk=voxel_chunk
            )
        )
    assert (
        "3 run(s)" in caplog.text and "(0 streamed" in caplog.text and "(2 streamed" in caplog.text
    )
    for kind in ("smoothed", "cleaned"):
        np.testing.assert_array_equal(
            stores[1].signals(kind).values, stores[0].signals(kind).values
        )
    # and the streamed values are nilearn's (nibabel's scaling, then smoothing and masking)
    mask_img = nib.Nifti1Image(mask.astype(np.uint8), affine)
    ref = NiftiMasker(mask_img, smoothing_fwhm=5.0, standardize=None).fit_transform(paths[0])
    ours = stores[1].signals("smoothed").sel(time=stores[1].signals()["run"] == "a").values.T
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-3)


def test_one_streamed_run_smooths_on_several_threads_with_the_same_values(tmp_path, monkeypatch):
    """A single long .nii.gz run: one thread inflates, several smooth its blocks; the store (and the
    z-scoring moments, accumulated in order) are byte for byte those of one thread."""
    from daskparcel.preprocessing import pipeline

    rng = np.random.default_rng(2)
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    path = tmp_path / "long.nii.gz"
    nib.save(nib.Nifti1Image(rng.normal(100, 5, (10, 9, 8, 70)).astype(np.float32), affine), path)
    mask = np.zeros((10, 9, 8), bool)
    mask[1:9, 1:8, 1:7] = True
    params = CleanParams(smoothing_fwhm=6.0, standardize="zscore_sample")
    used: list[int] = []
    original = pipeline._stream_smoothed

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        used.append(args[-1])
        return original(*args, **kwargs)

    monkeypatch.setattr(pipeline, "_stream_smoothed", spy)
    stores = []
    for workers in (1, 4):
        with dask.config.set(num_workers=workers):
            run = _run(path, 4, "long", True)
            stores.append(write_signals([run], mask, affine, params, tmp_path / str(workers)))
    assert used == [1, 4]
    for kind in ("smoothed", "cleaned"):
        np.testing.assert_array_equal(
            stores[1].signals(kind).values, stores[0].signals(kind).values
        )


@pytest.mark.parametrize(
    ("time_chunk", "voxel_chunk", "stream", "standardize"),
    [
        (7, 50, False, "zscore_sample"),
        (16, 4096, True, "zscore_sample"),
        (16, 30_529, True, "zscore"),
    ],
)
def test_zscoring_alone_is_applied_on_read(tmp_path, time_chunk, voxel_chunk, stream, standardize):
    # the kmeans defaults (smoothing, z-scoring, nothing else): no cleaned/ arrays are written, the
    # per-voxel moments are kept from the smoothing pass, and the signals read equal nilearn's
    scan, mask_path = real_scan("rapidtide"), real_scan("rapidtide_mask")
    mask = _mask_of(mask_path)
    params = CleanParams(smoothing_fwhm=4.0, standardize=standardize)
    store = write_signals(
        [_run(scan, time_chunk, stream=stream)], mask, nib.load(scan).affine, params, tmp_path,
        voxel_chunk=voxel_chunk,
    )  # fmt: skip
    assert store.zscore_on_read == standardize
    assert not (store.path / "cleaned").exists() and (store.path / "zscore").is_dir()
    smoothed = (
        NiftiMasker(mask_img=mask_path, smoothing_fwhm=4.0, standardize=None)
        .fit_transform(scan)
        .astype(np.float64)
    )
    centred = smoothed - smoothed.mean(axis=0)
    ref = centred / centred.std(axis=0, ddof=1 if standardize == "zscore_sample" else 0)
    ours = store.signals().values.T
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    if standardize == "zscore_sample":
        # nilearn z-scores the float32 signals in float32 (no detrend to cast them): ~1e-4 apart
        nilearn = NiftiMasker(
            mask_img=mask_path, smoothing_fwhm=4.0, standardize="zscore_sample"
        ).fit_transform(scan)
        np.testing.assert_allclose(ours, nilearn, rtol=1e-4, atol=1e-3)
    # the smoothed chunks hold >= 64 volumes (whole input blocks), a voxel block reads in a few chunks
    with quiet_zarr():
        chunks = zarr.open_array(str(store.path), path="smoothed/run", mode="r").chunks
    n_time = smoothed.shape[0]
    assert chunks[1] == min(n_time, -(-64 // time_chunk) * time_chunk)
    # reopened from the cache, the store reads the same
    with raise_if_dask_computes(0):
        again = write_signals(
            [_run(scan, time_chunk, stream=stream)], mask, nib.load(scan).affine, params, tmp_path,
            voxel_chunk=voxel_chunk,
        )  # fmt: skip
    np.testing.assert_array_equal(again.signals().values, store.signals().values)


def test_a_truncated_gzip_run_fails_with_input_error_when_streamed(tmp_path):
    data = np.random.default_rng(0).normal(size=(6, 6, 6, 40)).astype(np.float32)
    whole = tmp_path / "whole.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), whole)
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(
        InputError, match=r"cut.nii.gz: could not read its volumes.*truncated or corrupt"
    ):
        write_signals(
            [_run(cut, 8, stream=True)],
            np.ones((6, 6, 6), bool),
            np.eye(4),
            CleanParams(),
            tmp_path / "s",
        )


def test_cache_reused_then_recomputed_when_a_parameter_changes(tmp_path):
    scan = real_scan("nitime1")
    mask = np.ones((10, 10, 18), bool)
    affine = nib.load(scan).affine
    first = write_signals([_run(scan)], mask, affine, CleanParams(), tmp_path)
    with raise_if_dask_computes(0):
        again = write_signals([_run(scan)], mask, affine, CleanParams(), tmp_path)
    assert again.path == first.path
    other = write_signals([_run(scan)], mask, affine, CleanParams(smoothing_fwhm=6.0), tmp_path)
    assert other.path != first.path
    assert not np.allclose(other.signals().values, first.signals().values)


def test_constant_voxels_under_standardize_are_zero_with_a_warning(tmp_path):
    data = np.random.default_rng(0).normal(100, 5, (6, 6, 6, 30)).astype(np.float32)
    data[0, 0, 0] = 50.0  # constant voxel
    data[5, 5, 5] = 50.0
    path = tmp_path / "c.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    params = CleanParams(smoothing_fwhm=None, standardize="zscore_sample")
    with pytest.warns(UserWarning, match=r"2 of 216 voxels have a constant"):
        store = write_signals(
            [_run(path)], np.ones((6, 6, 6), bool), np.eye(4), params, tmp_path / "s"
        )
    values = store.signals().values
    assert (values[0] == 0).all() and (values[-1] == 0).all()
    assert store.n_zeroed == 2


def test_bad_inputs(tmp_path):
    scan = real_scan("nitime1")
    affine = nib.load(scan).affine
    with pytest.raises(InputError, match="the mask has no voxel"):
        write_signals([_run(scan)], np.zeros((10, 10, 18), bool), affine, CleanParams(), tmp_path)
    with pytest.raises(
        InputError, match=r"grid \(10, 10, 18\) differs from the mask's \(4, 4, 4\)"
    ):
        write_signals([_run(scan)], np.ones((4, 4, 4), bool), affine, CleanParams(), tmp_path)
    with pytest.raises(InputError, match="no run"):
        write_signals([], np.ones((4, 4, 4), bool), affine, CleanParams(), tmp_path)
