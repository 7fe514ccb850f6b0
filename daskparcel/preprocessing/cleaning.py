"""Cleaning of voxel signals (detrend, filter, confound removal, standardization), lazily.

The reference is :func:`nilearn.signal.clean` (nilearn 0.14.1), one run at a time, with its order of
operations:

1. censoring (``sample_mask``): with a Butterworth filter, censored volumes are first replaced by a
   cubic-spline interpolation of the kept ones (volumes before the first / after the last kept one are
   dropped unless ``extrapolate``), and removed after filtering; otherwise they are removed first;
2. detrend (mean and linear trend), of signals and confounds;
3. Butterworth low/high/band-pass (order 5, ``sosfiltfilt``, odd padding), of signals and confounds;
4. confound removal: confounds standardized (z-score, or scaled by their max), orthonormalized by a
   pivoted QR (columns with ``|R_ii| <= 100 eps`` dropped), projected out of the signals;
5. standardization: ``zscore_sample`` (ddof=1), ``zscore`` (ddof=0, nilearn < 0.13), ``psc``.

Everything on the confound side does not depend on the voxels: it is computed once, in memory,
when the graph is built (:class:`CleanPlan`). The per-voxel work is :func:`clean_block`, a numpy/scipy
kernel mapped over voxel blocks, in float64, written out as float32. Voxels are independent, so the
numbers do not depend on the voxel chunking; the one global quantity of nilearn's algorithm (for
``psc``, whether the mean was removed, judged over all voxels) is a small dask reduction.

Differences from nilearn, on purpose:

* nilearn 0.14.1 interpolates censored volumes at the wrong places: ``_interpolate_volumes`` indexes
  with ``~sample_mask`` where ``sample_mask`` is an integer index array, i.e. the bitwise NOT
  ``-i - 1`` (the mirror volume ``n - 1 - i``), not the censored volumes. Here the censored volumes
  are interpolated. Both agree whenever the mirror ``n - 1 - i`` of every censored volume ``i`` is a
  kept one (the tests use such masks to compare with nilearn, and nilearn with the one-line fix
  for any mask).
* Bad parameters that nilearn only warns about (a cut-off at or above Nyquist, a filter that cannot
  be applied) are refused with an :class:`~daskparcel.errors.InputError` before anything runs.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, Literal

import dask.array as da
import numpy as np
import xarray as xr
from scipy import linalg
from scipy import signal as sp_signal

from daskparcel._checks import sample_mask_indices
from daskparcel.errors import InputError
from daskparcel.preprocessing.signal import (
    CleanPlan,
    clean_block,
    clean_block_psc,
    detrend_block,
    filter_block,
    psc_flag,
    psc_stats_block,
    scrub_before,
    standardize_block,
    zscore_divisor,
)

logger = logging.getLogger(__name__)

__all__ = [
    "CleanPlan",
    "clean",
    "clean_block",
    "count_zeroed_voxels",
    "make_clean_plan",
    "warn_zeroed_voxels",
    "zscore_divisor",
]

_EPS = np.finfo(np.float64).eps
_STANDARDIZE = ("zscore_sample", "zscore", "psc")

Standardize = Literal["zscore_sample", "zscore", "psc"] | bool | None
Filter = Literal["butterworth", "cosine"] | bool | None


# --------------------------------------------------------------------------------------------------
# parameter checks and the plan


def _check_standardize(standardize: Any) -> str | None:
    if standardize is True:
        return "zscore_sample"
    if standardize is False or standardize is None:
        return None
    if isinstance(standardize, str) and standardize in _STANDARDIZE:
        return standardize
    raise InputError(
        f"standardize={standardize!r}: unknown; pass one of {list(_STANDARDIZE)}, True "
        "('zscore_sample'), or None/False for no standardization"
    )


def _check_filter(
    filter: Any, low_pass: float | None, high_pass: float | None, t_r: float | None
) -> str | None:
    if filter not in ("butterworth", "cosine", False, None):
        raise InputError(
            f"filter={filter!r}: unknown; pass 'butterworth', 'cosine' or False (no filtering)"
        )
    for name, value in (("low_pass", low_pass), ("high_pass", high_pass), ("t_r", t_r)):
        if value is not None and (not np.isfinite(value) or value <= 0):
            raise InputError(
                f"{name}={value}: must be a positive number (Hz for cut-offs, s for t_r)"
            )
    if filter in (False, None):
        if low_pass is not None or high_pass is not None:
            raise InputError(
                f"low_pass={low_pass}, high_pass={high_pass} with filter={filter!r}: no filter "
                "would apply them; pass filter='butterworth' (or 'cosine' for high_pass)"
            )
        return None
    if filter == "cosine":
        if high_pass is None or t_r is None:
            raise InputError(
                f"filter='cosine' needs t_r (s) and high_pass (Hz); got t_r={t_r}, "
                f"high_pass={high_pass}"
            )
        if low_pass is not None:
            raise InputError(
                f"low_pass={low_pass} with filter='cosine': the cosine filter is high-pass only; "
                "pass filter='butterworth' for a low-pass"
            )
        return "cosine"
    if low_pass is None and high_pass is None:
        return None
    if t_r is None:
        raise InputError(
            f"low_pass={low_pass}, high_pass={high_pass}: filtering needs the repetition time; "
            "pass t_r (in seconds, e.g. the run's attrs['t_r'])"
        )
    nyquist = 0.5 / t_r
    for name, value in (("low_pass", low_pass), ("high_pass", high_pass)):
        if value is not None and value >= nyquist:
            raise InputError(
                f"{name}={value} Hz is at or above the Nyquist frequency {nyquist:.4g} Hz of "
                f"t_r={t_r} s: pass a cut-off below {nyquist:.4g} Hz"
            )
    if low_pass is not None and high_pass is not None and high_pass >= low_pass:
        raise InputError(
            f"high_pass={high_pass} Hz >= low_pass={low_pass} Hz: a band-pass needs "
            "high_pass < low_pass"
        )
    return "butterworth"


def _butterworth_sos(low_pass: float | None, high_pass: float | None, t_r: float) -> np.ndarray:
    fs = 1.0 / t_r
    if low_pass is not None and high_pass is not None:
        wn: Any = [high_pass, low_pass]
        btype = "band"
    elif high_pass is not None:
        wn, btype = high_pass, "high"
    else:
        wn, btype = low_pass, "low"
    return np.asarray(sp_signal.butter(N=5, Wn=wn, btype=btype, output="sos", fs=fs))


def _cosine_drift(high_pass: float, n_time: int, t_r: float) -> np.ndarray:
    """nilearn's ``create_cosine_drift`` without its constant column."""
    frame_times = np.arange(n_time) * t_r
    dt = (frame_times[-1] - frame_times[0]) / (n_time - 1)
    order = int(np.minimum(n_time - 1, int(np.floor(2 * n_time * high_pass * dt))))
    n_times = np.arange(n_time)
    drift = np.zeros((n_time, order))
    normalizer = np.sqrt(2.0 / n_time)
    for k in range(1, order + 1):
        drift[:, k - 1] = normalizer * np.cos((np.pi / n_time) * (n_times + 0.5) * k)
    return drift


