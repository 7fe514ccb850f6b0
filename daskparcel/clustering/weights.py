"""The features the kmeans family clusters: the reduction's loadings weighted by how much signal each
direction carries (see :func:`weigh_components`)."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from daskparcel._dask import from_numpy, local_cores
from daskparcel.clustering._common import features_dask
from daskparcel.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["weigh_components", "weighing_scatter", "weighted"]

#: Rows of the windows of the weighting's product (fixed: the same numbers on any number of cores).
_ROWS = 8192


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
    if scatter is None:
        scatter = _scatter_of(features_dask(features), signals)
    shape = (
        features.transpose("voxel", "component").shape
        if isinstance(features, xr.DataArray)
        else np.shape(features)
    )
    n_components = shape[1] if len(shape) == 2 else -1
    if np.shape(scatter) != (n_components, n_components):
        raise InputError(
            f"scatter: shape {np.shape(scatter)} for features of shape {shape}; pass the "
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
    return _times(np.asarray(features), scale)


def _times(x: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``x @ scale`` in float32, ``_ROWS`` rows at a time on the local cores (the client's BLAS has one
    thread: ``daskparcel.runtime.blas-threads``): fixed windows, the same numbers on any number of cores."""
    out = np.empty((x.shape[0], scale.shape[1]), np.float32)

    def window(start: int) -> None:
        rows = slice(start, start + _ROWS)
        np.matmul(np.asarray(x[rows], dtype=np.float32), scale, out=out[rows])

    with ThreadPoolExecutor(local_cores()) as pool:
        list(pool.map(window, range(0, x.shape[0], _ROWS)))
    return out


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


def weighing_scatter(cache: Any, key: str, features: Any, signals: xr.DataArray) -> np.ndarray:
    """The signals' scatter along ``features`` (what :func:`weigh_components` weighs them by), kept in ``cache``
    (the signals store, or None) as ``<key>-scatter``: the one the reduction left there when there is one
    (:func:`daskparcel.reduction.reduce_runs`), else one read of ``signals``, kept there for the next fit."""
    known = cache.cached_arrays(f"{key}-scatter") if cache is not None else None
    if known is not None:
        logger.info("%s: weighted by the scatter kept in the store (no read of the signals)", key)
        return np.asarray(known[0]["scatter"])
    scatter = _scatter_of(features_dask(features), signals)
    if cache is not None:
        cache.write_arrays(f"{key}-scatter", {"scatter": scatter})
    return scatter


def weighted(cache: Any, key: str, features: Any, signals: xr.DataArray) -> np.ndarray:
    """``features`` weighted (:func:`weigh_components`) by :func:`weighing_scatter`. The weighted features are
    not kept: from the features and the (component, component) scatter they are one product, on every core
    (0.1 s at 2 mm x 200 components on 2 cores), where writing them and reading them back took 0.5-1 s."""
    return np.asarray(
        weigh_components(features, scatter=weighing_scatter(cache, key, features, signals))
    )
