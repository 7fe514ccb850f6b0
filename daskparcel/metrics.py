"""Quality of a parcellation.

Thirion et al. (2014, "Which fMRI clustering gives good brain parcellations?") compare parcellations
by how well they fit the data, their reproducibility and their shape; ReNA (Hoyos-Idrobo et al. 2018)
by how well parcel means approximate the voxels. This module gives:

* :func:`compression_r2`, :func:`r2_per_parcel`, :func:`r2_map`: variance of the voxel signals
  explained by their parcel means, lazily over the signals;
* :func:`homogeneity`: resting-state homogeneity (Schaefer et al. 2018, Gordon et al. 2016), the
  size-weighted mean correlation of the voxels within each parcel, in one streaming read;
* :func:`parcel_sizes`: size balance (sizes, coefficient of variation, largest, singletons);
* :func:`contiguity`: fraction of parcels that are one connected region (6-connectivity);
* :func:`adjusted_rand`: agreement of two parcellations (split-half reproducibility, or accuracy
  against a planted ground truth), and :func:`split_half_reproducibility`.

Labels follow the image convention: ``1..K`` for parcels, ``0`` for voxels in no parcel.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import xarray as xr
from flox.xarray import xarray_reduce

from daskparcel.errors import InputError
from daskparcel.parcels import _check_signals, check_labels, parcel_means

logger = logging.getLogger(__name__)

__all__ = [
    "Contiguity",
    "ParcelSizes",
    "adjusted_rand",
    "compression_r2",
    "contiguity",
    "homogeneity",
    "parcel_sizes",
    "r2_map",
    "r2_per_parcel",
    "split_half_reproducibility",
]


# --------------------------------------------------------------------------------------------------
# compression R^2
# --------------------------------------------------------------------------------------------------


def _shifted(signals: xr.DataArray) -> xr.DataArray:
    """The signals in float64, each voxel minus its first sample, without voxel coordinates.

    Sums of squares about the time mean are then computed from one pass of sums and sums of
    squares (``sum y^2 - (sum y)^2 / T``) with no cancellation from a large baseline (BOLD at
    1000 +- 10): centring first (``x - x.mean("time")``) needs every time chunk of a voxel block
    before the first can be used, so dask holds whole voxel blocks (over all runs of a cohort) in
    memory; the shift needs only the first time chunk.
    """
    signals = _check_signals(signals)
    x = signals.astype(np.float64)
    x = x.drop_vars([n for n, c in x.coords.items() if "voxel" in c.dims])
    return x - x.isel(time=0, drop=True)


def _sums_block(
    y: np.ndarray, m: np.ndarray | None = None, codes: np.ndarray | None = None
) -> np.ndarray:
    """(voxel, 1, terms) sums over one time block: ``sum y``, ``sum y^2`` and, given the parcel
    signals ``m`` (time, parcel) and the labels, ``sum y m_p(v)`` and ``sum m_p(v)^2`` (0 for
    voxels labelled 0)."""
    out = [y.sum(axis=1), (y * y).sum(axis=1)]
    if m is not None and codes is not None:
        fitted = m[:, np.maximum(codes, 1) - 1].T * (codes > 0)[:, None]
        out += [(y * fitted).sum(axis=1), (fitted * fitted).sum(axis=1)]
    return np.stack(out, axis=-1)[:, None, :]


def _voxel_sums(y: xr.DataArray, m: Any = None, codes: np.ndarray | None = None) -> xr.DataArray:
    """The sums of :func:`_sums_block` over the whole time axis (dims voxel, term).

    One task per (voxel block, time block) computes every term, so each block of the signals has
    one consumer here and is dropped as soon as it is summed (separate xarray reductions let dask
    hold a voxel block's time blocks for the next reduction).
    """
    import dask.array as da

    data = y.transpose("voxel", "time").data
    if not isinstance(data, da.Array):
        m_np = None if m is None else np.asarray(m)
        out = _sums_block(np.asarray(data), m_np, codes)[:, 0, :]
    else:
        args: list[Any] = [data, "vt"]
        if m is not None and codes is not None:
            m_d = da.asarray(m).rechunk((data.chunks[1], -1))
            args += [m_d, "tp", da.from_array(codes, chunks=(data.chunks[0],)), "v"]
        per_block = da.blockwise(
            _sums_block, "vtk", *args,
            new_axes={"k": 2 if len(args) == 2 else 4}, adjust_chunks={"t": 1},
            dtype=np.float64, concatenate=True,
        )  # fmt: skip
        out = per_block.sum(axis=1)
    return xr.DataArray(out, dims=("voxel", "term"))


def _ss_about_mean(sums: xr.DataArray, n: int) -> xr.DataArray:
    """``sum_t (y_t - mean_t y)^2 = sum y^2 - (sum y)^2 / T`` from the sums, clipped at 0."""
    return (sums.isel(term=1) - sums.isel(term=0) ** 2 / n).clip(min=0.0)


def _centred_means(
    y: xr.DataArray, codes: np.ndarray, n_parcels: int, parcel_signals: xr.DataArray | None
) -> xr.DataArray:
    """The parcel means of ``y`` (or the given ``parcel_signals``, checked against the labels),
    centred over time: (time, parcel) float64. Given parcel means of the unshifted signals are the
    same once centred."""
    if parcel_signals is None:
        parcel_signals = parcel_means(y, codes, n_parcels)
    elif parcel_signals.sizes.get("parcel") != n_parcels:
        raise InputError(
            f"parcel_signals: {parcel_signals.sizes.get('parcel')} parcels, labels have "
            f"{n_parcels} (max label); pass the parcel means of these labels"
        )
    m = parcel_signals.astype(np.float64).transpose("time", "parcel")
    return m - m.mean("time")


def _r2_parts(
    signals: xr.DataArray,
    labels: np.ndarray | xr.DataArray,
    n_parcels: int | None,
    parcel_signals: xr.DataArray | None = None,
) -> tuple[xr.DataArray, xr.DataArray]:
    """Lazy (explained, total) sums of squares per parcel, in float64, from one pass over signals.

    With ``x~_v`` voxel ``v`` centred over time and ``m~_p`` the centred mean of parcel ``p``
    (``n_p`` voxels): total_p = sum_{v in p} ||x~_v||^2 and explained_p = n_p ||m~_p||^2, so
    that the residual sum_{v in p} ||x~_v - m~_p||^2 = total_p - explained_p (``m~_p`` is the
    mean of the ``x~_v``, an orthogonal projection). Every term is a sum over time of the shifted
    signals (:func:`_shifted`; a shift by a constant per voxel changes neither ``x~_v`` nor
    ``m~_p``), so each chunk is read once and dropped: the memory is a few chunks whatever the
    length of the cohort.
    """
    y = _shifted(signals)
    codes, n_parcels = check_labels(labels, y.sizes["voxel"], n_parcels)
    by = xr.DataArray(codes, dims="voxel", name="parcel")
    total = xarray_reduce(
        _ss_about_mean(_voxel_sums(y), y.sizes["time"]),
        by,
        func="sum",
        expected_groups=np.arange(1, n_parcels + 1),
        dim="voxel",
        fill_value=0.0,
    )
    centred_means = _centred_means(y, codes, n_parcels, parcel_signals)  # (time, parcel): small
    counts = np.bincount(codes, minlength=n_parcels + 1)[1:]
    explained = (centred_means**2).sum("time").fillna(0.0) * xr.DataArray(counts, dims="parcel")
    return explained, total


def _maybe_compute(result: xr.DataArray, compute: bool) -> Any:
    return result.compute() if compute else result


def compression_r2(
    signals: xr.DataArray,
    labels: np.ndarray | xr.DataArray,
    *,
    n_parcels: int | None = None,
    parcel_signals: xr.DataArray | None = None,
    compute: bool = True,
) -> float | xr.DataArray:
    """Fraction of the voxels' variance explained by their parcel means (compression R^2).

    With ``x_v`` the signal of voxel ``v`` centred over time (``x_v - mean_t(x_v)``) and ``m_p`` the
    mean of the centred signals of the voxels of parcel ``p`` (the centred parcel mean)::

        R^2 = 1 - sum_v ||x_v - m_{p(v)}||^2 / sum_v ||x_v||^2

    summed over the voxels with a label ``>= 1`` (voxels labelled 0 are left out). It is 1 when
    every voxel equals its parcel mean up to a constant, 0 when parcel means carry no signal
    (e.g. one voxel a parcel gives 1, one parcel of independent voxels about 1 / n_voxels).
    Centring is over the whole time axis given; to centre each run separately, clean the signals
    first (e.g. standardize per run). Computed in float64 in one pass over the signals.

    Parameters
    ----------
    signals : xarray.DataArray, dims ("voxel", "time")
        Voxel signals (dask-backed or numpy), any chunking.
    labels : numpy array or xarray.DataArray, shape (n_voxels,)
        Parcel of each voxel, ``1..K``; ``0`` = no parcel.
    n_parcels : int, optional
        ``K``, default ``max(labels)``.
    parcel_signals : xarray.DataArray, dims ("time", "parcel"), optional
        The parcel means of ``signals`` if already computed (as :func:`r2_map` takes them); the
        signals are then only summed per voxel.
    compute : bool, default True
        If False, return a lazy 0-d DataArray, so callers can compute several metrics at once
        (``dask.compute(a, b)``).

    Returns
    -------
    float or xarray.DataArray
        R^2; NaN if the labelled voxels have no variance.
    """
    explained, total = _r2_parts(signals, labels, n_parcels, parcel_signals)
    tot = total.sum("parcel")
    r2 = (explained.sum("parcel") / tot.where(tot > 0)).rename("compression_r2")
    if compute:
        return float(r2.compute())
    return r2


def r2_per_parcel(
    signals: xr.DataArray,
    labels: np.ndarray | xr.DataArray,
    *,
    n_parcels: int | None = None,
    compute: bool = True,
) -> xr.DataArray:
    """Compression R^2 of each parcel (the formula of :func:`compression_r2` within the parcel).

    Parameters
    ----------
    signals, labels, n_parcels, compute
        As in :func:`compression_r2`.

    Returns
    -------
    xarray.DataArray, dims ("parcel",)
        Coordinate ``parcel`` = ``1..K``; NaN for an empty parcel or one without variance; 1 for a
        single-voxel parcel with variance. Lazy when ``compute=False``.
    """
    explained, total = _r2_parts(signals, labels, n_parcels)
    r2 = (explained / total.where(total > 0)).rename("r2")
    return _maybe_compute(r2.transpose("parcel"), compute)


def r2_map(
    signals: xr.DataArray,
    labels: np.ndarray | xr.DataArray,
    *,
    parcel_signals: xr.DataArray | None = None,
    compute: bool = True,
) -> xr.DataArray:
    """R^2 of each voxel by its parcel mean: ``1 - ||x_v - m_p||^2 / ||x_v||^2`` (both centred).

    Parameters
    ----------
    signals : xarray.DataArray, dims ("voxel", "time")
        Voxel signals.
    labels : numpy array or xarray.DataArray, shape (n_voxels,)
        Parcel of each voxel ``1..K`` with ``K = max(labels)``; a voxel labelled 0 gets NaN.
    parcel_signals : xarray.DataArray, dims ("time", "parcel"), optional
        The parcel means of ``signals`` if already computed (e.g. by ``transform``). Without them
        the graph computes them first and then reads the signals a second time: pass them (in
        memory) for signals larger than memory.
    compute : bool, default True
        If False, return the lazy result.

    Returns
    -------
    xarray.DataArray, dims ("voxel",)
        Per-voxel R^2 (can be negative for a voxel anti-correlated with its parcel); NaN for a voxel
        without variance. Use :func:`daskparcel.parcels.to_volumes`-style scattering (or
        ``nilearn.masking.unmask``) to make a map.
    """
    y = _shifted(signals)
    codes, n_parcels = check_labels(labels, y.sizes["voxel"])
    m = _centred_means(y, codes, n_parcels, parcel_signals).data
    # ||x~ - m~||^2 = ||x~||^2 - 2 <y, m~> + ||m~||^2, as <x~, m~> = <y, m~> (m~ sums to 0 over
    # time): the cross terms are summed per (voxel block, time block), so the signals are read
    # once, chunk by chunk, as in _r2_parts
    sums = _voxel_sums(y, m, codes)
    total = _ss_about_mean(sums, y.sizes["time"])
    residual = total - 2.0 * sums.isel(term=2) + sums.isel(term=3)
    r2 = 1.0 - residual.clip(min=0.0) / total.where(total > 0)
    r2 = r2.where(xr.DataArray(codes > 0, dims="voxel")).rename("r2")
    return _maybe_compute(r2, compute)


# --------------------------------------------------------------------------------------------------
# homogeneity
# --------------------------------------------------------------------------------------------------


def _unit_sums_block(y: np.ndarray, codes: np.ndarray, n_parcels: int) -> np.ndarray:
    """(1, parcel, time + 1): per parcel, the sum of its voxels' centred unit-norm series over one
    voxel block of a whole run, and (last column) how many voxels entered the sum.

    A voxel without variance in the run (relative to its magnitude) has no correlation and is left
    out, as are voxels labelled 0.
    """
    x = np.asarray(y, dtype=np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    norm = np.sqrt((x * x).sum(axis=1))
    scale = np.abs(np.asarray(y, dtype=np.float64)).max(axis=1, initial=0.0)
    valid = (codes > 0) & (norm > 1e-10 * scale * np.sqrt(x.shape[1])) & (norm > 0)
    rows = codes[valid] - 1
    out = np.zeros((n_parcels, x.shape[1] + 1), dtype=np.float64)
    if rows.size:
        z = x[valid] / norm[valid, None]
        inc = sp.csr_matrix(
            (np.ones(rows.size), (rows, np.arange(rows.size))), shape=(n_parcels, rows.size)
        )
        out[:, :-1] = inc @ z
        out[:, -1] = np.bincount(rows, minlength=n_parcels)
    return out[None]


def _run_terms(data: Any, codes: np.ndarray, n_parcels: int) -> Any:
    """(2, parcel) for one run: ``||sum of the parcel's unit series||^2`` and the voxel counts.

    The run's time axis is joined into one chunk per voxel block (each task holds a voxel block over
    one run, as the signals store is chunked), the parcel sums of the blocks are tree-summed, and
    only the (2, parcel) result leaves the graph.
    """
    import dask.array as da

    if not isinstance(data, da.Array):
        sums = _unit_sums_block(np.asarray(data), codes, n_parcels)[0]
        return np.stack([(sums[:, :-1] ** 2).sum(axis=1), sums[:, -1]])
    data = data.rechunk({1: -1})
    per_block = da.blockwise(
        _unit_sums_block, "vpt",
        data, "vt", da.from_array(codes, chunks=(data.chunks[0],)), "v",
        n_parcels=n_parcels,
        new_axes={"p": n_parcels}, adjust_chunks={"v": 1, "t": lambda c: c + 1},
        dtype=np.float64, concatenate=True,
    )  # fmt: skip
    sums = per_block.sum(axis=0)
    return da.stack([(sums[:, :-1] ** 2).sum(axis=1), sums[:, -1]])


def homogeneity(
    signals: xr.DataArray,
    labels: np.ndarray | xr.DataArray,
    *,
    n_parcels: int | None = None,
    run: str | None = "run",
    compute: bool = True,
) -> float | xr.DataArray:
    """Resting-state homogeneity: the size-weighted mean within-parcel correlation, averaged over runs.

    As CBIG's ``CBIG_ComputeParcellationHomogeneity`` (Schaefer et al. 2018; Gordon et al. 2016): in
    each run, the homogeneity of parcel ``p`` (``n_p`` voxels) is the mean Pearson correlation of
    its ``n_p (n_p - 1) / 2`` voxel pairs (1 for a single voxel); the run's homogeneity is their mean
    weighted by ``n_p``; the result is the mean over runs. No voxel x voxel matrix is formed: with
    ``z_v`` the centred unit-norm series of voxel ``v`` in the run and ``S_p`` the sum of the ``z_v``
    of the parcel, the sum of its pairwise correlations is ``(||S_p||^2 - n_p) / 2``. The signals are
    read once, a voxel block over one run per task; the memory is that block and a (parcel, time)
    table of the run.

    Voxels labelled 0 are left out, and so are voxels without variance in a run (they have no
    correlation): ``n_p`` counts the voxels of ``p`` with variance in that run.

    Parameters
    ----------
    signals : xarray.DataArray, dims ("voxel", "time")
        Voxel signals (dask-backed or numpy), as :func:`compression_r2` takes them, e.g. a fitted
        store's ``signals("cleaned")``; runs are told apart by the coordinate ``run`` along time.
    labels : numpy array or xarray.DataArray, shape (n_voxels,)
        Parcel of each voxel, ``1..K``; ``0`` = no parcel.
    n_parcels : int, optional
        ``K``, default ``max(labels)``.
    run : str or None, default "run"
        The coordinate along time whose values name the runs (each run is a set of time points);
        when ``"run"`` is absent, or with None, the whole time axis is one run.
    compute : bool, default True
        If False, return a lazy 0-d DataArray (to compute with other metrics in one pass).

    Returns
    -------
    float or xarray.DataArray
        Homogeneity in [-1, 1]; NaN if no labelled voxel has variance in any run.

    Raises
    ------
    InputError
        If the signals or labels are malformed, or ``run`` names no coordinate along time.
    """
    import dask.array as da

    signals = _check_signals(signals)
    codes, n_parcels = check_labels(labels, signals.sizes["voxel"], n_parcels)
    n_time = signals.sizes["time"]
    if run is None or (run == "run" and run not in signals.coords):
        groups = [np.arange(n_time)]
    else:
        if run not in signals.coords or signals[run].dims != ("time",):
            along = [str(c) for c in signals.coords if signals[c].dims == ("time",)]
            raise InputError(
                f"run={run!r}: not a coordinate of signals along time; pass run=None (one run) "
                f"or one of {along}"
            )
        values = np.asarray(signals[run].values)
        _, first, inverse = np.unique(values, return_index=True, return_inverse=True)
        groups = [np.flatnonzero(inverse == g) for g in np.argsort(first)]
    data = signals.data
    terms = []
    for idx in groups:
        contiguous = idx.size and idx[-1] - idx[0] == idx.size - 1
        piece = data[:, idx[0] : idx[-1] + 1] if contiguous else data[:, idx]
        terms.append(_run_terms(piece, codes, n_parcels))
    stacked = da.stack(terms) if any(isinstance(t, da.Array) for t in terms) else np.stack(terms)
    square, count = stacked[:, 0], stacked[:, 1]  # (run, parcel)
    pairs = count * (count - 1)
    per_parcel = np.where(count > 1, (square - count) / np.where(pairs > 0, pairs, 1), 1.0)
    weight = count.sum(axis=1)
    per_run = (per_parcel * count).sum(axis=1) / np.where(weight > 0, weight, 1)
    used = weight > 0
    result = xr.DataArray(
        (per_run * used).sum() / used.sum(), name="homogeneity"
    )  # NaN (0 / 0) when no run has a voxel with variance
    if compute:
        with np.errstate(invalid="ignore", divide="ignore"):
            return float(result.compute())
    return result


# --------------------------------------------------------------------------------------------------
# parcel sizes
# --------------------------------------------------------------------------------------------------


def _as_int_labels(labels: Any, name: str) -> np.ndarray:
    """Labels (any dims) as an int64 array; nibabel images are read."""
    if hasattr(labels, "get_fdata") and hasattr(labels, "affine"):
        labels = np.asarray(labels.dataobj)
    elif isinstance(labels, xr.DataArray):
        labels = labels.values
    values = np.asarray(labels)
    if values.size and not np.issubdtype(values.dtype, np.integer):
        if not np.issubdtype(values.dtype, np.number) or not np.all(values == np.round(values)):
            raise InputError(
                f"{name}: dtype {values.dtype} with non-integer values; labels must be integers "
                "0..K (0 = no parcel)"
            )
    values = values.astype(np.int64)
    if values.size and values.min() < 0:
        raise InputError(
            f"{name}: has negative values (min {values.min()}); labels must be 0 (no parcel) or "
            "1..K; if your labels are 0..K-1 cluster indices, pass labels + 1"
        )
    return values


@dataclass(frozen=True)
class ParcelSizes:
    """Sizes of the parcels of a parcellation.

    Attributes
    ----------
    sizes : numpy.ndarray of int, shape (K,)
        Number of voxels of parcel ``k`` at index ``k - 1``.
    cv : float
        Coefficient of variation of the sizes: population standard deviation / mean (0 when all
        parcels have the same size), over all ``K`` parcels.
    largest : int
        Size of the largest parcel.
    largest_label : int
        Label of the largest parcel (the smallest such label on ties).
    n_singletons : int
        Number of parcels of exactly one voxel.
    n_empty : int
        Number of parcels ``1..K`` with no voxel.
    """

    sizes: np.ndarray
    cv: float
    largest: int
    largest_label: int
    n_singletons: int
    n_empty: int

    @property
    def n_parcels(self) -> int:
        """Number of parcels ``K``."""
        return int(self.sizes.shape[0])

    def histogram(
        self, bins: int | np.ndarray = 20, *, log: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Histogram of the non-empty parcel sizes.

        Parameters
        ----------
        bins : int or array
            Number of bins, or the bin edges.
        log : bool, default True
            With an integer ``bins``: log-spaced edges from 1 to the largest size (sizes span
            orders of magnitude for kmeans-type parcellations); else linear edges.

        Returns
        -------
        counts, edges : numpy.ndarray
            As :func:`numpy.histogram`.
        """
        sizes = self.sizes[self.sizes > 0]
        if isinstance(bins, int | np.integer) and log:
            top = max(int(sizes.max()) if sizes.size else 1, 2)
            bins = np.logspace(0, np.log10(top), int(bins) + 1)
            bins[-1] = top  # exact upper edge, so the largest parcel is counted
        counts, edges = np.histogram(sizes, bins=bins)
        return counts, edges


