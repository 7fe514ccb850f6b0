"""Brain masks of BOLD runs: EPI, background and template strategies (nilearn's algorithms).

References (nilearn 0.14.1): :func:`nilearn.masking.compute_epi_mask`, ``compute_multi_epi_mask``,
``compute_background_mask``, ``compute_multi_background_mask``, ``compute_brain_mask``, and
``nilearn.image.image.compute_mean`` for the mean image. The only pass over the data is the temporal
mean of each run, a streaming dask reduction; every run's mean is computed in one ``dask.compute`` call.
The rest (histogram threshold, morphology, connected components) works on small 3D arrays in memory,
with the same scipy calls and in the same order as nilearn, so the masks are equal voxel for voxel.

The mean is accumulated in float64. For integer-valued data (what NIfTI files of raw BOLD hold, even
once read as float32) that is exactly nilearn's mean; for other float32 data nilearn accumulates in
float32, so the means differ in the last bits, which cannot move a voxel across the EPI threshold
(the midpoint of the widest gap of the sorted means) except in a near-tie of two gaps.
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import nibabel as nib
import numpy as np
import xarray as xr
from scipy import ndimage

from daskparcel.errors import InputError
from daskparcel.preprocessing.smoothing import smooth_array

logger = logging.getLogger(__name__)

__all__ = [
    "MASK_STRATEGIES",
    "compute_background_mask",
    "compute_epi_mask",
    "compute_mask",
    "compute_multi_background_mask",
    "compute_multi_epi_mask",
    "compute_template_mask",
    "resample_mask",
    "temporal_mean",
]

MASK_STRATEGIES = ("epi", "background", "whole-brain-template", "gm-template", "wm-template")

_TEMPLATES = {"whole-brain": "t1", "gm": "gm", "wm": "wm"}

BoldOrMean = xr.DataArray | da.Array | np.ndarray


# --------------------------------------------------------------------------------------------------
# helpers


def _describe(img: Any, index: int | None = None) -> str:
    """A name for a run in messages: its source file if the attrs tell it, else its name or index."""
    attrs = getattr(img, "attrs", None) or {}
    for key in ("source", "source_path", "path", "filename"):
        if attrs.get(key):
            return f"run {attrs[key]!s}"
    name = img.name if isinstance(img, xr.DataArray) else None
    if isinstance(img, xr.DataArray) and name == getattr(img.data, "name", None):
        name = None  # xarray names a DataArray after its dask graph key: not a user's name
    if isinstance(name, str) and name:
        if index is not None:
            return f"run {index} ({name})"
        return f"'{name}'"
    return f"run {index}" if index is not None else "the input image"


def _as_affine(affine: Any, what: str = "affine") -> np.ndarray:
    arr = np.asarray(affine, dtype=np.float64)
    if arr.shape != (4, 4):
        raise InputError(
            f"{what} of shape {arr.shape}: must be a 4x4 matrix; pass the run's NIfTI affine"
        )
    return arr


def _spatial_data(img: BoldOrMean) -> da.Array | np.ndarray:
    """The array of a 4D run (x, y, z, t) or of a 3D mean image."""
    if isinstance(img, xr.DataArray):
        if img.ndim == 4:
            if set(img.dims) != {"x", "y", "z", "t"}:
                raise InputError(
                    f"bold has dims {img.dims}: a run needs ('x', 'y', 'z', 't'); rename its dimensions"
                )
            img = img.transpose("x", "y", "z", "t")
        return img.data
    if isinstance(img, (da.Array, np.ndarray)):
        return img
    raise InputError(
        f"got a {type(img).__name__}: pass a run as an xarray.DataArray (x, y, z, t) or a 3D mean "
        "image as a numpy/dask array"
    )


def temporal_mean(bold: BoldOrMean) -> da.Array:
    """Mean over time of a run, as a lazy dask array (x, y, z) of float64.

    A streaming tree reduction over the run's volume blocks: each task holds one block, accumulates
    in float64 and passes a 3D partial sum on. A 3D input is returned as is (as a float64 dask array).
    """
    data = _spatial_data(bold)
    if data.ndim == 3:
        return da.asarray(data).astype(np.float64)
    if data.ndim != 4:
        raise InputError(
            f"image with {data.ndim} dimensions: a mask needs a 4D run (x, y, z, t) or a 3D mean image"
        )
    data = da.asarray(data)
    if data.shape[3] == 0:
        raise InputError("run with 0 time points: cannot compute its mean; check the input file")
    return da.mean(data, axis=3, dtype=np.float64)


def _spatial_shape(img: BoldOrMean) -> tuple[int, int, int]:
    data = _spatial_data(img)
    if data.ndim not in (3, 4):
        raise InputError(
            f"image with {data.ndim} dimensions: a mask needs a 4D run (x, y, z, t) or a 3D mean image"
        )
    return (int(data.shape[0]), int(data.shape[1]), int(data.shape[2]))


def _resample_mean(
    mean: np.ndarray,
    affine: np.ndarray,
    target_affine: np.ndarray | None,
    target_shape: Sequence[int] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """nilearn's ``compute_mean`` resampling step (continuous interpolation) when a target is given."""
    if target_affine is None and target_shape is None:
        return mean, affine
    from nilearn.image import resample_img

    if target_shape is not None and target_affine is None:
        raise InputError(
            f"target_shape={tuple(target_shape)} without target_affine: pass target_affine too "
            "(a 4x4 affine), or neither to keep the run's grid"
        )
    try:
        resampled = resample_img(
            nib.Nifti1Image(mean, affine),
            target_affine=None if target_affine is None else np.asarray(target_affine),
            target_shape=None if target_shape is None else tuple(target_shape),
            copy=False,
            force_resample=True,
            copy_header=True,
        )
    except ValueError as exc:
        raise InputError(
            f"target_affine/target_shape: cannot resample the mean image ({exc}); "
            "pass a 4x4 target_affine (with a 3-tuple target_shape) or neither"
        ) from None
    return np.asarray(resampled.get_fdata(dtype=mean.dtype)), np.asarray(resampled.affine)


