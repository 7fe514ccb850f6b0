"""Spatial smoothing of BOLD runs, lazily, volume block by volume block.

The reference is :func:`nilearn.image.smooth_img` (``nilearn.image.image.smooth_array``): a separable
Gaussian (one :func:`scipy.ndimage.gaussian_filter1d` per spatial axis, mode ``'reflect'``, truncate 4),
with sigma = FWHM / sqrt(8 ln 2) / voxel size, voxel sizes being the column norms of the affine's 3x3 part.
Non-finite values are set to 0 first, integers are cast to float32, and ``fwhm='fast'`` is nilearn's
[0.2, 1, 0.2] neighbour average. The same operations, in the same order and dtype, run on each block of
whole volumes, so the results are the same numbers as nilearn's. float32 blocks (what NIfTI runs give) run
the same arithmetic in numba (:mod:`daskparcel.preprocessing.gaussian`, ~3.5x faster than scipy's line by
line filter, bit for bit the same).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from scipy.ndimage import gaussian_filter1d

from daskparcel.errors import InputError
from daskparcel.preprocessing.gaussian import smooth_volumes

logger = logging.getLogger(__name__)

__all__ = ["fwhm_to_sigma", "smooth_array", "smooth_bold"]

# FWHM = sigma * sqrt(8 ln 2)
_FWHM_OVER_SIGMA = float(np.sqrt(8 * np.log(2)))

FWHM = float | int | Sequence[float | int | None] | np.ndarray | str | None


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
    """Voxel sizes (mm) of an affine, as nilearn computes them (norms of the 3x3 part's columns)."""
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape not in ((4, 4), (3, 3)):
        raise InputError(
            f"affine of shape {affine.shape}: must be a 4x4 (or 3x3) matrix; pass the run's NIfTI affine"
        )
    return np.sqrt(np.sum(affine[:3, :3] ** 2, axis=0))


def fwhm_to_sigma(fwhm: FWHM, affine: np.ndarray) -> np.ndarray:
    """Per-axis Gaussian sigma, in voxels, of a smoothing kernel given by its FWHM in mm.

    Parameters
    ----------
    fwhm : float, sequence of 3 floats (None entries allowed), or None
        Full width at half maximum in millimetres, one value for all axes or one per axis.
        ``None`` or 0 means no smoothing (all sigmas 0).
    affine : numpy.ndarray (4, 4)
        The run's affine; voxel sizes are the norms of the columns of its 3x3 part.

    Returns
    -------
    numpy.ndarray of shape (3,)
        ``fwhm / sqrt(8 ln 2) / voxel_size`` for each spatial axis.

    Raises
    ------
    InputError
        For a negative or non-finite FWHM, a sequence whose length is not 1 or 3, or ``'fast'``
        (which has no sigma: see :func:`smooth_bold`).
    """
    vox = voxel_sizes(affine)
    if fwhm is None:
        return np.zeros(3)
    if isinstance(fwhm, str):
        raise InputError(
            f"fwhm={fwhm!r}: has no Gaussian sigma; pass a FWHM in mm (e.g. fwhm=6), or use "
            "smooth_bold(..., fwhm='fast') for nilearn's fast neighbour smoothing"
        )
    values = np.asarray([fwhm], dtype=object).ravel()
    try:
        arr = np.asarray([0.0 if v is None else float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(
            f"fwhm={fwhm!r}: must be a number of mm, a sequence of 3 numbers, or None ({exc})"
        ) from None
    if arr.size not in (1, 3):
        raise InputError(
            f"fwhm={fwhm!r}: has {arr.size} values; pass one FWHM in mm or one per spatial axis (3)"
        )
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise InputError(
            f"fwhm={fwhm!r}: must be finite and >= 0 mm; pass e.g. fwhm=6, or None for no smoothing"
        )
    return arr / (_FWHM_OVER_SIGMA * vox)


def _fast_smooth(arr: np.ndarray) -> np.ndarray:
    """nilearn's ``_fast_smooth_array``: [0.2, 1, 0.2] weights along the 3 spatial axes, normalised."""
    neighbor_weight = 0.2
    scale = 1 + 6 * neighbor_weight
    smoothed = arr.copy()
    weighted = neighbor_weight * arr
    smoothed[:-1] += weighted[1:]
    smoothed[1:] += weighted[:-1]
    smoothed[:, :-1] += weighted[:, 1:]
    smoothed[:, 1:] += weighted[:, :-1]
    smoothed[:, :, :-1] += weighted[:, :, 1:]
    smoothed[:, :, 1:] += weighted[:, :, :-1]
    smoothed /= scale
    return smoothed


def as_float(arr: np.ndarray) -> np.ndarray:
    """nilearn's cast before smoothing: integers (and booleans) become float32, 64-bit integers float64;
    floats are returned as they are (no copy)."""
    if arr.dtype.kind in ("i", "u", "b"):
        return arr.astype(np.float64 if arr.dtype.itemsize == 8 else np.float32)
    return arr


def smooth_array(
    arr: np.ndarray,
    sigma: np.ndarray | None,
    *,
    fast: bool = False,
    ensure_finite: bool = True,
) -> np.ndarray:
    """Smooth a 3D or 4D numpy array along its first three axes (the per-block kernel).

    Same operations and dtypes as ``nilearn.image.image.smooth_array``: integers become float32
    (64-bit integers float64), non-finite values become 0 when ``ensure_finite``, then one in-place
    ``gaussian_filter1d`` (mode 'reflect', truncate 4) per axis whose sigma is > 0. Always a copy.
    """
    floating = as_float(arr)
    arr = np.array(floating, copy=True) if floating is arr else floating
    if ensure_finite:
        arr[~np.isfinite(arr)] = 0
    if fast:
        return _fast_smooth(arr)
    if sigma is not None:
        for axis, s in enumerate(np.asarray(sigma, dtype=np.float64)[:3]):
            if s > 0.0:
                gaussian_filter1d(
                    arr, float(s), output=arr, axis=axis, mode="reflect", truncate=4.0
                )
    return arr


def smoothing_kernel(fwhm: FWHM, affine: np.ndarray) -> tuple[np.ndarray | None, bool]:
    """``(sigma in voxels or None, fast)``: what :func:`smooth_block` needs for a FWHM on an affine's grid."""
    fast = isinstance(fwhm, str) and fwhm == "fast"
    sigma = None if fast else fwhm_to_sigma(fwhm, affine)
    if sigma is not None and not np.any(sigma > 0):
        sigma = None
    return sigma, fast


def smooth_block(
    block: np.ndarray,
    sigma: np.ndarray | None,
    fast: bool,
    ensure_finite: bool = True,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Smooth a block of whole volumes (x, y, z, t) to float32: the kernel of :func:`smooth_bold`.

    With a boolean ``mask`` (x, y, z), only its voxels: ``(voxel, t)``, the rows of ``block[mask]``.
    A float32 (or 8/16/32-bit integer) block with a Gaussian sigma runs the numba kernel of
    :mod:`daskparcel.preprocessing.gaussian` (the same numbers); a float64 one is smoothed in float64, as
    nilearn does, then cast."""
    block = as_float(block)
    if sigma is not None and not fast and ensure_finite and block.dtype == np.float32:
        return smooth_volumes(block, sigma, mask)
    out = smooth_array(block, sigma, fast=fast, ensure_finite=ensure_finite)
    return (out if mask is None else out[mask]).astype(np.float32, copy=False)


def smooth_bold(
    bold: xr.DataArray,
    affine: np.ndarray,
    fwhm: FWHM,
    ensure_finite: bool = True,
) -> xr.DataArray:
    """Smooth every volume of a run with a Gaussian kernel, lazily (nilearn's ``smooth_img``).

    Parameters
    ----------
    bold : xarray.DataArray
        The run, dims ``("x", "y", "z", "t")``, dask-backed (numpy-backed is accepted and chunked).
    affine : numpy.ndarray (4, 4)
        The run's affine (voxel sizes are taken from it).
    fwhm : float, sequence of 3 floats, 'fast', or None
        FWHM in mm (scalar or per axis). ``None`` or 0: no smoothing (values are still cast to
        float32 and, with ``ensure_finite``, cleared of NaN/inf, as nilearn does). ``'fast'``:
        nilearn's [0.2, 1, 0.2] neighbour averaging.
    ensure_finite : bool, default=True
        Replace NaN and inf by 0 before filtering (nilearn's ``smooth_img`` always does).

    Returns
    -------
    xarray.DataArray
        float32, same dims, coords, attrs and chunks along ``t``; nothing is computed.
    """
    if tuple(bold.dims) != ("x", "y", "z", "t"):
        if set(bold.dims) != {"x", "y", "z", "t"}:
            raise InputError(
                f"bold has dims {bold.dims}: smoothing needs ('x', 'y', 'z', 't'); "
                "open the run with daskparcel.open_nifti or rename the dimensions"
            )
        bold = bold.transpose("x", "y", "z", "t")
    sigma, fast = smoothing_kernel(fwhm, affine)

    data = bold.data
    if not isinstance(data, da.Array):
        data = da.from_array(np.asarray(data), chunks=(-1, -1, -1, "auto"))
    if any(len(c) > 1 for c in data.chunks[:3]):
        # Chunks must hold whole volumes: the Gaussian needs the neighbours of every voxel
        # along x, y and z, and time points are independent.
        logger.debug("smooth_bold: rechunking %s to whole volumes", data.chunks[:3])
        data = data.rechunk({0: -1, 1: -1, 2: -1})
    logger.debug("smooth_bold: fwhm=%r sigma=%s fast=%s", fwhm, sigma, fast)
    # Each block holds whole volumes (x, y, z in one chunk), so the Gaussian never needs data from
    # another block: no halo (map_overlap) is needed, and the result is independent of the t chunking.
    out = da.map_blocks(
        smooth_block,
        data,
        sigma=sigma,
        fast=fast,
        ensure_finite=ensure_finite,
        dtype=np.float32,
        meta=np.empty((0, 0, 0, 0), dtype=np.float32),
        token="smooth-bold",
    )
    attrs: dict[str, Any] = dict(bold.attrs)
    return xr.DataArray(out, dims=bold.dims, coords=bold.coords, attrs=attrs, name=bold.name)