def parcel_sizes(labels: Any, n_parcels: int | None = None) -> ParcelSizes:
    """Sizes of the parcels, and summaries of their balance.

    Parameters
    ----------
    labels : array-like or nibabel image
        Labels ``1..K`` (``0`` = background) of voxels (1D) or of a labels image (3D).
    n_parcels : int, optional
        ``K``, default ``max(labels)``; parcels up to ``K`` without a voxel count as empty.

    Returns
    -------
    ParcelSizes

    Raises
    ------
    InputError
        If the labels are not non-negative integers, contain no parcel, or exceed ``n_parcels``.
    """
    values = _as_int_labels(labels, "labels").ravel()
    _, k = check_labels(values, values.shape[0], n_parcels)
    sizes = np.bincount(values, minlength=k + 1)[1:]
    mean = sizes.mean()
    return ParcelSizes(
        sizes=sizes,
        cv=float(sizes.std() / mean) if mean > 0 else float("nan"),
        largest=int(sizes.max()),
        largest_label=int(np.argmax(sizes)) + 1,
        n_singletons=int(np.sum(sizes == 1)),
        n_empty=int(np.sum(sizes == 0)),
    )


# --------------------------------------------------------------------------------------------------
# spatial contiguity
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Contiguity:
    """Spatial contiguity of a parcellation (6-connectivity, as ``grid_to_graph``).

    Attributes
    ----------
    fraction : float
        Fraction of the non-empty parcels that are one connected region.
    disconnected : numpy.ndarray of int
        Labels of the parcels made of several regions, sorted.
    n_components : numpy.ndarray of int, shape (K,)
        Number of connected regions of parcel ``k`` at index ``k - 1`` (0 for an empty parcel).
    """

    fraction: float
    disconnected: np.ndarray
    n_components: np.ndarray

    def __float__(self) -> float:
        return self.fraction