def _smooth_mean(mean: np.ndarray) -> np.ndarray:
    """``compute_mean(..., smooth=1)``: FWHM 1 voxel, NaNs kept where they were."""
    nan_mask = np.isnan(mean)
    sigma = np.full(3, 1.0 / np.sqrt(8 * np.log(2)))
    out = smooth_array(mean, sigma, ensure_finite=True)
    out[nan_mask] = np.nan
    return out


def _largest_connected_component(volume: np.ndarray) -> np.ndarray:
    labels, n_labels = ndimage.label(volume)
    if n_labels <= 1:
        return np.asarray(volume, dtype=bool)
    counts = np.bincount(labels.ravel().astype(int))
    counts[0] = 0
    return np.asarray(labels == counts.argmax())


def _post_process_mask(mask: np.ndarray, opening: int | bool, connected: bool) -> np.ndarray:
    """nilearn's ``_post_process_mask``: erosion, largest component, closing."""
    opening = int(opening)
    if opening:
        mask = ndimage.binary_erosion(mask, iterations=opening)
    if connected and mask.any():
        mask = _largest_connected_component(mask)
    if opening:
        mask = ndimage.binary_dilation(mask, iterations=2 * opening)
        mask = ndimage.binary_erosion(mask, iterations=opening)
    return np.asarray(mask, dtype=bool)


def _intersect(masks: list[np.ndarray], threshold: float, connected: bool) -> np.ndarray:
    """nilearn's ``intersect_masks``."""
    if not 0 <= threshold <= 1:
        raise InputError(
            f"threshold={threshold}: the fraction of runs a voxel must be in must lie in [0, 1]; "
            "pass e.g. threshold=0.5"
        )
    threshold = min(threshold, 1 - 1.0e-7)
    count = np.zeros(masks[0].shape, dtype=int)
    for m in masks:
        count += m
    grp = count > threshold * len(masks)
    if connected and grp.any():
        grp = _largest_connected_component(grp)
    return np.asarray(grp, dtype=bool)


