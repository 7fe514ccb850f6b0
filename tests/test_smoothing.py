"""Smoothing: equal to nilearn's smooth_img on a real scan, on several chunkings; lazy."""

from __future__ import annotations

import dask.array as da
import nibabel as nib
import numpy as np
import pytest
import xarray as xr
from conftest import raise_if_dask_computes, real_scan
from nilearn.image import smooth_img
from scipy.ndimage import gaussian_filter1d

from daskparcel.errors import InputError
from daskparcel.preprocessing.gaussian import smooth_volumes
from daskparcel.preprocessing.smoothing import fwhm_to_sigma, smooth_block, smooth_bold


def _bold(data: np.ndarray, t_chunk: int) -> xr.DataArray:
    return xr.DataArray(
        da.from_array(data, chunks=(-1, -1, -1, t_chunk)), dims=("x", "y", "z", "t")
    )


@pytest.fixture(scope="module")
def rapidtide() -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(real_scan("rapidtide"))
    return img.get_fdata(dtype=np.float32)[..., :40], img.affine


@pytest.mark.real_data
@pytest.mark.parametrize("t_chunk", [1, 7, -1])
@pytest.mark.parametrize("fwhm", [6.0, [4.0, 0.0, 8.0]])
def test_smooth_equals_nilearn_real_scan(rapidtide, t_chunk, fwhm):
    data, affine = rapidtide
    ref = smooth_img(nib.Nifti1Image(data, affine), fwhm).get_fdata(dtype=np.float32)
    out = smooth_bold(_bold(data, t_chunk), affine, fwhm)
    assert out.dtype == np.float32
    assert out.dims == ("x", "y", "z", "t")
    values = out.values
    scale = np.abs(ref).max()
    np.testing.assert_allclose(values, ref, rtol=1e-5, atol=1e-6 * scale)


@pytest.mark.real_data
@pytest.mark.parametrize("fwhm", ["fast", None, 0])
def test_smooth_fast_and_none_equal_nilearn(rapidtide, fwhm):
    data, affine = rapidtide
    data = data[..., :5]
    ref = smooth_img(nib.Nifti1Image(data, affine), None if fwhm == 0 else fwhm).get_fdata(
        dtype=np.float32
    )
    out = smooth_bold(_bold(data, 2), affine, fwhm).values
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())


def test_smooth_non_finite_and_int_as_nilearn():
    rng = np.random.default_rng(0)
    data = rng.normal(100, 10, size=(9, 8, 7, 6)).astype(np.float32)
    data[2, 3, 4, 1] = np.nan
    data[5, 5, 5, 3] = np.inf
    affine = np.diag([2.0, 3.0, 2.5, 1.0])
    ref = smooth_img(nib.Nifti1Image(data, affine), 5).get_fdata(dtype=np.float32)
    out = smooth_bold(_bold(data, 4), affine, 5).values
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-4)
    # int16 input is cast to float32 first, as nilearn
    idata = rng.integers(0, 1000, size=(6, 6, 6, 3)).astype(np.int16)
    ref = smooth_img(nib.Nifti1Image(idata, affine), 4).get_fdata(dtype=np.float32)
    out = smooth_bold(_bold(idata, 1), affine, 4)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.values, ref, rtol=1e-5, atol=1e-4)


def _scipy_smooth(data: np.ndarray, sigma) -> np.ndarray:
    """nilearn's smooth_array, written out: float32, non-finite to 0, one gaussian_filter1d per axis."""
    out = np.array(data, dtype=np.float32)
    out[~np.isfinite(out)] = 0
    for axis, s in enumerate(sigma):
        if s > 0:
            gaussian_filter1d(out, s, output=out, axis=axis, mode="reflect", truncate=4.0)
    return out