def contiguity(labels: Any, mask: np.ndarray | None = None) -> Contiguity:
    """Fraction of parcels that are one connected region of the grid (6-connectivity).

    Two voxels are neighbours when they share a face, as in
    ``sklearn.feature_extraction.image.grid_to_graph``. All parcels are handled at once: the
    neighbour pairs with the same label form a graph whose connected components are counted per
    label (no loop over labels).

    Parameters
    ----------
    labels : array-like or nibabel image
        A 3D labels volume (``0`` = background, ``1..K`` parcels), or, with ``mask``, the 1D labels
        of the mask's voxels in voxel order.
    mask : numpy.ndarray of bool, 3D, optional
        The mask of 1D ``labels``.

    Returns
    -------
    Contiguity
        ``float(result)`` is the fraction; ``result.disconnected`` lists the split parcels.

    Raises
    ------
    InputError
        If the labels are not a 3D volume (or 1D with a matching mask) of non-negative integers.
    """
    from scipy.sparse import coo_array
    from scipy.sparse.csgraph import connected_components

    values = _as_int_labels(labels, "labels")
    if mask is not None:
        mask = np.asarray(mask).astype(bool)
        if mask.ndim != 3 or values.ndim != 1 or values.shape[0] != int(mask.sum()):
            raise InputError(
                f"labels: shape {values.shape} with a mask of shape {mask.shape} and "
                f"{int(mask.sum())} voxels; with a 3D mask pass 1D labels, one per mask voxel"
            )
        volume = np.zeros(mask.shape, dtype=np.int64)
        volume[mask] = values
    else:
        if values.ndim != 3:
            raise InputError(
                f"labels: has {values.ndim} dimensions; pass a 3D labels volume, or 1D labels "
                "with mask=<3D bool array>"
            )
        volume = values
    k = int(volume.max()) if volume.size else 0
    if k < 1:
        raise InputError("labels: contains no parcel (all 0); pass labels with values 1..K")
    index = np.arange(volume.size).reshape(volume.shape)
    rows, cols = [], []
    for axis in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        a, b = volume[tuple(lo)], volume[tuple(hi)]
        same = (a == b) & (a > 0)
        rows.append(index[tuple(lo)][same])
        cols.append(index[tuple(hi)][same])
    fg = np.flatnonzero(volume.ravel() > 0)
    compact = np.full(volume.size, -1, dtype=np.int64)
    compact[fg] = np.arange(fg.size)
    r = compact[np.concatenate(rows)]
    c = compact[np.concatenate(cols)]
    graph = coo_array((np.ones(r.size, dtype=np.int8), (r, c)), shape=(fg.size, fg.size))
    _, component = connected_components(graph, directed=False)
    fg_labels = volume.ravel()[fg]
    # each component lies inside one parcel: count distinct components per label
    first = np.unique(component, return_index=True)[1]
    n_components = np.bincount(fg_labels[first], minlength=k + 1)[1:]
    present = n_components > 0
    disconnected = np.flatnonzero(n_components > 1) + 1
    fraction = float(np.sum(n_components == 1) / np.sum(present))
    return Contiguity(fraction=fraction, disconnected=disconnected, n_components=n_components)