def _check_not_empty(mask: np.ndarray, source: str, strategy: str, advice: str) -> np.ndarray:
    if not mask.any():
        raise InputError(
            f"{source}: the {strategy} mask is empty (no voxel kept). {advice} "
            "Or pass another mask strategy (e.g. 'background' or 'whole-brain-template') or "
            "your own mask_img."
        )
    return mask


_EPI_ADVICE = (
    "Are the data EPI images that were not detrended? Try another lower_cutoff/upper_cutoff "
    "(e.g. lower_cutoff=0.1), opening=0 or connected=False."
)
_BACKGROUND_ADVICE = (
    "Do the images have a homogeneous background? Try a smaller border_size, opening=0 or "
    "connected=False."
)


def _check_same_grid(bolds: Sequence[BoldOrMean], affines: list[np.ndarray]) -> None:
    shapes = [_spatial_shape(b) for b in bolds]
    for i, (shape, aff) in enumerate(zip(shapes, affines)):
        if shape != shapes[0] or not np.allclose(aff, affines[0]):
            raise InputError(
                f"{_describe(bolds[i], i)} has grid shape {shape} and affine\n{aff}\nbut "
                f"{_describe(bolds[0], 0)} has shape {shapes[0]} and affine\n{affines[0]}:\n"
                "all runs of a multi-run mask must be on the same grid; resample them to one grid "
                "first, or pass target_affine and target_shape"
            )


def _run_affines(bolds: Sequence[BoldOrMean], affine: Any) -> list[np.ndarray]:
    """One 4x4 affine per run, from one affine or a sequence of them."""
    try:
        arr = np.asarray(affine, dtype=np.float64)
    except (TypeError, ValueError):
        arr = None
    if arr is not None and arr.shape == (4, 4):
        return [arr] * len(bolds)
    if isinstance(affine, Sequence) and len(affine) == len(bolds):
        return [_as_affine(a, f"affine of run {i}") for i, a in enumerate(affine)]
    raise InputError(
        f"affine: pass one 4x4 affine for all runs, or a list of {len(bolds)} (one per run)"
    )


def _check_runs(bolds: Sequence[BoldOrMean], what: str) -> list[BoldOrMean]:
    if isinstance(bolds, (xr.DataArray, np.ndarray, da.Array)) or not isinstance(bolds, Sequence):
        raise InputError(f"{what}: pass a list of runs (one xarray.DataArray per run)")
    if len(bolds) == 0:
        raise InputError(f"{what}: got an empty list of runs; pass at least one run")
    return list(bolds)


# --------------------------------------------------------------------------------------------------
# EPI


def _epi_mask_from_mean(
    mean: np.ndarray,
    affine: np.ndarray,
    *,
    lower_cutoff: float,
    upper_cutoff: float,
    connected: bool,
    opening: int | bool,
    exclude_zeros: bool,
    ensure_finite: bool,
    target_affine: np.ndarray | None,
    target_shape: Sequence[int] | None,
) -> np.ndarray:
    """``compute_epi_mask`` once the temporal mean is known (may be empty)."""
    if not 0 <= lower_cutoff <= upper_cutoff <= 1:
        raise InputError(
            f"lower_cutoff={lower_cutoff}, upper_cutoff={upper_cutoff}: need "
            "0 <= lower_cutoff <= upper_cutoff <= 1; pass e.g. lower_cutoff=0.2, upper_cutoff=0.85"
        )
    mean, _ = _resample_mean(mean, affine, target_affine, target_shape)
    if opening:
        mean = _smooth_mean(mean)
    if ensure_finite:
        mean = np.where(np.isfinite(mean), mean, 0)
    sorted_input = np.sort(np.ravel(mean))
    if exclude_zeros:
        sorted_input = sorted_input[sorted_input != 0]
    n = len(sorted_input)
    lower = int(np.floor(lower_cutoff * n))
    upper = min(int(np.floor(upper_cutoff * n)), n - 1)
    delta = sorted_input[lower + 1 : upper + 1] - sorted_input[lower:upper]
    if delta.size == 0:
        # nilearn fails here with an argmax of an empty sequence
        return np.zeros(mean.shape, dtype=bool)
    ia = int(delta.argmax())
    threshold = 0.5 * (sorted_input[ia + lower] + sorted_input[ia + lower + 1])
    mask = mean >= threshold
    return _post_process_mask(mask, opening=opening, connected=connected)


