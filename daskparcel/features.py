"""Parcels as features for machine learning: 3D maps (contrast or beta maps, one per sample) in, a
(n_maps, n_parcels) array out.

scikit-learn's ``Pipeline`` and ``cross_val_score`` pass ``X`` as a list of samples: here a list of 3D images
(or paths). :func:`is_maps` recognises such a list (headers only), :func:`maps_dataset` stacks the maps lazily
into one Dataset ``bold(x, y, z, t)`` whose "time" axis is the maps (so ``fit`` learns a parcellation on them
as it would on a run, the way scikit-learn's ``FeatureAgglomeration`` is fitted on the training samples), and
:func:`transform_maps` gives each map's parcel means (smoothed as in ``fit``; no temporal cleaning, which would
mix the samples).
"""

from __future__ import annotations

import os
from typing import Any

import dask
import dask.array as da
import nibabel as nib
import numpy as np
import xarray as xr

from daskparcel._checks import same_grid
from daskparcel.errors import InputError

__all__ = ["is_maps", "maps_dataset", "transform_maps"]


def _header(item: Any) -> Any:
    """A nibabel image (header only for a path), or None when ``item`` is not an image or NIfTI path."""
    if isinstance(item, nib.spatialimages.SpatialImage):
        return item
    if isinstance(item, str | os.PathLike) and str(item).endswith((".nii", ".nii.gz")):
        try:
            return nib.load(item)
        except Exception:  # missing or unreadable: the runs' own checks name it
            return None
    return None


def _is_map(img: Any) -> bool:
    return img is not None and (len(img.shape) == 3 or (len(img.shape) == 4 and img.shape[3] == 1))


def is_maps(imgs: Any, minimum: int = 1) -> bool:
    """Whether ``imgs`` is one 3D image or a list of 3D images / NIfTI paths, at least ``minimum`` of them
    (headers only read). ``fit`` asks for 2: one 3D image given to ``fit`` is a run given by mistake."""
    items = list(imgs) if isinstance(imgs, list | tuple) else [imgs]
    return len(items) >= max(minimum, 1) and all(_is_map(_header(item)) for item in items)


def _load(item: Any) -> np.ndarray:
    img: Any = nib.load(item) if isinstance(item, str | os.PathLike) else item
    return np.asarray(img.dataobj, dtype=np.float32).reshape(img.shape[:3])


def _identity(item: Any) -> str:
    """What a map's data are (the cache key of a fit on maps): its file's sha256, or its values' token."""
    from daskparcel.ingest.nifti import image_file
    from daskparcel.store.runs import file_sha256

    if isinstance(item, str | os.PathLike):
        return file_sha256(item)
    filename = image_file(item)
    if filename is not None:
        return file_sha256(filename)  # an image loaded from a file: not read into memory here
    return dask.base.tokenize(np.asarray(item.dataobj), np.asarray(item.affine))


def maps_dataset(imgs: Any) -> xr.Dataset:
    """3D maps (one image or a list) stacked lazily as a run: ``bold(x, y, z, t)``, one map per ``t``.

    Raises
    ------
    InputError
        If the maps are not all on one grid.
    """
    items = list(imgs) if isinstance(imgs, list | tuple) else [imgs]
    headers = [_header(item) for item in items]
    shape, affine = headers[0].shape[:3], np.asarray(headers[0].affine, float)
    for i, img in enumerate(headers):
        if not same_grid(img.shape[:3], img.affine, shape, affine):
            raise InputError(
                f"imgs[{i}]: its grid {img.shape[:3]} differs from imgs[0]'s {shape} (or its affine does); "
                "resample the maps to one grid (nilearn.image.resample_to_img)"
            )
    token = dask.base.tokenize([_identity(item) for item in items])
    volumes = [
        da.from_delayed(dask.delayed(_load)(item), shape=shape, dtype=np.float32) for item in items
    ]
    bold = da.stack(volumes, axis=-1)
    bold = bold.rechunk((*shape, max(1, min(len(items), 16))))
    return xr.Dataset(
        {"bold": (("x", "y", "z", "t"), bold)},
        attrs={"affine": affine.tolist(), "run": f"maps-{token[:8]}", "t_r": None},
    )


def transform_maps(est: Any, imgs: Any, confounds: Any = None, *, scale: Any = None) -> np.ndarray:
    """``Parcellations.transform`` of maps: each map's parcel means, as features (n_maps, n_parcels).

    Parameters
    ----------
    est : Parcellations
        Fitted (by ``fit`` or ``from_labels``; an atlas is resampled to the maps' grid when it differs).
    imgs : 3D image or path, a list of them, or (``transform(..., as_features=True)``) 4D images whose volumes
        are maps
        Each map is smoothed with the estimator's ``smoothing_fwhm`` and averaged per parcel; the temporal
        cleaning (detrend, filters, standardize) is not applied: the maps are samples, not a time series.
    confounds : None
        Maps have no time axis to clean: refused when given.
    scale : numpy array (n_parcels,), optional
        Multiplies each parcel's column (ReNA's ``scaling``).

    Returns
    -------
    numpy.ndarray (n_maps, n_parcels), float64
        Computed (a scikit-learn estimator's input); the columns are the parcels in the order of ``transform``'s
        ``parcel`` coordinate (for an atlas: its label values, ascending).

    Raises
    ------
    InputError
        If confounds are given, or the maps are not on one grid.
    """
    from daskparcel.atlas import run_grid
    from daskparcel.ingest.resolve import resolve_runs
    from daskparcel.parcels import parcel_means
    from daskparcel.preprocessing.pipeline import run_voxel_signals

    if confounds is not None:
        raise InputError(
            "confounds: given with maps (features), which have no time axis to clean; pass confounds=None"
        )
    source = maps_dataset(imgs) if is_maps(imgs) else imgs
    out = []
    for run in resolve_runs(source, chunk_volumes=est.chunk_volumes):
        codes, mask, affine = run_grid(est, run)
        voxels = run_voxel_signals(run, mask, affine, est.smoothing_fwhm)
        means = np.asarray(parcel_means(voxels, codes, est.n_elements_).values, dtype=np.float64)
        out.append(means if scale is None else means * scale[None, :])
    return np.concatenate(out)
