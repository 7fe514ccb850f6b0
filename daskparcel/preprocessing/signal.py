"""The block kernels of cleaning: nilearn's ``signal.clean`` steps on (time, voxels) numpy arrays, applied to
one voxel block at a time by :func:`daskparcel.preprocessing.cleaning.clean` following a :class:`CleanPlan`
(everything decided once per run)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import signal as sp_signal
from scipy.interpolate import CubicSpline

_EPS = np.finfo(np.float64).eps


@dataclass(frozen=True)
class CleanPlan:
    """Everything :func:`clean_block` needs, decided once per run (small arrays only)."""

    n_time: int
    """Time points of the input run."""
    n_time_out: int
    """Time points of the output (fewer with a ``sample_mask``)."""
    detrend: bool
    standardize: str | None
    ensure_finite: bool
    sample_mask: np.ndarray | None
    """Kept volumes (sorted int indices into the run), or None."""
    interpolate: bool
    """Interpolate censored volumes before filtering (Butterworth) instead of removing them first."""
    extrapolate: bool
    t_r: float | None
    trim: tuple[int, int]
    """Rows kept after interpolation (start, stop)."""
    censor_after: np.ndarray | None
    """Rows kept after filtering (indices into the trimmed rows)."""
    sos: np.ndarray | None
    """Butterworth filter (second-order sections), or None."""
    confounds_basis: np.ndarray | None
    """Orthonormal basis (n_time_out, k) of the processed confounds, or None."""


# --------------------------------------------------------------------------------------------------
# numpy steps, on (time, features) arrays as nilearn


def detrend_block(x: np.ndarray) -> np.ndarray:
    """nilearn's ``detrend_block`` (linear): remove the mean and the linear trend of each column."""
    x = x - x.mean(axis=0)
    n = x.shape[0]
    if n == 1:
        return x
    regressor = np.arange(n, dtype=np.float64)
    regressor -= regressor.mean()
    std = np.sqrt((regressor**2).sum())
    if not std < _EPS:
        regressor /= std
    x -= np.outer(regressor, regressor @ x)
    return x


def zscore_divisor(std: np.ndarray) -> np.ndarray:
    """What z-scoring divides by: the standard deviation, or 1 where it is below float64 eps (nilearn's rule:
    a constant signal becomes 0, not NaN)."""
    return np.where(std < _EPS, 1.0, std)


def standardize_block(x: np.ndarray, standardize: str | None) -> np.ndarray:
    """nilearn's ``standardize_signal`` with detrend=False (plus 'zscore', ddof=0)."""
    if standardize is None or x.shape[0] == 1:
        return x
    if standardize in ("zscore_sample", "zscore"):
        x = x - x.mean(axis=0)
        x /= zscore_divisor(x.std(axis=0, ddof=1 if standardize == "zscore_sample" else 0))
        return x
    # psc
    mean = x.mean(axis=0)
    invalid = np.absolute(mean) < _EPS
    with np.errstate(divide="ignore", invalid="ignore"):
        x = (x - mean) / np.absolute(mean)
    x *= 100
    x[:, invalid] = 0
    return x


def _interpolate(x: np.ndarray, kept: np.ndarray, t_r: float, extrapolate: bool) -> np.ndarray:
    """Replace censored rows by a cubic spline through the kept rows (NaN outside when not extrapolating)."""
    frame_times = np.arange(x.shape[0]) * t_r
    spline = CubicSpline(frame_times[kept], x[kept], extrapolate=extrapolate)
    censored = np.ones(x.shape[0], dtype=bool)
    censored[kept] = False
    x[censored] = spline(frame_times[censored])
    return x


def scrub_before(x: np.ndarray, plan: CleanPlan) -> np.ndarray:
    if plan.sample_mask is None:
        return x
    if plan.interpolate:
        assert plan.t_r is not None
        x = _interpolate(x, plan.sample_mask, plan.t_r, plan.extrapolate)
        return x[plan.trim[0] : plan.trim[1]]
    return x[plan.sample_mask]


def filter_block(x: np.ndarray, plan: CleanPlan) -> np.ndarray:
    if plan.sos is None:
        return x
    x = sp_signal.sosfiltfilt(plan.sos, x, axis=0, padtype="odd")
    if plan.censor_after is not None:
        x = x[plan.censor_after]
    return x


def _clean_until_standardize(block: np.ndarray, plan: CleanPlan) -> tuple[np.ndarray, np.ndarray]:
    """Steps 1-4 on a (voxel, time) block: (cleaned signals (time, voxel), original means)."""
    x = np.array(block, dtype=np.float64).T  # nilearn works on (time, features)
    if plan.ensure_finite:
        x[~np.isfinite(x)] = 0
    x = scrub_before(x, plan)
    original_mean = x.mean(axis=0)
    if plan.detrend:
        x = detrend_block(x)
    x = filter_block(x, plan)
    if plan.confounds_basis is not None:
        q = plan.confounds_basis
        x -= q @ (q.T @ x)
    return x, original_mean


def clean_block(
    block: np.ndarray, plan: CleanPlan, psc_add_mean: np.ndarray | bool | None = None
) -> np.ndarray:
    """Clean one block of signals (the per-block kernel of :func:`clean`).

    Parameters
    ----------
    block : numpy.ndarray (n_voxel, n_time)
        Signals of some voxels over the whole run.
    plan : CleanPlan
        From :func:`make_clean_plan`.
    psc_add_mean : bool, optional
        For ``psc`` only: whether the original mean is added back before computing the percent
        change (nilearn's check over all voxels that the mean was removed). Computed from the block
        itself when None (right when the block holds every voxel).

    Returns
    -------
    numpy.ndarray (n_voxel, n_time_out) of float32
    """
    x, original_mean = _clean_until_standardize(block, plan)
    if plan.standardize == "psc":
        if psc_add_mean is None:
            psc_add_mean = bool(_psc_ratio(x, original_mean) < 1e-1)
        if bool(np.asarray(psc_add_mean).item()):
            x = x + original_mean
    x = standardize_block(x, plan.standardize)
    return np.ascontiguousarray(x.T, dtype=np.float32)


def clean_block_psc(block: np.ndarray, flag: np.ndarray, plan: CleanPlan) -> np.ndarray:
    return clean_block(block, plan, psc_add_mean=bool(flag.item()))


def _psc_ratio(x: np.ndarray, original_mean: np.ndarray) -> float:
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.abs(x.mean(axis=0)).sum() / np.abs(original_mean).sum())


def psc_stats_block(block: np.ndarray, plan: CleanPlan) -> np.ndarray:
    x, original_mean = _clean_until_standardize(block, plan)
    return np.array([[np.abs(x.mean(axis=0)).sum(), np.abs(original_mean).sum()]])


def psc_flag(stats: np.ndarray) -> np.ndarray:
    total = stats.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.array([[bool(total[0] / total[1] < 1e-1)]])