def compute_epi_mask(
    bold_or_mean: BoldOrMean,
    affine: np.ndarray,
    *,
    lower_cutoff: float = 0.2,
    upper_cutoff: float = 0.85,
    connected: bool = True,
    opening: int | bool = 2,
    exclude_zeros: bool = False,
    ensure_finite: bool = True,
    target_affine: np.ndarray | None = None,
    target_shape: Sequence[int] | None = None,
) -> np.ndarray:
    """Brain mask of one run by nilearn's EPI heuristic (``nilearn.masking.compute_epi_mask``).

    The temporal mean is smoothed (FWHM 1 voxel, when ``opening``), its values sorted, and the
    threshold set in the widest gap between the ``lower_cutoff`` and ``upper_cutoff`` quantiles;
    the mask is then opened and reduced to its largest connected component.

    Parameters
    ----------
    bold_or_mean : xarray.DataArray (x, y, z, t), or a 3D mean image (numpy / dask / xarray)
        The run (its temporal mean is computed: one ``compute``), or its mean.
    affine : numpy.ndarray (4, 4)
        The run's affine.
    lower_cutoff, upper_cutoff, connected, opening, exclude_zeros, ensure_finite : see nilearn
    target_affine, target_shape : optional
        Resample the mean to this grid first (continuous interpolation, as nilearn).

    Returns
    -------
    numpy.ndarray of bool (x, y, z)
        The mask, on the run's grid (or the target grid).

    Raises
    ------
    InputError
        When the mask is empty (naming the run and what to try instead).
    """
    affine = _as_affine(affine)
    (mean,) = dask.compute(temporal_mean(bold_or_mean))
    mask = _epi_mask_from_mean(
        np.asarray(mean),
        affine,
        lower_cutoff=lower_cutoff,
        upper_cutoff=upper_cutoff,
        connected=connected,
        opening=opening,
        exclude_zeros=exclude_zeros,
        ensure_finite=ensure_finite,
        target_affine=target_affine,
        target_shape=target_shape,
    )
    return _check_not_empty(mask, _describe(bold_or_mean), "EPI", _EPI_ADVICE)


def compute_multi_epi_mask(
    bolds: Sequence[BoldOrMean],
    affine: np.ndarray | Sequence[np.ndarray],
    *,
    threshold: float = 0.5,
    lower_cutoff: float = 0.2,
    upper_cutoff: float = 0.85,
    connected: bool = True,
    opening: int | bool = 2,
    exclude_zeros: bool = False,
    ensure_finite: bool = True,
    target_affine: np.ndarray | None = None,
    target_shape: Sequence[int] | None = None,
) -> np.ndarray:
    """Common mask of several runs (``nilearn.masking.compute_multi_epi_mask``).

    One EPI mask per run, then the voxels in more than ``threshold`` of the run masks, reduced to
    the largest connected component when ``connected``. All the temporal means are computed in one
    ``dask.compute`` call.

    Parameters
    ----------
    bolds : list of xarray.DataArray (x, y, z, t) or 3D mean images
    affine : numpy.ndarray (4, 4), or one per run
        The runs must share one grid (same shape and affine) unless ``target_affine`` is given.
    threshold : float, default=0.5
        1 keeps the intersection of the run masks, 0 their union.
    other parameters : as :func:`compute_epi_mask`

    Returns
    -------
    numpy.ndarray of bool (x, y, z)
    """
    return _multi_mask(
        bolds,
        affine,
        "EPI",
        _EPI_ADVICE,
        functools.partial(
            _epi_mask_from_mean,
            lower_cutoff=lower_cutoff,
            upper_cutoff=upper_cutoff,
            connected=connected,
            opening=opening,
            exclude_zeros=exclude_zeros,
            ensure_finite=ensure_finite,
            target_affine=target_affine,
            target_shape=target_shape,
        ),
        threshold=threshold,
        connected=connected,
        same_grid=target_affine is None,
    )


