"""Masks: equal to nilearn's, voxel for voxel, on real scans and a synthetic volume; lazy means."""

from __future__ import annotations

import warnings

import dask
import dask.array as da
import nibabel as nib
import numpy as np
import pytest
import xarray as xr
from conftest import raise_if_dask_computes, real_scan
from nilearn import masking as nm

from daskparcel.errors import InputError
from daskparcel.preprocessing import masking as dm


def _bold(path, t_chunk: int = 7) -> tuple[xr.DataArray, np.ndarray]:
    img = nib.load(path)
    data = da.from_array(img.get_fdata(dtype=np.float32), chunks=(-1, -1, -1, t_chunk))
    return xr.DataArray(data, dims=("x", "y", "z", "t")), img.affine


def _nilearn(func, *args, **kwargs) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(func(*args, **kwargs).get_fdata()).astype(bool)


def _masker_mask(imgs, strategy: str, mask_args: dict | None = None) -> np.ndarray:
    """The mask nilearn's Parcellations computes: a MultiNiftiMasker's, with ``mask_strategy``."""
    from nilearn.maskers import MultiNiftiMasker

    masker = MultiNiftiMasker(mask_strategy=strategy, mask_args=mask_args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(masker.fit(imgs).mask_img_.get_fdata()).astype(bool)


@pytest.fixture(scope="module")
def rapidtide():
    path = real_scan("rapidtide")
    bold, affine = _bold(path, t_chunk=40)
    return path, bold, affine


@pytest.fixture
def synthetic() -> tuple[xr.DataArray, np.ndarray, nib.Nifti1Image]:
    rng = np.random.default_rng(0)
    data = rng.normal(20, 3, size=(14, 15, 13, 12))
    data[3:11, 4:12, 3:10] += 300 + rng.normal(0, 10, size=(8, 8, 7, 12))
    data = np.round(data).astype(np.float32)
    affine = np.diag([3.0, 3.0, 3.5, 1.0])
    bold = xr.DataArray(da.from_array(data, chunks=(-1, -1, -1, 5)), dims=("x", "y", "z", "t"))
    return bold, affine, nib.Nifti1Image(data, affine)


# ------------------------------------------------------------------------------------------------
# temporal mean


@pytest.mark.parametrize("t_chunk", [1, 5, -1])
def test_temporal_mean_chunkings_and_laziness(synthetic, t_chunk):
    bold, _, img = synthetic
    bold = bold.chunk(t=t_chunk)
    with raise_if_dask_computes():
        mean = dm.temporal_mean(bold)
    assert isinstance(mean, da.Array)
    np.testing.assert_allclose(mean.compute(), img.get_fdata().mean(axis=-1), rtol=1e-12)


# ------------------------------------------------------------------------------------------------
# EPI and background, single run


def test_epi_mask_synthetic_equals_nilearn(synthetic):
    bold, affine, img = synthetic
    for kwargs in ({}, {"opening": 0}, {"connected": False, "lower_cutoff": 0.1}):
        ref = _nilearn(nm.compute_epi_mask, img, **kwargs)
        assert ref.any()
        np.testing.assert_array_equal(dm.compute_epi_mask(bold, affine, **kwargs), ref)
        # a 3D mean image gives the same mask
        np.testing.assert_array_equal(
            dm.compute_epi_mask(dm.temporal_mean(bold).compute(), affine, **kwargs), ref
        )


def test_background_mask_synthetic_equals_nilearn(synthetic):
    bold, affine, img = synthetic
    for kwargs in ({}, {"opening": 1, "connected": True}, {"border_size": 1}):
        ref = _nilearn(nm.compute_background_mask, img, **kwargs)
        np.testing.assert_array_equal(dm.compute_background_mask(bold, affine, **kwargs), ref)


def test_background_mask_nan_background_as_nilearn(synthetic):
    _, affine, img = synthetic
    data = img.get_fdata(dtype=np.float32)
    data[:2] = np.nan
    ref = _nilearn(nm.compute_background_mask, nib.Nifti1Image(data, affine))
    bold = xr.DataArray(da.from_array(data, chunks=(-1, -1, -1, 4)), dims=("x", "y", "z", "t"))
    np.testing.assert_array_equal(dm.compute_background_mask(bold, affine), ref)


@pytest.mark.real_data
def test_epi_and_background_masks_rapidtide_equal_nilearn(rapidtide):
    path, bold, affine = rapidtide
    ref = _nilearn(nm.compute_epi_mask, str(path))
    out = dm.compute_epi_mask(bold, affine)
    assert ref.sum() > 20000
    np.testing.assert_array_equal(out, ref)
    ref = _nilearn(nm.compute_background_mask, str(path))
    np.testing.assert_array_equal(dm.compute_background_mask(bold, affine), ref)


@pytest.mark.real_data
def test_masks_nipy_equal_nilearn():
    path = real_scan("nipy")
    bold, affine = _bold(path, t_chunk=3)
    # nilearn's default EPI mask of this tiny crop is empty: compare with opening=0
    ref = _nilearn(nm.compute_epi_mask, str(path), opening=0)
    assert ref.any()
    np.testing.assert_array_equal(dm.compute_epi_mask(bold, affine, opening=0), ref)
    ref = _nilearn(nm.compute_background_mask, str(path))
    np.testing.assert_array_equal(dm.compute_background_mask(bold, affine), ref)


@pytest.mark.real_data
def test_empty_epi_mask_is_an_input_error():
    path = real_scan("nipy")
    bold, affine = _bold(path, t_chunk=3)
    assert not _nilearn(nm.compute_epi_mask, str(path)).any()  # nilearn: empty, with a warning
    bold.attrs["source"] = "functional.nii.gz"
    with pytest.raises(InputError, match=r"functional\.nii\.gz.*EPI mask is empty.*strategy"):
        dm.compute_epi_mask(bold, affine)


# ------------------------------------------------------------------------------------------------
# multi-run


@pytest.mark.real_data
@pytest.mark.parametrize("kwargs", [{"opening": 0}, {"opening": 0, "connected": False}])
def test_multi_epi_mask_nitime_equals_nilearn(kwargs):
    paths = [real_scan("nitime1"), real_scan("nitime2")]
    runs = [_bold(p, t_chunk=9) for p in paths]
    ref = _nilearn(nm.compute_multi_epi_mask, [str(p) for p in paths], **kwargs)
    assert ref.any()
    out = dm.compute_multi_epi_mask([r[0] for r in runs], runs[0][1], **kwargs)
    np.testing.assert_array_equal(out, ref)


@pytest.mark.real_data
def test_multi_background_mask_nitime_equals_nilearn():
    paths = [real_scan("nitime1"), real_scan("nitime2")]
    runs = [_bold(p, t_chunk=9) for p in paths]
    for kwargs in ({}, {"threshold": 1.0}, {"opening": 0, "connected": False, "threshold": 0.0}):
        ref = _nilearn(nm.compute_multi_background_mask, [str(p) for p in paths], **kwargs)
        out = dm.compute_multi_background_mask([r[0] for r in runs], runs[0][1], **kwargs)
        np.testing.assert_array_equal(out, ref)


def test_multi_mask_computes_all_means_in_one_compute(synthetic):
    bold, affine, img = synthetic
    runs = [bold, bold * 1.01 + 1, bold.chunk(t=2)]
    with raise_if_dask_computes(max_computes=1) as counter:
        out = dm.compute_multi_epi_mask(runs, affine)
    assert counter.total_computes == 1
    ref = _nilearn(
        nm.compute_multi_epi_mask,
        [img, nib.Nifti1Image(img.get_fdata() * 1.01 + 1, affine), img],
    )
    np.testing.assert_array_equal(out, ref)
    with raise_if_dask_computes(max_computes=1):
        dm.compute_multi_background_mask(runs, affine)


def test_multi_mask_different_grids_is_an_input_error(synthetic):
    bold, affine, _ = synthetic
    other = bold.isel(x=slice(0, 10))
    with pytest.raises(InputError, match="same grid"):
        dm.compute_multi_epi_mask([bold, other], affine)
    with pytest.raises(InputError, match="same grid"):
        dm.compute_multi_background_mask([bold, bold], [affine, affine * 2])


# ------------------------------------------------------------------------------------------------
# template and user masks


@pytest.mark.real_data
@pytest.mark.parametrize("template", ["whole-brain", "gm", "wm"])
def test_template_mask_equals_compute_brain_mask(rapidtide, template):
    path, bold, affine = rapidtide
    ref = _nilearn(nm.compute_brain_mask, nib.load(path), mask_type=template)
    assert ref.any()
    out = dm.compute_template_mask(affine, bold.shape[:3], template=template)
    np.testing.assert_array_equal(out, ref)


def test_template_mask_mni_grid_and_errors():
    affine = np.array([[4.0, 0, 0, -90], [0, 4.0, 0, -126], [0, 0, 4.0, -72], [0, 0, 0, 1]])
    shape = (46, 55, 46)
    ref = _nilearn(nm.compute_brain_mask, nib.Nifti1Image(np.zeros(shape, np.int8), affine))
    np.testing.assert_array_equal(dm.compute_template_mask(affine, shape), ref)
    with pytest.raises(InputError, match="template"):
        dm.compute_template_mask(affine, shape, template="csf")
    far = affine.copy()
    far[:3, 3] += 1000
    with pytest.raises(InputError, match="template mask is empty"):
        dm.compute_template_mask(far, shape)


def test_resample_mask_same_grid_returned_as_is(tmp_path):
    mask = np.zeros((6, 7, 8), dtype=np.float32)
    mask[2:4, 2:5, 3:6] = 1
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    path = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(mask, affine), path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = dm.resample_mask(path, affine, (6, 7, 8))
    np.testing.assert_array_equal(out, mask > 0)
    assert out.dtype == bool


def test_resample_mask_other_grid_warns_and_uses_nearest():
    from nilearn.image import resample_img

    mask = np.zeros((10, 10, 10), dtype=np.int8)
    mask[3:8, 2:7, 4:9] = 1
    img = nib.Nifti1Image(mask, np.diag([2.0, 2.0, 2.0, 1.0]))
    target = np.diag([3.0, 3.0, 3.0, 1.0])
    with pytest.warns(UserWarning, match="nearest-neighbour"):
        out = dm.resample_mask(img, target, (7, 7, 7))
    ref = resample_img(
        img, target, (7, 7, 7), interpolation="nearest", force_resample=True, copy_header=True
    )
    np.testing.assert_array_equal(out, ref.get_fdata() > 0)


def test_resample_mask_bad_input(tmp_path):
    affine = np.eye(4)
    with pytest.raises(InputError, match="3D"):
        dm.resample_mask(nib.Nifti1Image(np.ones((3, 3, 3, 2), np.int8), affine), affine, (3, 3, 3))
    with pytest.raises(InputError, match="empty"):
        dm.resample_mask(nib.Nifti1Image(np.zeros((3, 3, 3), np.int8), affine), affine, (3, 3, 3))
    with pytest.raises(InputError, match="not binary"):
        dm.resample_mask(
            nib.Nifti1Image(np.arange(27.0).reshape(3, 3, 3), affine), affine, (3,) * 3
        )
    with pytest.raises(InputError, match=r"cannot be read"):
        dm.resample_mask(tmp_path / "nope.nii.gz", affine, (3, 3, 3))
    far = np.eye(4)
    far[:3, 3] = 100
    with (
        pytest.warns(UserWarning),
        pytest.raises(InputError, match="empty once resampled"),
    ):
        dm.resample_mask(nib.Nifti1Image(np.ones((3, 3, 3), np.int8), affine), far, (3, 3, 3))


# ------------------------------------------------------------------------------------------------
# dispatch


def test_compute_mask_dispatch(synthetic):
    bold, affine, img = synthetic
    np.testing.assert_array_equal(
        dm.compute_mask([bold], affine, "epi"), _nilearn(nm.compute_epi_mask, img)
    )
    # one run: nilearn's Parcellations (a MultiNiftiMasker) calls compute_multi_background_mask
    np.testing.assert_array_equal(
        dm.compute_mask([bold], affine, "background", {"border_size": 1}),
        _masker_mask(img, "background", {"border_size": 1}),
    )
    np.testing.assert_array_equal(
        dm.compute_mask([bold, bold], affine, "epi", {"threshold": 1.0}),
        _nilearn(nm.compute_multi_epi_mask, [img, img], threshold=1.0),
    )
    mni = np.array([[4.0, 0, 0, -90], [0, 4.0, 0, -126], [0, 0, 4.0, -72], [0, 0, 0, 1]])
    big = xr.DataArray(da.zeros((46, 55, 46, 2), chunks=(-1, -1, -1, 1)), dims=("x", "y", "z", "t"))
    with raise_if_dask_computes():
        out = dm.compute_mask([big], mni, "gm-template")
    ref = _nilearn(
        nm.compute_brain_mask, nib.Nifti1Image(np.zeros((46, 55, 46)), mni), mask_type="gm"
    )
    np.testing.assert_array_equal(out, ref)


def test_compute_mask_bad_input(synthetic):
    bold, affine, _ = synthetic
    with pytest.raises(InputError, match="unknown"):
        dm.compute_mask([bold], affine, "otsu")
    with pytest.raises(InputError, match="mask_args"):
        dm.compute_mask([bold], affine, "epi", {"border_size": 2})
    with pytest.raises(InputError, match="list of runs"):
        dm.compute_mask([], affine, "epi")


def test_mask_functions_compute_once(synthetic):
    bold, affine, _ = synthetic
    with raise_if_dask_computes(max_computes=1):
        dm.compute_epi_mask(bold, affine)
    with raise_if_dask_computes(max_computes=1):
        dm.compute_background_mask(bold, affine)


def test_masks_of_mean_images_in_memory_compute_nothing(synthetic):
    """Mean images already in memory (what compute_mask passes on after its one pass) are not sent through
    dask (a distributed cluster got them only to send them back), and give the masks of their runs."""
    bold, affine, _ = synthetic
    runs = [bold, bold * 1.01 + 1]
    means = [np.asarray(r.mean("t").values, dtype=np.float64) for r in runs]
    epi, background = (
        dm.compute_multi_epi_mask(runs, affine),
        dm.compute_multi_background_mask(runs, affine),
    )
    one = dm.compute_epi_mask(bold, affine)
    as_dataarrays = [xr.DataArray(m, dims=("x", "y", "z")) for m in means]
    with raise_if_dask_computes(max_computes=0):
        np.testing.assert_array_equal(dm.compute_multi_epi_mask(means, affine), epi)
        np.testing.assert_array_equal(
            dm.compute_multi_background_mask(as_dataarrays, affine), background
        )
        np.testing.assert_array_equal(dm.compute_epi_mask(means[0], affine), one)


# ------------------------------------------------------------------------------------------------
# streamed mean images (one sequential inflate per .nii.gz run) and the masks nilearn's
# Parcellations computes (a MultiNiftiMasker's)


def _nifti_run(path):
    from daskparcel.ingest.nifti import open_nifti

    ds = open_nifti(path, chunk_volumes=7)
    return ds["bold"], np.asarray(ds.attrs["affine"])


def _reads_blocks(array: da.Array) -> bool:
    """Whether the graph reads the file block by block (open_nifti's from_array layer)."""
    return any(str(name).startswith("nifti-") for name in array.__dask_graph__().layers)


@pytest.mark.parametrize("scaled", [False, True])
def test_mean_images_streams_a_gzipped_run_and_equals_nilearn(tmp_path, scaled):
    from nilearn.image.image import compute_mean

    rng = np.random.default_rng(3)
    raw = rng.integers(-500, 3000, size=(9, 8, 7, 23)).astype(np.int16)
    img = nib.Nifti1Image(raw, np.diag([2.0, 2.0, 2.0, 1.0]))
    if scaled:
        img.header.set_slope_inter(0.5, 10.0)
    gz, plain = tmp_path / "run.nii.gz", tmp_path / "run.nii"
    nib.save(img, gz)
    nib.save(img, plain)
    bold, _ = _nifti_run(gz)
    with raise_if_dask_computes():
        (streamed,) = dm.mean_images([bold], [gz])
    assert not _reads_blocks(streamed)  # one task inflating the whole file
    assert len(streamed.__dask_graph__()) <= 2
    (plain_mean,) = dm.mean_images([_nifti_run(plain)[0]], [plain])
    assert _reads_blocks(plain_mean)  # not gzip: the blockwise reduction
    (blockwise,) = dm.mean_images([bold])  # no file given: blockwise too
    assert _reads_blocks(blockwise)
    out, ref_plain, ref_blockwise = dask.compute(streamed, plain_mean, blockwise)
    assert out.dtype == np.float64
    reference = compute_mean(nib.load(gz))[0]
    np.testing.assert_array_equal(out, reference)  # exact: integer-valued data, float64 sums
    np.testing.assert_array_equal(ref_plain, reference)
    np.testing.assert_array_equal(ref_blockwise, reference)


def test_mean_images_bad_niftis_length(synthetic):
    bold, _, _ = synthetic
    with pytest.raises(InputError, match="niftis: 2 paths for 1 runs"):
        dm.mean_images([bold], [None, None])


@pytest.mark.real_data
def test_streamed_masks_equal_nilearn_on_real_gzipped_scans(rapidtide):
    path, _, affine = rapidtide
    bold, _ = _nifti_run(path)
    out = dm.compute_mask([bold], affine, "epi", niftis=[path])
    np.testing.assert_array_equal(out, _masker_mask(str(path), "epi"))
    assert out.sum() > 20000
    paths = [real_scan("nitime1"), real_scan("nitime2")]
    runs = [_nifti_run(p)[0] for p in paths]
    # nilearn's default EPI mask of these crops is empty: compare EPI with opening=0
    for strategy, args in (("epi", {"opening": 0}), ("background", None)):
        out = dm.compute_mask(runs, _nifti_run(paths[0])[1], strategy, args, niftis=paths)
        ref = _masker_mask([str(p) for p in paths], strategy, args)
        assert ref.any()
        np.testing.assert_array_equal(out, ref)


@pytest.mark.real_data
@pytest.mark.parametrize(
    ("scan", "expected"), [("rapidtide", 36626), ("nitime1", 504), ("pymvpa", 0)]
)
def test_background_mask_of_one_run_is_nilearn_parcellations(scan, expected):
    """nilearn's Parcellations (a MultiNiftiMasker) uses compute_multi_background_mask on one run:
    opening 2 and the largest component, where compute_background_mask does neither."""
    path = real_scan(scan)
    ref = _masker_mask(str(path), "background")
    assert ref.sum() == expected
    bold, affine = _nifti_run(path)
    if expected == 0:  # the single slice does not survive the opening: refused, naming the file
        with pytest.raises(InputError, match=rf"{path.name}: the background mask is empty.*'epi'"):
            dm.compute_mask([bold], affine, "background", niftis=[path], names=[str(path)])
        return
    out = dm.compute_mask([bold], affine, "background", niftis=[path], names=[str(path)])
    np.testing.assert_array_equal(out, ref)


@pytest.mark.real_data
def test_estimator_background_mask_equals_nilearn_masker(tmp_path):
    from daskparcel import Parcellations

    path = real_scan("nitime1")
    est = Parcellations(
        "kmeans", n_parcels=4, n_components=4, mask_strategy="background", store=tmp_path
    ).fit(str(path))
    np.testing.assert_array_equal(
        est.mask_img_.get_fdata().astype(bool), _masker_mask(str(path), "background")
    )


def test_default_mask_fit_never_reads_a_gzipped_run_block_by_block(tmp_path):
    """The fit's mask pass streams the .nii.gz (as the signals pass does): no indexed_gzip block read."""
    from daskparcel import Parcellations
    from daskparcel.ingest import nifti

    rng = np.random.default_rng(1)
    data = rng.normal(20, 3, size=(14, 15, 13, 24))
    data[3:11, 4:12, 3:10] += 300
    path = tmp_path / "run.nii.gz"
    nib.save(nib.Nifti1Image(np.round(data).astype(np.int16), np.diag([3.0, 3.0, 3.0, 1.0])), path)
    nifti._raw_proxy.cache_clear()
    est = Parcellations(
        "kmeans", n_parcels=3, n_components=3, chunk_volumes=5, store=tmp_path / "store"
    ).fit(str(path))
    assert nifti._raw_proxy.cache_info().misses == 0  # no block was read through indexed_gzip
    np.testing.assert_array_equal(
        est.mask_img_.get_fdata().astype(bool), _masker_mask(str(path), "epi")
    )