# --------------------------------------------------------------------------------------------------
# agreement between parcellations
# --------------------------------------------------------------------------------------------------


def adjusted_rand(a: Any, b: Any, mask: np.ndarray | None = None) -> float:
    """Adjusted Rand index between two parcellations, over the voxels both label.

    This is the reproducibility measure of Thirion et al. 2014 when ``a`` and ``b`` are fitted on
    two halves of a cohort (or of a run's time series, see :func:`split_half_reproducibility`), and
    the accuracy measure when ``b`` is the planted parcellation of a synthetic dataset. Label
    values need not match between ``a`` and ``b`` (the index is invariant to relabelling).

    Parameters
    ----------
    a, b : array-like or nibabel image
        Labels of the same voxels (same shape): labels images (3D) or 1D voxel labels;
        ``0`` = background.
    mask : numpy.ndarray of bool, optional
        Voxels to compare; default: the voxels labelled ``>= 1`` in both ``a`` and ``b``.

    Returns
    -------
    float
        ``sklearn.metrics.adjusted_rand_score`` over those voxels: 1 for identical partitions,
        about 0 for independent ones.

    Raises
    ------
    InputError
        If the shapes differ or no voxel is compared.
    """
    from sklearn.metrics import adjusted_rand_score

    va, vb = _as_int_labels(a, "a"), _as_int_labels(b, "b")
    if va.shape != vb.shape:
        raise InputError(
            f"a, b: shapes {va.shape} and {vb.shape} differ; both parcellations must label the "
            "same voxels (resample one labels image onto the other's grid with nearest neighbour)"
        )
    if mask is None:
        keep = (va > 0) & (vb > 0)
    else:
        keep = np.asarray(mask).astype(bool)
        if keep.shape != va.shape:
            raise InputError(f"mask: shape {keep.shape}, expected {va.shape} like the labels")
    if not keep.any():
        raise InputError("a, b: no voxel is labelled in both parcellations (or in mask)")
    return float(adjusted_rand_score(va[keep], vb[keep]))


