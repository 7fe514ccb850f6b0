"""What the mask strategies share: describing and checking runs and grids, the mean-image steps and
morphology, as nilearn does them."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import dask.array as da
import nibabel as nib
import numpy as np
import xarray as xr
from scipy import ndimage

from daskparcel._checks import same_grid
from daskparcel.errors import InputError
from daskparcel.preprocessing.smoothing import smooth_array

logger = logging.getLogger(__name__)


BoldOrMean = xr.DataArray | da.Array | np.ndarray


# --------------------------------------------------------------------------------------------------
# helpers


def describe(img: Any, index: int | None = None) -> str:
    """A name for a run in messages: its source file if the attrs tell it, else its name or index."""
    attrs = getattr(img, "attrs", None) or {}
    if attrs.get("daskparcel_label"):
        return str(attrs["daskparcel_label"])  # set by compute_mask: the run's file
    for key in ("source", "source_path", "path", "filename"):
        if attrs.get(key):
            return f"run {attrs[key]!s}"
    name = img.name if isinstance(img, xr.DataArray) else None
    if isinstance(img, xr.DataArray) and name in (getattr(img.data, "name", None), "bold"):
        # xarray names a DataArray after its dask graph key, or after the variable of its Dataset
        # ('bold'): neither is a user's name
        name = None
    if isinstance(name, str) and name:
        if index is not None:
            return f"run {index} ({name})"
        return f"'{name}'"
    return f"run {index}" if index is not None else "the input image"


def as_affine(affine: Any, what: str = "affine") -> np.ndarray:
    arr = np.asarray(affine, dtype=np.float64)
    if arr.shape != (4, 4):
        raise InputError(
            f"{what} of shape {arr.shape}: must be a 4x4 matrix; pass the run's NIfTI affine"
        )
    return arr


def spatial_data(img: BoldOrMean) -> da.Array | np.ndarray:
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


def spatial_shape(img: BoldOrMean) -> tuple[int, int, int]:
    data = spatial_data(img)
    if data.ndim not in (3, 4):
        raise InputError(
            f"image with {data.ndim} dimensions: a mask needs a 4D run (x, y, z, t) or a 3D mean image"
        )
    return (int(data.shape[0]), int(data.shape[1]), int(data.shape[2]))


def resample_mean(
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


def smooth_mean(mean: np.ndarray) -> np.ndarray:
    """``compute_mean(..., smooth=1)``: FWHM 1 voxel, NaNs kept where they were."""
    nan_mask = np.isnan(mean)
    sigma = np.full(3, 1.0 / np.sqrt(8 * np.log(2)))
    out = smooth_array(mean, sigma, ensure_finite=True)
    out[nan_mask] = np.nan
    return out


def largest_connected_component(volume: np.ndarray) -> np.ndarray:
    labels, n_labels = ndimage.label(volume)
    if n_labels <= 1:
        return np.asarray(volume, dtype=bool)
    counts = np.bincount(labels.ravel().astype(int))
    counts[0] = 0
    return np.asarray(labels == counts.argmax())


def post_process_mask(mask: np.ndarray, opening: int | bool, connected: bool) -> np.ndarray:
    """nilearn's ``post_process_mask``: erosion, largest component, closing."""
    opening = int(opening)
    if opening:
        mask = ndimage.binary_erosion(mask, iterations=opening)
    if connected and mask.any():
        mask = largest_connected_component(mask)
    if opening:
        mask = ndimage.binary_dilation(mask, iterations=2 * opening)
        mask = ndimage.binary_erosion(mask, iterations=opening)
    return np.asarray(mask, dtype=bool)


def intersect(masks: list[np.ndarray], threshold: float, connected: bool) -> np.ndarray:
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
        grp = largest_connected_component(grp)
    return np.asarray(grp, dtype=bool)


def check_not_empty(mask: np.ndarray, source: str, strategy: str, advice: str) -> np.ndarray:
    if not mask.any():
        others = [
            s for s in ("epi", "background", "whole-brain-template") if s not in strategy.lower()
        ]
        raise InputError(
            f"{source}: the {strategy} mask is empty (no voxel kept). {advice} "
            f"Or pass another mask strategy (e.g. {' or '.join(map(repr, others))}) or "
            "your own mask_img."
        )
    return mask


EPI_ADVICE = (
    "Are the data EPI images that were not detrended? Try another lower_cutoff/upper_cutoff "
    "(e.g. lower_cutoff=0.1), opening=0 or connected=False."
)
BACKGROUND_ADVICE = (
    "Do the images have a homogeneous background? Try a smaller border_size, opening=0 or "
    "connected=False."
)


def check_same_grid(bolds: Sequence[BoldOrMean], affines: list[np.ndarray]) -> None:
    shapes = [spatial_shape(b) for b in bolds]
    for i, (shape, aff) in enumerate(zip(shapes, affines)):
        if not same_grid(shape, aff, shapes[0], affines[0]):
            diff = float(np.abs(np.asarray(aff) - np.asarray(affines[0])).max())
            raise InputError(
                f"{describe(bolds[i], i)}: grid shape {shape} (affine off by up to {diff:.3g} mm) but "
                f"{describe(bolds[0], 0)} has shape {shapes[0]}: all runs of a multi-run mask must be on "
                "the same grid; resample them to one grid first, or pass target_affine and target_shape"
            )


def run_affines(bolds: Sequence[BoldOrMean], affine: Any) -> list[np.ndarray]:
    """One 4x4 affine per run, from one affine or a sequence of them."""
    try:
        arr = np.asarray(affine, dtype=np.float64)
    except (TypeError, ValueError):
        arr = None
    if arr is not None and arr.shape == (4, 4):
        return [arr] * len(bolds)
    if isinstance(affine, Sequence) and len(affine) == len(bolds):
        return [as_affine(a, f"affine of run {i}") for i, a in enumerate(affine)]
    raise InputError(
        f"affine: pass one 4x4 affine for all runs, or a list of {len(bolds)} (one per run)"
    )


def check_runs(bolds: Sequence[BoldOrMean], what: str) -> list[BoldOrMean]:
    if isinstance(bolds, (xr.DataArray, np.ndarray, da.Array)) or not isinstance(bolds, Sequence):
        raise InputError(f"{what}: pass a list of runs (one xarray.DataArray per run)")
    if len(bolds) == 0:
        raise InputError(f"{what}: got an empty list of runs; pass at least one run")
    return list(bolds)
