"""The features the kmeans family clusters: the reduction's loadings weighted by how much signal each
direction carries (see :func:`weigh_components`)."""

from __future__ import annotations

import logging
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from daskparcel._dask import from_numpy
from daskparcel.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["weigh_components", "weighted"]


def _block_product(u: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``u.T @ x`` of one voxel block, multiplied in float32 (the signals' precision, without a float64 copy of
    them), as a float64 (1, component, time) part of a sum over the blocks."""
    return (u.T @ x).astype(np.float64)[None]


def weigh_components(
    features: Any, signals: xr.DataArray | None = None, *, scatter: np.ndarray | None = None
) -> Any:
    """Features whose Euclidean distances weigh each direction by the signals' variance along it.

    The reduction's loadings ``U`` (voxel, component) are orthonormal: every component weighs the same
    in a distance, the noisy trailing ones as much as the leading ones. Here ``U`` is rotated and scaled
    to ``U P L^(1/2)``, with ``P L P^T`` the eigendecomposition of the scatter ``U^T Xc Xc^T U`` (``Xc`` the
    signals centred over time), so that the within-cluster sum of squares of the result is, for any labels,
    the compression residual of the signals projected on the span of ``U``: what kmeans minimises is then
    what :func:`daskparcel.metrics.compression_r2` judges. For one run whose ``U`` are its top left
    singular vectors this is ``U S`` (nilearn's per-run ``U S`` before its unit normalisation). Distances
    between voxels change, so kmeans' labels are no longer nilearn's; the span is the same.

    The scatter is given (``scatter``: :func:`daskparcel.reduction.reduce_runs` computes it from the runs'
    reductions for large cohorts), or computed in one streaming read of ``signals``: per time block,
    ``U^T X`` (component, time block) summed over the voxel blocks (each block's product in float32, the sum
    in float64), then its (component, component) Gram matrix and row sums, tree-summed over time.

    Parameters
    ----------
    features : numpy.ndarray, dask.array.Array or xarray.DataArray
        (voxel, component) loadings, e.g. :func:`reduce`'s or :func:`reduce_runs`' output.
    signals : xarray.DataArray, dims ("voxel", "time"), optional
        The signals they were reduced from (the same voxels in the same order; all runs).
    scatter : numpy.ndarray (component, component), optional
        ``U^T Xc Xc^T U``, instead of ``signals``.

    Returns
    -------
    numpy.ndarray, dask.array.Array or xarray.DataArray
        Weighted features of the same kind, shape and (for xarray) coordinates as ``features``, float32.

    Raises
    ------
    InputError
        If the signals are not (voxel, time) or their voxels do not match the features' rows, or the scatter
        is not (component, component).
    """
    u_any = (
        features.transpose("voxel", "component").data
        if isinstance(features, xr.DataArray)
        else features
    )
    u = u_any if isinstance(u_any, da.Array) else from_numpy(np.asarray(u_any))
    if scatter is None:
        scatter = _scatter_of(u, signals)
    n_components = u.shape[1] if u.ndim == 2 else -1
    if np.shape(scatter) != (n_components, n_components):
        raise InputError(
            f"scatter: shape {np.shape(scatter)} for features of shape {u.shape}; pass the "
            "(component, component) scatter of these features, or the signals"
        )
    values, vectors = np.linalg.eigh((scatter + scatter.T) / 2)
    order = np.argsort(values)[::-1]
    scale = vectors[:, order] * np.sqrt(np.clip(values[order], 0.0, None))
    logger.debug(
        "weigh_components: signal standard deviation along the components %.3g .. %.3g",
        np.sqrt(max(values.max(), 0.0)),
        np.sqrt(max(values.min(), 0.0)),
    )
    scale = scale.astype(np.float32)  # the result's precision: no float64 copy of the features
    if isinstance(features, xr.DataArray):
        weighted = features.transpose("voxel", "component").data.astype(np.float32) @ scale
        return features.transpose("voxel", "component").copy(data=weighted)
    if isinstance(features, da.Array):
        return features.astype(np.float32) @ scale
    return np.asarray(features, dtype=np.float32) @ scale


def _scatter_of(u: da.Array, signals: xr.DataArray | None) -> np.ndarray:
    """``U^T Xc Xc^T U`` in one read of the signals (see :func:`weigh_components`)."""
    if not isinstance(signals, xr.DataArray) or set(signals.dims) != {"voxel", "time"}:
        raise InputError(
            f"signals: expected an xarray.DataArray with dims ('voxel', 'time'), got "
            f"{type(signals).__name__} {getattr(signals, 'dims', '')}; pass the signals the "
            "features were reduced from"
        )
    if u.ndim != 2 or u.shape[0] != signals.sizes["voxel"]:
        raise InputError(
            f"features: shape {u.shape} for signals of {signals.sizes['voxel']} voxels; pass the "
            "(voxel, component) loadings of these signals"
        )
    x = signals.transpose("voxel", "time").data
    if not isinstance(x, da.Array):
        x = from_numpy(np.asarray(x), chunks=(u.chunks[0], -1))
    u32 = u.astype(np.float32).rechunk({0: x.chunks[0], 1: -1})
    # (component, time): each voxel block's product in float32, summed over the blocks in float64
    parts = da.blockwise(
        _block_product, "ijk", u32, "ij", x.astype(np.float32), "ik", adjust_chunks={"i": 1},
        dtype=np.float64, meta=np.empty((0, 0, 0)),
    )  # fmt: skip
    projected = parts.sum(axis=0)
    gram, sums = dask.compute(projected @ projected.T, projected.sum(axis=1))
    return np.asarray(gram - np.outer(sums, sums) / x.shape[1])  # U^T Xc Xc^T U


def weighted(cache: Any, key: str, features: Any, signals: xr.DataArray) -> np.ndarray:
    """``features`` weighted (:func:`weigh_components`), kept in ``cache`` (the signals store, or None) as
    ``<key>-weighted``: from the scatter the reduction left there (``<key>-scatter``) when there is one,
    else from one read of ``signals``."""

    def weigh() -> np.ndarray:
        known = cache.cached_arrays(f"{key}-scatter") if cache is not None else None
        if known is not None:
            logger.info("%s: weighted with the reduction's scatter (no read of the signals)", key)
            return np.asarray(weigh_components(features, scatter=known[0]["scatter"]))
        return np.asarray(weigh_components(features, signals))

    return cache.derived(f"{key}-weighted", weigh) if cache is not None else weigh()