def _add_cosine(confounds: np.ndarray | None, drift: np.ndarray) -> np.ndarray | None:
    """nilearn's ``_check_cosine_by_user``: add the drift terms unless the user's confounds hold them."""
    n_cos = drift.shape[1]
    if n_cos == 0:
        warnings.warn(
            "Cosine filter was not created: the run is too short or high_pass too low.",
            UserWarning,
            stacklevel=4,
        )
        return confounds
    if confounds is None:
        return drift.copy()
    corr = np.corrcoef(drift.T, confounds.T)
    np.fill_diagonal(corr, 0)
    if np.sum(corr[:n_cos, :].flatten() > 0.9) > 0:
        warnings.warn(
            "Cosine filter(s) exist in the confounds: using the confounds' regressors only.",
            UserWarning,
            stacklevel=4,
        )
        return confounds
    return np.hstack((confounds, drift))


def make_clean_plan(
    n_time: int,
    *,
    detrend: bool = False,
    standardize: Standardize = "zscore_sample",
    confounds: np.ndarray | None = None,
    standardize_confounds: bool = True,
    low_pass: float | None = None,
    high_pass: float | None = None,
    t_r: float | None = None,
    filter: Filter = "butterworth",
    sample_mask: np.ndarray | None = None,
    ensure_finite: bool = False,
    extrapolate: bool = False,
) -> CleanPlan:
    """Check the parameters of :func:`clean` and prepare everything but the voxel work.

    Raises
    ------
    InputError
        For any bad parameter (see :func:`clean`); nothing has run.
    """
    n_time = int(n_time)
    std = _check_standardize(standardize)
    filter_type = _check_filter(filter, low_pass, high_pass, t_r)
    idx = None if sample_mask is None else sample_mask_indices(sample_mask, n_time)

    conf: np.ndarray | None = None
    if confounds is not None:
        conf = np.asarray(confounds)
        if conf.ndim == 1:
            conf = conf[:, None]
        if conf.ndim != 2:
            raise InputError(
                f"confounds of shape {conf.shape}: must be 2D (n_time, n_confounds); load them "
                "with daskparcel.ingest.confounds.load_confounds"
            )
        if conf.shape[0] != n_time:
            raise InputError(
                f"confounds have {conf.shape[0]} rows but the run has {n_time} time points: pass "
                "the confounds of this run (one row per volume)"
            )
        if not np.issubdtype(conf.dtype, np.number):
            raise InputError(f"confounds of dtype {conf.dtype}: must be numbers")
        conf = conf.astype(np.float64)
        if not np.all(np.isfinite(conf)):
            bad = np.unique(np.nonzero(~np.isfinite(conf))[1])
            raise InputError(
                f"confounds hold NaN/inf in columns {bad.tolist()}: fill them (load_confounds "
                "fills the first row of derivatives as nilearn) or drop those columns"
            )
        if conf.shape[1] == 0:
            conf = None

    if filter_type == "cosine":
        assert high_pass is not None and t_r is not None
        conf = _add_cosine(conf, _cosine_drift(high_pass, n_time, t_r))

    interpolate = filter_type == "butterworth" and idx is not None
    trim = (0, n_time)
    censor_after = None
    if idx is not None:
        if interpolate:
            if not extrapolate:
                trim = (int(idx[0]), int(idx[-1]) + 1)
                censor_after = idx - idx[0]
            else:
                censor_after = idx
            n_filtered = trim[1] - trim[0]
        n_time_out = int(idx.size)
    else:
        n_time_out = n_time
    if not interpolate:
        n_filtered = n_time_out

    sos = None
    if filter_type == "butterworth":
        assert t_r is not None
        sos = _butterworth_sos(low_pass, high_pass, t_r)
        try:  # the filter needs enough time points for its padding: check now, not per block
            sp_signal.sosfiltfilt(sos, np.zeros((n_filtered, 1)), axis=0, padtype="odd")
        except ValueError as exc:
            raise InputError(
                f"the Butterworth filter cannot be applied to {n_filtered} time points ({exc}): "
                "use a longer run, fewer censored volumes, or no low_pass/high_pass"
            ) from None

    plan_wo_conf = CleanPlan(
        n_time=n_time,
        n_time_out=n_time_out,
        detrend=bool(detrend),
        standardize=std,
        ensure_finite=bool(ensure_finite),
        sample_mask=idx,
        interpolate=interpolate,
        extrapolate=bool(extrapolate),
        t_r=None if t_r is None else float(t_r),
        trim=trim,
        censor_after=censor_after if interpolate else None,
        sos=sos,
        confounds_basis=None,
    )

    basis = None
    if conf is not None:
        c = scrub_before(conf.copy(), plan_wo_conf)
        if detrend:
            c = detrend_block(c)
        c = filter_block(c, plan_wo_conf)
        if standardize_confounds:
            c = standardize_block(c, "zscore_sample")
        else:
            cmax = np.max(np.abs(c), axis=0)
            cmax[cmax == 0] = 1
            c = c / cmax
        q, r, _ = linalg.qr(c, mode="economic", pivoting=True)
        basis = np.ascontiguousarray(q[:, np.abs(np.diag(r)) > _EPS * 100.0])
        if basis.shape[1] == 0:
            basis = None

    return CleanPlan(**{**plan_wo_conf.__dict__, "confounds_basis": basis})


