"""Connectomes of parcel time series, one per run, with nilearn's ``ConnectivityMeasure`` answers.

Each run's matrix is computed from its (time, parcel) signals as nilearn does: a Ledoit-Wolf shrunk covariance
(``sklearn.covariance.ledoit_wolf``, the estimator nilearn uses by default), of the z-scored signals for
``"correlation"``; ``"partial correlation"`` from its inverse; ``"tangent"`` is a group computation: the
geometric mean of the runs' covariances (nilearn's gradient descent, 30 iterations, tolerance 1e-7) whitens each
run's covariance before its matrix logarithm. Runs are computed in parallel as one dask graph (one task per run;
the signals of a run, time x parcel, are small), the tangent's group step on the client.

The group summary of each kind is nilearn's ``mean_``: the mean of the runs' matrices (symmetrised), and for
``"tangent"`` the geometric mean of the covariances (the reference point of the tangent space).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import dask
import numpy as np
import xarray as xr
from scipy import linalg

from daskparcel.errors import InputError

logger = logging.getLogger(__name__)

KINDS = ("correlation", "partial correlation", "tangent", "covariance")


@dataclass(frozen=True)
class Connectomes:
    """The connectomes of one kind: one matrix per run and the group summary.

    Attributes
    ----------
    kind : str
        One of :data:`KINDS`.
    matrices : xarray.DataArray ("run", "parcel_i", "parcel_j")
        One matrix per run (nilearn's ``ConnectivityMeasure(kind=kind).fit_transform(signals)``).
    mean : xarray.DataArray ("parcel_i", "parcel_j")
        The group summary (nilearn's ``mean_``).
    """

    kind: str
    matrices: xr.DataArray
    mean: xr.DataArray


def check_kinds(kinds: str | Iterable[str] | None, *, name: str = "kind") -> list[str]:
    """The connectome kinds asked for, checked (an :class:`InputError` names the wrong one and the choices)."""
    if kinds is None:
        return []
    if not isinstance(kinds, str | list | tuple):
        raise InputError(f"{name}={kinds!r}: give a connectome kind or a list of them")
    items = [kinds] if isinstance(kinds, str) else list(kinds)
    out: list[str] = []
    for item in items:
        kind = str(item).strip().lower().replace("_", " ")
        if kind not in KINDS:
            raise InputError(
                f"{name}={item!r}: not a connectome kind; choose among "
                + ", ".join(repr(k) for k in KINDS)
            )
        if kind not in out:
            out.append(kind)
    return out


def _as_runs(signals: Any) -> tuple[list[Any], list[str], np.ndarray | None]:
    """Runs of (time, parcel) signals, their names and parcel labels (from xarray coordinates if given)."""
    if isinstance(signals, xr.DataArray | np.ndarray) and np.ndim(signals) == 2:
        items = [signals]
    elif isinstance(signals, list | tuple):
        items = list(signals)
    else:
        raise InputError(
            f"signals: a {type(signals).__name__}; give a (time, parcel) array or a list of them, one per run "
            "(as Parcellations.transform returns)"
        )
    if not items:
        raise InputError("signals: an empty list; give one (time, parcel) array per run")
    names: list[str] = []
    parcels: np.ndarray | None = None
    widths = set()
    for index, item in enumerate(items):
        if np.ndim(item) != 2:
            raise InputError(
                f"signals[{index}]: {np.ndim(item)} dimensions; each run must be a (time, parcel) array"
            )
        widths.add(int(np.shape(item)[1]))
        name = f"run-{index}"
        if isinstance(item, xr.DataArray):
            if item.dims != ("time", "parcel"):
                item = item.transpose("time", "parcel")
                items[index] = item
            if "run" in item.coords and item["run"].size:
                name = str(np.asarray(item["run"]).ravel()[0])
            if "parcel" in item.coords and parcels is None:
                parcels = np.asarray(item["parcel"])
        names.append(name)
        if np.shape(item)[0] < 2:
            raise InputError(
                f"signals[{index}] ({name}): {np.shape(item)[0]} time point(s); a connectome needs at least 2"
            )
    if len(widths) != 1:
        raise InputError(
            f"signals: runs with different numbers of parcels {sorted(widths)}; give runs of one parcellation"
        )
    return items, names, parcels


def _zscore_sample(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=0)
    std = x.std(axis=0, ddof=1)
    std[std < np.finfo(np.float64).eps] = 1.0
    return x / std


def _covariance(x: np.ndarray) -> np.ndarray:
    from sklearn.covariance import ledoit_wolf

    return np.asarray(ledoit_wolf(x)[0])


def _cov_to_corr(covariance: np.ndarray) -> np.ndarray:
    scale = 1.0 / np.sqrt(np.diag(covariance))
    out = covariance * scale[:, None] * scale[None, :]
    np.fill_diagonal(out, 1.0)
    return out


def _map_eigenvalues(function: Any, symmetric: np.ndarray) -> np.ndarray:
    values, vectors = linalg.eigh(symmetric)
    return np.asarray((vectors * function(values)) @ vectors.T)


def run_matrix(x: Any, kind: str) -> np.ndarray:
    """One run's (time, parcel) signals -> its matrix of ``kind``; for "tangent", its covariance (the group
    step follows)."""
    x = np.asarray(x, dtype=np.float64)
    if kind == "correlation":
        return _cov_to_corr(_covariance(_zscore_sample(x)))
    covariance = _covariance(x)
    if kind == "partial correlation":
        partial = -_cov_to_corr(linalg.inv(covariance))
        np.fill_diagonal(partial, 1.0)
        return partial
    return covariance


def geometric_mean(
    matrices: Sequence[np.ndarray], *, max_iter: int = 30, tol: float = 1e-7
) -> np.ndarray:
    """Geometric (Riemannian) mean of symmetric positive definite matrices, by nilearn's gradient descent.

    Parameters
    ----------
    matrices : sequence of (n, n) arrays
        Symmetric positive definite matrices (covariances).
    max_iter : int, default=30
        Iterations at most (nilearn's tangent kind uses 30).
    tol : float, default=1e-7
        Stop when the gradient norm divided by ``n * n`` is below this.

    Returns
    -------
    numpy.ndarray (n, n)
    """
    stack = np.asarray(matrices, dtype=np.float64)
    return geometric_mean_of(
        lambda function: np.mean([function(m) for m in stack], axis=0),
        max_iter=max_iter,
        tol=tol,
    )


def geometric_mean_of(
    mean_of: Callable[[Callable[[np.ndarray], np.ndarray]], np.ndarray],
    *,
    max_iter: int = 30,
    tol: float = 1e-7,
) -> np.ndarray:
    """:func:`geometric_mean` of matrices that are only reached through ``mean_of``.

    ``mean_of(f)`` returns the mean over the matrices of ``f(matrix)``: the matrices can stay on disk, each
    iteration is one pass over them (a dask graph of one task per matrix, summed as a tree).
    """
    gmean = np.asarray(mean_of(lambda m: m), dtype=np.float64)
    norm_old = np.inf
    step = 1.0
    for _ in range(max_iter):
        vals, vecs = linalg.eigh(gmean)
        inv_sqrt = (vecs / np.sqrt(vals)) @ vecs.T
        logs_mean = np.asarray(
            mean_of(functools.partial(_whitened_log, inv_sqrt=inv_sqrt)), dtype=np.float64
        )
        if np.any(np.isnan(logs_mean)):
            raise FloatingPointError("NaN after the matrix logarithm: a covariance is not SPD")
        norm = float(np.linalg.norm(logs_mean))
        sqrt = (vecs * np.sqrt(vals)) @ vecs.T
        vals_log, vecs_log = linalg.eigh(logs_mean)
        gmean = sqrt @ ((vecs_log * np.exp(vals_log * step)) @ vecs_log.T) @ sqrt
        if norm < norm_old:
            norm_old = norm
        elif norm > norm_old:
            step /= 2.0
            norm = norm_old
        if norm / gmean.size < tol:
            break
    else:
        logger.warning(
            "geometric mean: %d iterations without reaching the tolerance %g", max_iter, tol
        )
    return np.asarray(gmean)


def _whitened_log(matrix: np.ndarray, inv_sqrt: np.ndarray) -> np.ndarray:
    return _map_eigenvalues(np.log, inv_sqrt @ matrix @ inv_sqrt)


def tangent_whitening(mean: np.ndarray) -> np.ndarray:
    """The whitening of the tangent space at ``mean`` (its inverse square root)."""
    return _map_eigenvalues(lambda v: 1.0 / np.sqrt(v), mean)


def tangent_matrix(covariance: np.ndarray, whitening: np.ndarray) -> np.ndarray:
    """A run's tangent connectome: the matrix logarithm of its whitened covariance."""
    return _map_eigenvalues(np.log, whitening @ covariance @ whitening)


def tree_sum(items: Sequence[Any]) -> Any:
    """Sum of delayed values (or dicts of arrays) as a tree of pairwise sums, not a sequential chain."""
    level = list(items)
    if not level:
        raise ValueError("tree_sum of nothing")
    while len(level) > 1:
        pairs = [dask.delayed(_add)(a, b) for a, b in zip(level[::2], level[1::2], strict=False)]
        level = pairs + ([level[-1]] if len(level) % 2 else [])
    return level[0]


def _add(a: Any, b: Any) -> Any:
    if isinstance(a, dict):
        return {key: a[key] + b[key] for key in a}
    return a + b


def connectome(signals: Any, kind: str = "correlation") -> Connectomes:
    """Connectome of each run's parcel signals and their group summary, as nilearn's ``ConnectivityMeasure``.

    Parameters
    ----------
    signals : (time, parcel) array or xarray.DataArray, or a list of them (one per run)
        Parcel time series, e.g. what :meth:`daskparcel.Parcellations.transform` returns (lazy arrays are
        computed here, every run in parallel).
    kind : {"correlation", "partial correlation", "tangent", "covariance"}, default="correlation"
        nilearn's kinds (Ledoit-Wolf covariances). ``"tangent"`` needs at least two runs: each run's matrix is
        its deviation from the group's geometric mean.

    Returns
    -------
    Connectomes
        ``matrices`` (run, parcel_i, parcel_j) equal to ``ConnectivityMeasure(kind=kind).fit_transform(...)``
        and ``mean`` equal to its ``mean_``.

    Raises
    ------
    InputError
        An unknown kind, a run with another number of parcels or fewer than two time points, or "tangent" on one
        run.
    """
    (checked,) = check_kinds(kind)
    items, names, parcels = _as_runs(signals)
    if checked == "tangent" and len(items) < 2:
        raise InputError(
            "kind='tangent': one run given; the tangent connectome is a deviation from the group mean, "
            "give two runs or more (or another kind)"
        )
    tasks = [dask.delayed(run_matrix)(item, checked) for item in items]
    (matrices,) = dask.compute(tasks)
    matrices = [np.asarray(m) for m in matrices]
    if checked == "tangent":
        mean = geometric_mean(matrices)
        whitening = tangent_whitening(mean)
        matrices = [tangent_matrix(m, whitening) for m in matrices]
    else:
        mean = np.mean(matrices, axis=0)
        mean = 0.5 * (mean + mean.T)
    n = matrices[0].shape[0]
    labels = parcels if parcels is not None and parcels.size == n else np.arange(1, n + 1)
    coords = {"parcel_i": labels, "parcel_j": labels}
    return Connectomes(
        kind=checked,
        matrices=xr.DataArray(
            np.stack(matrices),
            dims=("run", "parcel_i", "parcel_j"),
            coords={"run": names, **coords},
            name=checked,
        ),
        mean=xr.DataArray(mean, dims=("parcel_i", "parcel_j"), coords=coords, name=checked),
    )