def _multi_mask(
    bolds: Sequence[BoldOrMean],
    affine: np.ndarray | Sequence[np.ndarray],
    kind: str,
    advice: str,
    mask_from_mean: Callable[[np.ndarray, np.ndarray], np.ndarray],
    *,
    threshold: float,
    connected: bool,
    same_grid: bool,
) -> np.ndarray:
    """One mask per run from its temporal mean (all means in one compute), then nilearn's intersection."""
    runs = _check_runs(bolds, f"compute_multi_{kind.lower()}_mask")
    affines = _run_affines(runs, affine)
    if same_grid:
        _check_same_grid(runs, affines)
    means = dask.compute(*[temporal_mean(b) for b in runs])
    masks = []
    for i, (mean, aff) in enumerate(zip(means, affines, strict=True)):
        m = mask_from_mean(np.asarray(mean), aff)
        if not m.any():
            warnings.warn(
                f"{_describe(runs[i], i)}: its {kind} mask is empty. {advice}",
                UserWarning,
                stacklevel=3,
            )
        masks.append(m)
    mask = _intersect(masks, threshold=threshold, connected=connected)
    names = ", ".join(_describe(b, i) for i, b in enumerate(runs))
    extra = " Or lower threshold." if kind == "EPI" else ""
    return _check_not_empty(mask, names, f"multi-run {kind}", advice + extra)


# --------------------------------------------------------------------------------------------------
# background


def _border_data(data: np.ndarray, border_size: int) -> np.ndarray:
    return np.concatenate(
        [
            data[:border_size, :, :].ravel(),
            data[-border_size:, :, :].ravel(),
            data[:, :border_size, :].ravel(),
            data[:, -border_size:, :].ravel(),
            data[:, :, :border_size].ravel(),
            data[:, :, -border_size:].ravel(),
        ]
    )


def _background_mask_from_mean(
    mean: np.ndarray,
    affine: np.ndarray,
    *,
    border_size: int,
    connected: bool,
    opening: int | bool,
    target_affine: np.ndarray | None,
    target_shape: Sequence[int] | None,
) -> np.ndarray:
    if int(border_size) < 1:
        raise InputError(f"border_size={border_size}: must be an integer >= 1; pass e.g. 2")
    mean, _ = _resample_mean(mean, affine, target_affine, target_shape)
    border = _border_data(mean, int(border_size))
    if np.isnan(border).any():
        # NaNs as background (SPM writes NaN outside the brain)
        mask = np.logical_not(np.isnan(mean))
    else:
        mask = mean != np.median(border)
    return _post_process_mask(mask, opening=opening, connected=connected)


def compute_background_mask(
    bold_or_mean: BoldOrMean,
    affine: np.ndarray,
    *,
    border_size: int = 2,
    connected: bool = False,
    opening: int | bool = False,
    target_affine: np.ndarray | None = None,
    target_shape: Sequence[int] | None = None,
) -> np.ndarray:
    """Mask of the voxels whose mean differs from the background (``compute_background_mask``).

    The background value is the median of the mean image over a border of ``border_size`` voxels
    (or NaN when the border holds NaNs). Defaults are nilearn's (no opening, not connected).

    Returns
    -------
    numpy.ndarray of bool (x, y, z)
    """
    affine = _as_affine(affine)
    (mean,) = dask.compute(temporal_mean(bold_or_mean))
    mask = _background_mask_from_mean(
        np.asarray(mean),
        affine,
        border_size=border_size,
        connected=connected,
        opening=opening,
        target_affine=target_affine,
        target_shape=target_shape,
    )
    return _check_not_empty(mask, _describe(bold_or_mean), "background", _BACKGROUND_ADVICE)


def compute_multi_background_mask(
    bolds: Sequence[BoldOrMean],
    affine: np.ndarray | Sequence[np.ndarray],
    *,
    threshold: float = 0.5,
    border_size: int = 2,
    connected: bool = True,
    opening: int | bool = 2,
    target_affine: np.ndarray | None = None,
    target_shape: Sequence[int] | None = None,
) -> np.ndarray:
    """Common background mask of several runs (``compute_multi_background_mask``); one compute.

    Returns
    -------
    numpy.ndarray of bool (x, y, z)
    """
    return _multi_mask(
        bolds,
        affine,
        "background",
        _BACKGROUND_ADVICE,
        functools.partial(
            _background_mask_from_mean,
            border_size=border_size,
            connected=connected,
            opening=opening,
            target_affine=target_affine,
            target_shape=target_shape,
        ),
        threshold=threshold,
        connected=connected,
        same_grid=target_affine is None,
    )