@pytest.mark.parametrize(
    "shape, sigma",
    [
        (
            (9, 8, 7, 3),
            (2.12, 2.12, 2.12),
        ),  # lines shorter than the kernel: reflected more than once
        ((30, 1, 12, 2), (1.5, 1.5, 0.7)),  # a line of one voxel
        ((17, 13, 11, 4), (1.3, 0.0, 2.6)),  # no filtering along y
        ((12, 10, 9, 2), (0.0, 0.0, 0.0)),
    ],
)
@pytest.mark.parametrize("order", ["F", "C"])
def test_kernel_is_scipys_bit_for_bit(shape, sigma, order):
    rng = np.random.default_rng(3)
    data = np.array(rng.normal(1000, 100, size=shape).astype(np.float32), order=order)
    data[0, 0, 0, 0], data[-1, -1, -1, -1] = np.nan, -np.inf
    mask = rng.random(shape[:3]) < 0.4
    ref = _scipy_smooth(data, sigma)
    np.testing.assert_array_equal(smooth_volumes(data, np.array(sigma)), ref)
    np.testing.assert_array_equal(smooth_volumes(data, np.array(sigma), mask), ref[mask])
    # the block entry points: whole volumes, masked, and time blocks of any size give the same numbers
    for t_block in (1, 2, shape[3]):
        parts = [
            smooth_block(data[..., t : t + t_block], np.array(sigma), False, mask=mask)
            for t in range(0, shape[3], t_block)
        ]
        np.testing.assert_array_equal(np.concatenate(parts, axis=1), ref[mask])


@pytest.mark.real_data
def test_kernel_equals_nilearn_bit_for_bit_real_scan(rapidtide):
    data, affine = rapidtide
    ref = smooth_img(nib.Nifti1Image(data[..., :6], affine), 6.0).get_fdata(dtype=np.float32)
    sigma = fwhm_to_sigma(6.0, affine)
    np.testing.assert_array_equal(smooth_block(data[..., :6], sigma, False), ref)
    # float64 blocks are smoothed in float64 (nilearn's dtype), then cast
    ref64 = smooth_img(nib.Nifti1Image(data[..., :2].astype(np.float64), affine), 6.0).get_fdata()
    out = smooth_block(data[..., :2].astype(np.float64), sigma, False)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, ref64.astype(np.float32))


def test_smooth_spatial_chunks_are_rechunked_to_whole_volumes():
    rng = np.random.default_rng(1)
    data = rng.normal(size=(10, 9, 8, 4)).astype(np.float32)
    affine = np.eye(4)
    bold = xr.DataArray(da.from_array(data, chunks=(3, 4, 8, 2)), dims=("x", "y", "z", "t"))
    out = smooth_bold(bold, affine, 3)
    ref = smooth_img(nib.Nifti1Image(data, affine), 3).get_fdata(dtype=np.float32)
    np.testing.assert_allclose(out.values, ref, rtol=1e-5, atol=1e-6)


def test_smooth_is_lazy():
    data = da.random.random((8, 8, 8, 10), chunks=(-1, -1, -1, 3)).astype(np.float32)
    bold = xr.DataArray(data, dims=("x", "y", "z", "t"), attrs={"t_r": 2.0})
    with raise_if_dask_computes():
        out = smooth_bold(bold, np.eye(4), 4)
    assert isinstance(out.data, da.Array)
    assert out.chunks == bold.chunks
    assert out.attrs == {"t_r": 2.0}


def test_fwhm_to_sigma_uses_affine_column_norms():
    affine = np.array(
        [[0.0, -3.0, 0.0, 10.0], [2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 4.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
    )
    ratio = np.sqrt(8 * np.log(2))
    np.testing.assert_allclose(fwhm_to_sigma(6, affine), 6 / ratio / np.array([2.0, 3.0, 4.0]))
    np.testing.assert_allclose(fwhm_to_sigma([6, None, 0], affine), [6 / ratio / 2.0, 0.0, 0.0])
    assert not fwhm_to_sigma(None, affine).any()
    assert not fwhm_to_sigma(0, affine).any()


@pytest.mark.parametrize(
    ("fwhm", "match"),
    [
        (-1, "must be finite and >= 0"),
        ([1, 2], "one per spatial axis"),
        ("fast", "has no Gaussian"),
    ],
)
def test_fwhm_to_sigma_bad_input(fwhm, match):
    with pytest.raises(InputError, match=match):
        fwhm_to_sigma(fwhm, np.eye(4))


def test_smooth_bad_input():
    bold = xr.DataArray(da.zeros((4, 4, 4, 2)), dims=("a", "b", "c", "t"))
    with pytest.raises(InputError, match="dims"):
        smooth_bold(bold, np.eye(4), 4)
    ok = xr.DataArray(da.zeros((4, 4, 4, 2)), dims=("x", "y", "z", "t"))
    with pytest.raises(InputError, match=">= 0"):
        smooth_bold(ok, np.eye(4), -3)
