"""What the clustering methods share: their features, as a dask array or in memory."""

from __future__ import annotations

import logging
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from daskparcel._dask import SCATTER_BYTES, distributed_client, from_numpy, shared
from daskparcel.errors import InputError

logger = logging.getLogger(__name__)


def _unwrapped(features: Any) -> Any:
    """The array behind features given as an xarray.DataArray (rows: voxels), else ``features``."""
    if isinstance(features, xr.DataArray):
        if set(features.dims) == {"voxel", "component"}:
            features = features.transpose("voxel", "component")
        return features.data
    return features


def features_dask(features: Any) -> da.Array:
    """Features (voxel, component) as a 2-D floating dask array, one column block (kmeans)."""
    features = _unwrapped(features)
    if isinstance(features, da.Array):
        x = features
    else:
        arr = np.asarray(features)
        if arr.dtype.kind not in "fiu":
            raise InputError(
                f"features: dtype {arr.dtype} is not numeric; pass a float array (voxel, component)"
            )
        if arr.ndim == 2:
            x = from_numpy(arr, chunks=(default_rows(arr.shape), -1))
        else:
            x = from_numpy(arr)
    if x.ndim != 2:
        raise InputError(
            f"features: expected 2 dims (voxel, component), got shape {x.shape}; reshape or "
            "pass the output of daskparcel.reduction.reduce"
        )
    if x.dtype.kind not in "fiu":
        raise InputError(f"features: dtype {x.dtype} is not numeric; pass a float array")
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    if x.numblocks[1] != 1:
        x = x.rechunk({1: -1})
    return x


def features_in_memory(features: Any, x: da.Array) -> tuple[np.ndarray, da.Array, Any]:
    """The features in memory, for the in-memory kmeans: ``(array, blocks, whole)``.

    ``array`` is the numpy array the features are (no copy), else ``x`` (their :func:`features_dask`)
    computed; ``blocks`` its rows as a dask array (``x`` itself for held features); ``whole`` one copy of it
    for the tasks that take the features whole (every start). On a distributed cluster the blocks are on the
    workers (:func:`~daskparcel._dask.from_numpy` scattered them), so ``whole`` is those blocks joined on a
    worker: the features leave this process once, where scattering them whole again (and again for
    ``blocks``) sent them three times (0.9 s of a 2.8 s clustering step on 2 cores).
    """
    held = _unwrapped(features)
    if isinstance(held, np.ndarray) and held.ndim == 2 and held.dtype.kind == "f":
        arr = held
    else:
        arr = np.asarray(x.compute())
        x = from_numpy(arr, chunks=(default_rows(arr.shape), -1))
    if distributed_client() is None or arr.nbytes <= SCATTER_BYTES:
        return arr, x, shared(arr)
    return arr, x, dask.delayed(np.concatenate, pure=True)(list(x.to_delayed().ravel()))


def default_rows(shape: tuple[int, ...]) -> int:
    """Rows of a ~32 MB float64 chunk of a (rows, columns) array."""
    n_cols = shape[1] if len(shape) > 1 else 1
    return max(1, min(shape[0] if shape else 1, (32 * 2**20) // (8 * max(1, n_cols))))


def features_array(features: Any) -> np.ndarray:
    """Features (voxel, component) as a finite, C-contiguous float numpy array (the agglomerations)."""
    if hasattr(features, "compute") and not isinstance(features, np.ndarray):
        logger.debug("computing the features (%s) into memory for agglomeration", type(features))
        features = features.compute()
    if hasattr(features, "values") and not isinstance(features, np.ndarray):
        features = features.values
    x = np.asarray(features)
    if x.ndim == 1:
        x = x.reshape(-1, 1)
    if x.ndim != 2:
        raise InputError(
            f"features: expected a 2D (voxel, component) array, got shape {x.shape}; pass one row "
            "per mask voxel"
        )
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    if not np.all(np.isfinite(x)):
        raise InputError(
            "features: contain NaN or infinite values; clean the signals (or drop voxels with zero "
            "variance from the mask) before clustering"
        )
    return np.ascontiguousarray(x)