# --------------------------------------------------------------------------------------------------
# template


def _load_template(template: str) -> nib.Nifti1Image:
    from nilearn import datasets

    loaders = {
        "whole-brain": datasets.load_mni152_template,
        "gm": datasets.load_mni152_gm_template,
        "wm": datasets.load_mni152_wm_template,
    }
    if template not in loaders:
        raise InputError(f"template={template!r}: unknown; pass one of {sorted(loaders)}")
    # shipped inside the nilearn package: no download
    return loaders[template](resolution=1)


def compute_template_mask(
    affine: np.ndarray,
    shape: Sequence[int],
    *,
    template: str = "whole-brain",
    threshold: float = 0.5,
    connected: bool = True,
    opening: int | bool = 2,
) -> np.ndarray:
    """MNI152 template mask on the data grid (``nilearn.masking.compute_brain_mask``).

    The 1 mm MNI152 template shipped with nilearn (whole-brain, grey or white matter) is resampled
    to the grid (continuous interpolation), thresholded at ``threshold`` and post-processed as the
    other masks. Only meaningful for data in MNI space.

    Returns
    -------
    numpy.ndarray of bool, of shape ``shape[:3]``
    """
    from nilearn.image import resample_to_img

    affine = _as_affine(affine)
    shape3 = tuple(int(s) for s in tuple(shape)[:3])
    if len(shape3) != 3 or min(shape3) < 1:
        raise InputError(f"shape={tuple(shape)}: need the grid's (x, y, z) sizes, each >= 1")
    tmpl = _load_template(template)
    target = nib.Nifti1Image(np.zeros(shape3, dtype=np.int8), affine)
    try:
        resampled = resample_to_img(tmpl, target, force_resample=True, copy_header=True)
    except ValueError:  # nilearn's BoundingBoxError: the template is outside the grid
        mask = np.zeros(shape3, dtype=bool)
    else:
        mask = np.asarray(resampled.get_fdata()) >= threshold
        mask = _post_process_mask(mask, opening=opening, connected=connected)
    if not mask.any():
        raise InputError(
            f"the {template} template mask is empty on the grid of shape {shape3} and affine\n"
            f"{affine}:\nlower the threshold (threshold={threshold}) or check that the data are in "
            "MNI space and cover the brain; or pass mask strategy 'epi' or 'background'"
        )
    return mask


# --------------------------------------------------------------------------------------------------
# user masks