def split_half_reproducibility(
    fit_fn: Callable[[xr.DataArray], np.ndarray],
    signals: xr.DataArray,
    split: str = "time",
) -> float:
    """Split-half reproducibility: ARI between the parcellations of two halves of the data.

    Parameters
    ----------
    fit_fn : callable
        ``fit_fn(signals_half) -> labels`` (one integer label per voxel, in voxel order: cluster
        indices ``0..K-1`` as clustering functions return, or ``1..K``), e.g. a wrapper around a
        clustering of ``signals_half``. Every voxel is compared.
    signals : xarray.DataArray, dims ("voxel", "time")
        Voxel signals of one run or of runs concatenated along time.
    split : str, default "time"
        ``"time"``: first half of the time points against the second half; or the name of a
        coordinate along time (e.g. ``"run"``, ``"subject"``): its values, in order of first
        appearance, are dealt alternately to the two halves (Thirion et al. 2014 split a cohort's
        subjects in two groups).

    Returns
    -------
    float
        :func:`adjusted_rand` of the two labelings (over the voxels both label).

    Raises
    ------
    InputError
        If ``split`` is neither ``"time"`` nor a coordinate along time with at least two values.
    """
    signals = _check_signals(signals)
    if split == "time":
        n = signals.sizes["time"]
        if n < 2:
            raise InputError("signals: fewer than 2 time points; cannot split them in halves")
        first = np.arange(n) < n // 2
    else:
        if split not in signals.coords or signals[split].dims != ("time",):
            raise InputError(
                f"split={split!r}: not 'time' nor a coordinate of signals along time; pass "
                f"split='time' or one of {[c for c in signals.coords if signals[c].dims == ('time',)]}"
            )
        groups = np.asarray(signals[split].values)
        _, order = np.unique(groups, return_index=True)
        values = groups[np.sort(order)]
        if values.size < 2:
            raise InputError(
                f"split={split!r}: signals has a single {split} ({values[0]!r}); pass split='time'"
            )
        first = np.isin(groups, values[0::2])
    idx = np.arange(signals.sizes["time"])
    labels_a = fit_fn(signals.isel(time=idx[first]))
    labels_b = fit_fn(signals.isel(time=idx[~first]))
    score = adjusted_rand(np.asarray(labels_a) + 1, np.asarray(labels_b) + 1)
    logger.debug("split_half_reproducibility(split=%s): ARI = %.4f", split, score)
    return score
