"""A mask given by the user: put on the data grid (resampled, nearest, with a warning, when it is not on it),
and the warning for a mask that keeps the whole grid."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from daskparcel._checks import same_grid
from daskparcel.errors import InputError
from daskparcel.preprocessing.masking._common import as_affine

logger = logging.getLogger(__name__)


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
    affine = as_affine(affine)
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
    if same_grid(mask.shape, img_affine, shape3, affine):
        return np.asarray(mask, dtype=bool)
    from nilearn.image import resample_img

    difference = float(np.abs(img_affine - np.asarray(affine, dtype=np.float64)).max())
    warnings.warn(
        f"{'mask_img' if source == 'mask_img' else f'mask_img {source}'} is on another grid (shape {mask.shape}, the data's {tuple(shape3)}; largest affine "
        f"difference {difference:.3g}): it is resampled to the data grid (nearest-neighbour interpolation)",
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


def warn_whole_grid(mask: np.ndarray, source: str) -> bool:
    """Warn (``UserWarning``, with the counts) when ``mask`` keeps every voxel of its grid.

    Such a mask keeps the air around the head too: its parcels are mostly background.

    Parameters
    ----------
    mask : numpy.ndarray of bool (x, y, z)
    source : str
        What the mask came from (a mask file, or the mask strategy), named in the warning.

    Returns
    -------
    bool
        Whether it warned.
    """
    n = int(np.asarray(mask).size)
    if n == 0 or not np.asarray(mask).all():
        return False
    warnings.warn(
        f"mask {source}: keeps all {n:,} of the {n:,} voxels of the grid {tuple(np.shape(mask))}, "
        "air included, so parcels will cover the background; give a brain mask (or mask strategy "
        "'epi' / 'background')",
        UserWarning,
        stacklevel=3,
    )
    return True