def resample_mask(
    mask_img: nib.spatialimages.SpatialImage | str | Path,
    affine: np.ndarray,
    shape: Sequence[int],
) -> np.ndarray:
    """A user's mask image as a bool array on the data grid.

    Returned as is when its grid matches (same shape and affine); otherwise resampled with
    nearest-neighbour interpolation, with a ``UserWarning`` (as nilearn's maskers do).

    Raises
    ------
    InputError
        If the image cannot be read, is not 3D, is not binary (two values, one of them 0), or is
        empty (before or after resampling).
    """
    affine = _as_affine(affine)
    shape3 = tuple(int(s) for s in tuple(shape)[:3])
    source = str(mask_img) if isinstance(mask_img, (str, Path)) else "mask_img"
    img: Any
    if isinstance(mask_img, (str, Path)):
        try:
            img = nib.load(str(mask_img))
        except Exception as exc:
            raise InputError(
                f"mask_img {source}: cannot be read as a NIfTI image ({exc}); pass a .nii/.nii.gz file"
            ) from None
    elif isinstance(mask_img, nib.spatialimages.SpatialImage):
        img = mask_img
    else:
        raise InputError(
            f"mask_img of type {type(mask_img).__name__}: pass a nibabel image or a NIfTI path"
        )
    data = np.asanyarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(
            f"mask_img {source}: has shape {data.shape}, a mask must be a 3D image; pass a 3D "
            "binary mask (or compute one with a mask strategy)"
        )
    data = np.where(np.isfinite(data), data, 0)
    values = np.unique(data)
    if len(values) > 2 or (len(values) == 2 and 0 not in values):
        shown = values[:5]
        raise InputError(
            f"mask_img {source}: is not binary (values {shown}{'...' if len(values) > 5 else ''}); "
            "a mask holds 0 (outside) and one other value (inside); threshold it first"
        )
    mask = data != 0
    if not mask.any():
        raise InputError(f"mask_img {source}: is empty (no non-zero voxel); pass a non-empty mask")
    img_affine = np.asarray(img.affine, dtype=np.float64)
    if mask.shape == shape3 and np.allclose(img_affine, affine):
        return np.asarray(mask, dtype=bool)
    from nilearn.image import resample_img

    difference = float(np.abs(img_affine - np.asarray(affine, dtype=np.float64)).max())
    warnings.warn(
        f"mask_img {source} is on another grid (shape {mask.shape}, the data's {tuple(shape3)}; largest "
        f"affine difference {difference:.3g}): it is resampled to the data grid (nearest neighbour)",
        UserWarning,
        stacklevel=2,
    )
    try:
        resampled = resample_img(
            nib.Nifti1Image(mask.astype(np.int8), img_affine),
            target_affine=affine,
            target_shape=shape3,
            interpolation="nearest",
            force_resample=True,
            copy_header=True,
        )
    except ValueError:  # nilearn's BoundingBoxError: no overlap with the data grid
        out = np.zeros(shape3, dtype=bool)
    else:
        out = np.asarray(resampled.get_fdata()) != 0
    if not out.any():
        raise InputError(
            f"mask_img {source}: is empty once resampled to the data grid (it does not overlap "
            "the data's field of view); pass a mask of the same subject/space"
        )
    return out


# --------------------------------------------------------------------------------------------------
# dispatch


def compute_mask(
    bolds: Sequence[xr.DataArray],
    affine: np.ndarray | Sequence[np.ndarray],
    strategy: str = "epi",
    mask_args: dict[str, Any] | None = None,
) -> np.ndarray:
    """Mask of one or several runs by a named strategy (nilearn's maskers' ``mask_strategy``).

    Parameters
    ----------
    bolds : list of xarray.DataArray (x, y, z, t)
    affine : numpy.ndarray (4, 4), or one per run
    strategy : {"epi", "background", "whole-brain-template", "gm-template", "wm-template"}
        One run uses the single-run function, several the multi-run one.
    mask_args : dict, optional
        Keyword arguments of the function the strategy calls.

    Returns
    -------
    numpy.ndarray of bool (x, y, z)
    """
    runs = _check_runs(bolds, "compute_mask")
    args = dict(mask_args or {})
    if strategy not in MASK_STRATEGIES:
        raise InputError(
            f"mask strategy {strategy!r}: unknown; pass one of {list(MASK_STRATEGIES)}"
        )
    affines = _run_affines(runs, affine)
    func: Any
    if strategy.endswith("-template"):
        _check_same_grid(runs, affines)
        func = compute_template_mask
        call_args: tuple[Any, ...] = (affines[0], _spatial_shape(runs[0]))
        args.setdefault("template", strategy[: -len("-template")])
    elif len(runs) == 1:
        func = compute_epi_mask if strategy == "epi" else compute_background_mask
        call_args = (runs[0], affines[0])
    else:
        func = compute_multi_epi_mask if strategy == "epi" else compute_multi_background_mask
        call_args = (runs, affines)
    logger.debug("compute_mask: strategy=%s -> %s(%s)", strategy, func.__name__, args)
    try:
        return func(*call_args, **args)
    except TypeError as exc:
        if "unexpected keyword" in str(exc) or "got multiple values" in str(exc):
            raise InputError(
                f"mask_args={args}: not accepted by {func.__name__} for strategy {strategy!r} "
                f"({exc}); pass only its keyword arguments"
            ) from None
        raise
