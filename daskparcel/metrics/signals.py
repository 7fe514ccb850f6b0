"""Quality figures of a parcellation on the voxel signals, streamed over them: compression R^2 (overall,
per parcel, per voxel) and homogeneity."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import scipy.sparse as sp
import xarray as xr
from flox.xarray import xarray_reduce

from daskparcel.errors import InputError
from daskparcel.parcels import check_labels, check_signals, parcel_means

logger = logging.getLogger(__name__)

__all__ = ["compression_r2", "homogeneity", "r2_map", "r2_per_parcel"]


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
    signals = check_signals(signals)
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

    signals = check_signals(signals)
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