# --------------------------------------------------------------------------------------------------
# the lazy function


def clean(
    signals: xr.DataArray,
    *,
    detrend: bool = False,
    standardize: Standardize = "zscore_sample",
    confounds: np.ndarray | None = None,
    standardize_confounds: bool = True,
    low_pass: float | None = None,
    high_pass: float | None = None,
    t_r: float | None = None,
    filter: Filter = "butterworth",
    sample_mask: np.ndarray | None = None,
    ensure_finite: bool = False,
    extrapolate: bool = False,
) -> xr.DataArray:
    """Clean the signals of one run, lazily, as :func:`nilearn.signal.clean`.

    Parameters
    ----------
    signals : xarray.DataArray ("voxel", "time")
        One run, dask-backed, chunked by voxel blocks with the whole time axis in one chunk.
    detrend : bool, default=False
        Remove the mean and linear trend (of signals and confounds).
    standardize : {"zscore_sample", "zscore", "psc"}, True, False or None, default="zscore_sample"
        ``zscore_sample``: unit variance with ddof=1 (True means this); ``zscore``: ddof=0;
        ``psc``: percent signal change. Voxels of zero variance become 0 (see
        :func:`count_zeroed_voxels`).
    confounds : numpy.ndarray (n_time, n_confounds), optional
        Regressors to project out (load them with ``load_confounds``).
    standardize_confounds : bool, default=True
        z-score the confounds first (else scale each by its max).
    low_pass, high_pass : float, optional
        Butterworth cut-offs in Hz (need ``t_r``); both give a band-pass.
    t_r : float, optional
        Repetition time in seconds.
    filter : {"butterworth", "cosine", False}, default="butterworth"
        ``cosine`` adds discrete cosine drift regressors up to ``high_pass`` to the confounds.
    sample_mask : numpy.ndarray, optional
        Volumes to keep: boolean mask over time or increasing int indices. The output has this
        many time points.
    ensure_finite : bool, default=False
        Replace NaN/inf in the signals by 0 first.
    extrapolate : bool, default=False
        With ``sample_mask`` and a Butterworth filter: extrapolate censored volumes at the ends
        instead of leaving them out of the filtering.

    Returns
    -------
    xarray.DataArray ("voxel", "time") float32
        Same voxel chunks; the time coordinate (if any) restricted to the kept volumes.

    Raises
    ------
    InputError
        Before anything runs: time axis in several chunks, confounds of another length,
        sample_mask out of range, filtering without ``t_r``, a cut-off at or above Nyquist, an
        unknown ``standardize``...
    """
    if not isinstance(signals, xr.DataArray) or set(signals.dims) != {"voxel", "time"}:
        raise InputError(
            f"signals with dims {getattr(signals, 'dims', None)}: pass an xarray.DataArray with "
            "dims ('voxel', 'time')"
        )
    signals = signals.transpose("voxel", "time")
    data = signals.data
    if not isinstance(data, da.Array):
        data = da.from_array(np.asarray(data), chunks=(-1, -1))
    if len(data.chunks[1]) > 1:
        raise InputError(
            f"signals are chunked along 'time' ({len(data.chunks[1])} chunks): cleaning needs "
            "each voxel's whole run in one chunk; rechunk with .chunk(time=-1) (cheap when "
            "voxel chunks are small; the signals store is written that way)"
        )
    n_time = int(data.shape[1])
    plan = make_clean_plan(
        n_time,
        detrend=detrend,
        standardize=standardize,
        confounds=confounds,
        standardize_confounds=standardize_confounds,
        low_pass=low_pass,
        high_pass=high_pass,
        t_r=t_r,
        filter=filter,
        sample_mask=sample_mask,
        ensure_finite=ensure_finite,
        extrapolate=extrapolate,
    )
    logger.debug(
        "clean: %d voxels x %d time points in %d blocks -> %d time points",
        data.shape[0],
        n_time,
        len(data.chunks[0]),
        plan.n_time_out,
    )
    out_chunks = (data.chunks[0], (plan.n_time_out,))
    meta = np.empty((0, 0), dtype=np.float32)
    if plan.standardize == "psc" and len(data.chunks[0]) > 1:
        # nilearn decides whether the mean was removed from all voxels at once: reduce over blocks
        stats = da.map_blocks(
            psc_stats_block,
            data,
            plan=plan,
            chunks=((1,) * len(data.chunks[0]), (2,)),
            dtype=np.float64,
            meta=np.empty((0, 0), dtype=np.float64),
        )
        flag = da.map_blocks(
            psc_flag,
            stats.rechunk({0: -1}),
            chunks=((1,), (1,)),
            dtype=bool,
            meta=np.empty((0, 0), dtype=bool),
        )
        out = da.map_blocks(
            clean_block_psc,
            data,
            flag,
            plan=plan,
            chunks=out_chunks,
            dtype=np.float32,
            meta=meta,
            token="clean-psc",
        )
    else:
        out = da.map_blocks(
            clean_block,
            data,
            plan=plan,
            chunks=out_chunks,
            dtype=np.float32,
            meta=meta,
            token="clean",
        )
    # isel on the lazy input only slices its coordinates (and graph): nothing is computed
    template = signals if plan.sample_mask is None else signals.isel(time=plan.sample_mask)
    return xr.DataArray(
        out,
        dims=("voxel", "time"),
        coords=template.coords,
        attrs=dict(signals.attrs),
        name=signals.name,
    )


def count_zeroed_voxels(cleaned: xr.DataArray) -> da.Array:
    """Lazy count of the voxels whose cleaned signal is all zeros.

    Under standardization those are the voxels of zero variance (constant voxels), which
    :func:`clean` sets to 0 as nilearn does. Compute it in the same ``dask.compute`` as the cleaned
    signals (e.g. with the store write) so the cleaning runs once; then pass the number to
    :func:`warn_zeroed_voxels`.
    """
    data = cleaned.transpose("voxel", "time").data
    if not isinstance(data, da.Array):
        data = da.from_array(np.asarray(data))
    return da.sum(da.all(data == 0, axis=1))


def warn_zeroed_voxels(n_zeroed: int, n_voxels: int, source: str = "signals") -> None:
    """Emit the one ``UserWarning`` about voxels set to 0 by standardization (none if 0)."""
    n = int(n_zeroed)
    if n:
        warnings.warn(
            f"{source}: {n} of {n_voxels} voxels have a constant (zero-variance) signal after "
            "cleaning and were set to 0 by standardization; consider a tighter mask",
            UserWarning,
            stacklevel=2,
        )
