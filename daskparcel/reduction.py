"""Out-of-core dimension reduction of voxel signals: per-run SVD, then a group SVD.

This is the reduction nilearn's ``Parcellations`` runs before clustering (``_MultiPCA``):

1. per run, the top ``k = min(n_components, n_time, n_voxels)`` left singular vectors of the run's
   (voxel, time) block, scaled by their singular values (nilearn ``_mask_and_reduce_single`` keeps
   ``U.T * S``);
2. the per-run components are stacked, each one normalised to unit norm (nilearn's ``do_cca``), and the
   top ``n_components`` left singular vectors of the stacked (voxel, sum of k) matrix are the voxel
   loadings: the clustering features, one row per voxel.

Everything is a dask graph over voxel chunks. A run's SVD is exact (the eigendecomposition of its
Gram matrix, summed over voxel chunks by a tree reduction, in float64) when the run has at most
``daskparcel.reduction.exact-max-columns`` time points (nilearn's randomized SVD approximates the
same thing), otherwise randomized (``dask.array.linalg.svd_compressed`` with nilearn's number of
power iterations); the group SVD likewise, with nilearn's 3 power iterations when randomized. No task
holds more than a voxel chunk and small (k x k, k x T) factors. The result is deterministic for a given
``random_state`` on any scheduler.

:func:`reduce_runs` is the cohort path the estimator uses: the same features in separate passes over the
stored signals. Every run's components are written to zarr in one read of the signals when the run fits in a
task (``reduction.run-in-task-mb``, 512 MB by default: 2 mm x 500 volumes), else in two (every run's Gram
matrix, then its components). Then the group SVD: exact with a (sum of k)^2 Gram matrix (multiplied in
float32, summed in float64: the columns are unit-norm float32 components) up to
``exact-max-columns``, 4000 by default, i.e. 20 runs at k=200; beyond, the randomized range finder with
nilearn's 3 power iterations, each in one pass over the stored components, so 4 passes in all, and the signals'
scatter along the features (for the kmeans family's weighting) from the runs' singular values, without
another read of the signals.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Hashable
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from daskparcel import config
from daskparcel._checks import check_int
from daskparcel._dask import distributed_client, gather_rows, row_windows
from daskparcel.errors import InputError
from daskparcel.svd import (
    block_gram,
    exact_left_singular,
    exact_max_columns,
    passes_left_singular,
    project,
    stacked_svd,
    tall_array,
    top_eig,
    tree_gram,
)

logger = logging.getLogger(__name__)

__all__ = ["reduce", "reduce_runs"]


def _check_finite_block(block: np.ndarray, block_info: dict | None = None) -> np.ndarray:
    """Raise InputError if a block of signals holds NaN or inf (runs inside the SVD's first pass)."""
    if not np.isfinite(block).all():
        where = ""
        if block_info is not None and 0 in block_info:
            start, stop = block_info[0]["array-location"][0]
            where = f" in voxels {start}..{stop - 1}"
        raise InputError(
            f"signals: non-finite values (NaN or inf){where}; clean the signals first "
            "(e.g. mask out voxels outside the brain, or replace NaN with 0)"
        )
    return block


def _seed(random_state: int, *keys: int) -> int:
    """A 32-bit seed derived from ``random_state`` and ``keys``, the same on every machine."""
    return int(np.random.SeedSequence([random_state, *keys]).generate_state(1)[0])


def _top_left_singular(
    x: da.Array, k: int, *, n_power_iter: int, seed: int, what: str
) -> tuple[da.Array, da.Array]:
    """Top ``k`` left singular vectors and values of a tall (voxel, column) dask array.

    Left singular vectors of zero singular values are returned as zero columns.
    """
    n_rows, n_cols = x.shape
    x = x.rechunk({1: -1})
    if n_cols <= exact_max_columns():
        logger.debug("%s: exact SVD (tree-summed Gram matrix) of a %d x %d matrix", what, *x.shape)
        gram = tree_gram(x)
        factors = dask.delayed(top_eig, nout=2, pure=True)(gram, k)
        v = da.from_delayed(factors[0], shape=(n_cols, k), dtype=np.float64)
        s = da.from_delayed(factors[1], shape=(k,), dtype=np.float64)
        return x @ v, s
    logger.debug(
        "%s: randomized SVD of a %d x %d matrix, rank %d, %d power iterations",
        what,
        n_rows,
        n_cols,
        k,
        n_power_iter,
    )
    u, s, _ = da.linalg.svd_compressed(x, k, n_power_iter=n_power_iter, seed=seed, compute=False)
    return u * (s > 0).astype(u.dtype), s


def _run_groups(signals: xr.DataArray, run: Hashable | None) -> list[tuple[object, np.ndarray]]:
    """(run value, time indices) pairs, runs in order of first appearance."""
    n_time = signals.sizes["time"]
    if run is None:
        return [(None, np.arange(n_time))]
    if run not in signals.coords:
        raise InputError(
            f"run={run!r}: no such coordinate on the signals (coordinates: {list(signals.coords)}); "
            "pass the name of a coordinate along 'time' giving each time point's run, or run=None"
        )
    coord = signals.coords[run]
    if coord.dims != ("time",):
        raise InputError(
            f"run={run!r}: the coordinate has dims {coord.dims}, expected ('time',); pass a "
            "coordinate along 'time'"
        )
    values = np.asarray(coord.values)
    _, first = np.unique(values, return_index=True)
    ordered = values[np.sort(first)]
    return [(value, np.flatnonzero(values == value)) for value in ordered]


def reduce(
    signals: xr.DataArray,
    *,
    n_components: int = 200,
    random_state: int = 0,
    run: Hashable | None = None,
) -> xr.DataArray:
    """Reduce voxel signals to ``n_components`` voxel loadings, as nilearn's ``Parcellations``.

    Per run, the top components of the SVD of the run's (voxel, time) block, scaled by their singular
    values; then the top ``n_components`` left singular vectors of the stacked, unit-normalised per-run
    components. The rows of the result are the features nilearn clusters (``components.T``), up to a
    rotation within the subspace (which does not change distances between voxels).

    Parameters
    ----------
    signals : xarray.DataArray
        Dims ("voxel", "time"), dask-backed (a numpy-backed array is wrapped), chunked by voxel blocks.
    n_components : int, default=200
        Number of components per run and of the result. Capped (with an INFO log, as nilearn caps
        silently) at the number of time points of a run, and at the total rank of the stacked runs.
    random_state : int, default=0
        Seed of the randomized SVDs (used only for runs longer than
        ``daskparcel.reduction.exact-max-columns`` time points, default 4000); the result is the
        same for a given seed on any scheduler.
    run : hashable or None, default=None
        Name of a coordinate along "time" giving the run of each time point (e.g. ``"run"``), so that
        each run is reduced on its own; None means the signals are one run.

    Returns
    -------
    xarray.DataArray
        Dims ("voxel", "component"), float32, lazy (dask-backed), chunked by voxel blocks; the voxel
        coordinates of ``signals`` are kept.

    Raises
    ------
    InputError
        If ``signals`` lacks the dims, ``n_components`` is not an integer >= 1, ``run`` is not a time
        coordinate, or (when the result is computed) the signals hold NaN or inf.
    """
    if not isinstance(signals, xr.DataArray) or set(signals.dims) != {"voxel", "time"}:
        dims = getattr(signals, "dims", None)
        raise InputError(
            f"signals: expected an xarray.DataArray with dims ('voxel', 'time'), got "
            f"{type(signals).__name__} with dims {dims}; build it with the masking step"
        )
    n_components = check_int(
        "n_components",
        n_components,
        1,
        "pass n_components=200 (nilearn's value) or another positive integer",
    )
    if isinstance(random_state, bool) or not isinstance(random_state, numbers.Integral):
        raise InputError(
            f"random_state={random_state!r}: must be an integer; pass random_state=0 or another seed"
        )
    signals = signals.transpose("voxel", "time")
    n_voxels = signals.sizes["voxel"]
    if n_voxels < 1 or signals.sizes["time"] < 1:
        raise InputError(
            f"signals: shape {signals.shape} is empty; the mask or the time axis selects nothing"
        )
    data = signals.data
    if not isinstance(data, da.Array):
        data = da.from_array(np.asarray(data), chunks=("auto", -1))
    # checked inside the first pass over the data: no separate validation pass
    data = data.map_blocks(_check_finite_block, dtype=data.dtype, meta=np.empty((0, 0), data.dtype))

    columns = []
    for index, (value, times) in enumerate(_run_groups(signals, run)):
        x = data if len(times) == data.shape[1] else data[:, times]
        x = x.astype(np.float64)
        n_time = x.shape[1]
        k = min(n_components, n_time, n_voxels)
        name = "signals" if value is None else f"run {value!r}"
        if k < n_components:
            logger.info(
                "%s: n_components=%d capped at %d (the run has %d time points and %d voxels), "
                "as nilearn does",
                name,
                n_components,
                k,
                n_time,
                n_voxels,
            )
        # nilearn's _fast_svd: 4 power iterations, or 7 when k is under a tenth of the matrix side
        n_power_iter = 7 if k < 0.1 * min(x.shape) else 4
        u, _ = _top_left_singular(
            x, k, n_power_iter=n_power_iter, seed=_seed(random_state, index), what=name
        )
        # nilearn keeps U.T * S per run, then (do_cca) divides each row by its norm, which is S
        # (or 1 where S is 0): what remains is U, zero where S is 0.
        columns.append(u)

    stacked = da.concatenate(columns, axis=1) if len(columns) > 1 else columns[0]
    n_total = stacked.shape[1]
    n_out = min(n_components, n_total)
    if n_out < n_components:
        logger.info(
            "n_components=%d capped at %d, the number of per-run components", n_components, n_out
        )
    if len(columns) == 1:
        # one run: the group SVD of an orthonormal basis is the same subspace; skip it
        loadings = stacked
    else:
        loadings, _ = _top_left_singular(
            stacked, n_out, n_power_iter=3, seed=_seed(random_state, 2**31 - 1), what="group"
        )
    loadings = loadings.astype(np.float32)
    if loadings.chunks[0] != data.chunks[0] and loadings.shape[0] == data.shape[0]:
        loadings = loadings.rechunk({0: data.chunks[0]})
    coords = {name: c for name, c in signals.coords.items() if c.dims == ("voxel",)}
    return xr.DataArray(
        loadings,
        dims=("voxel", "component"),
        coords={**coords, "component": np.arange(n_out)},
        name="features",
    )


# ------------------------------------------------------------------------------ out of core, in passes
#: Rows of a run converted to float64 at a time by :func:`_run_components` (its result does not depend on
#: the store's chunking).
_TASK_ROWS = 8192


def _run_in_task_bytes() -> int:
    """Runs with at most this many bytes of float32 signals are reduced in one task each."""
    return int(float(config.get("reduction.run-in-task-mb")) * 2**20)


class _RunInTask:
    """A run's dask array that dask does not look into: the task that gets it reads the blocks itself (on a
    distributed cluster, on its worker: no block travels to it from other workers)."""

    def __init__(self, x: da.Array) -> None:
        self.x = x

    def blocks(self) -> list[np.ndarray]:
        # no callbacks: a progress bar of this process (an in-process worker's) must not show this inner compute
        parts = self.x.to_delayed().ravel()
        return list(dask.compute(*parts, scheduler="sync", callbacks=[]))


def _spectrum(right: np.ndarray, s: np.ndarray) -> np.ndarray:
    """(2, k): a run's singular values, and its right singular vectors' sums over time (``V.T @ 1``), from
    :func:`top_eig`'s ``V / S`` and ``S``: what :func:`_scatter` needs of the run."""
    return np.stack([s, (right * s).sum(axis=0)])


def _run_components(
    blocks: list[np.ndarray] | _RunInTask, k: int, target: Any, dtype: Any
) -> tuple[np.ndarray | None, np.ndarray]:
    """One run's components in one task, from its voxel blocks held in memory: one read of the run.

    The (time, time) Gram matrix in float64 (:func:`block_gram`'s precision), its top ``k`` eigenvectors,
    then ``x @ V / S`` multiplied in ``dtype`` and written to the zarr array ``target`` (voxel, k), float32,
    or returned when ``target`` is None; and the run's :func:`_spectrum`. Rows are taken ``_TASK_ROWS`` at a
    time whatever the blocks, so the result is the same on any chunking.
    """
    if isinstance(blocks, _RunInTask):
        blocks = blocks.blocks()
    gram = np.zeros((blocks[0].shape[1],) * 2)
    for _, rows in row_windows(blocks, _TASK_ROWS):
        gram += block_gram(rows)
    right64, s = top_eig(gram, k)
    right = right64.astype(dtype)
    out = target
    if target is None:
        out = np.empty((sum(len(b) for b in blocks), k), np.float32)
    for start, rows in row_windows(blocks, _TASK_ROWS):
        out[start : start + len(rows)] = (np.asarray(rows, dtype=dtype) @ right).astype(np.float32)
    return (out if target is None else None), _spectrum(right64, s)


def _scatter(xtu: np.ndarray, spectra: list[np.ndarray], n_time: int) -> np.ndarray:
    """The signals' scatter along the features, ``U.T @ Xc @ Xc.T @ U`` (``Xc``: all ``n_time`` time points of
    all runs, centred over time), from the runs' reductions instead of a read of the signals.

    Each run is taken as its top components, ``X_r ~ U_r S_r V_r.T``, so ``U.T @ X_r = (U.T @ U_r) S_r V_r.T``:
    ``xtu`` is the stacked ``U_r.T @ U`` (the group SVD's last pass gives it), ``spectra`` each run's
    :func:`_spectrum`. Exact when a run keeps all its time points (``n_components`` >= its length); otherwise
    what the runs' trailing components carry is left out (on the real scan split in runs that keep half their
    variance, the weighted features' parcellations have the same R^2 within 5e-4).
    """
    n_out = xtu.shape[1]
    scatter, sums = np.zeros((n_out, n_out)), np.zeros(n_out)
    start = 0
    for s, time_sums in spectra:
        part = xtu[start : start + len(s)]
        scatter += (part * s[:, None] ** 2).T @ part
        sums += part.T @ (s * time_sums)
        start += len(s)
    return scatter - np.outer(sums, sums) / n_time


def reduce_runs(
    runs: list[xr.DataArray],
    group: Any,
    *,
    n_components: int = 200,
    random_state: int = 0,
) -> np.ndarray:
    """:func:`reduce` for cohorts: the same features, computed in passes over the runs' stored signals.

    Each run's components are written to ``group`` (a zarr group: ``runs/<index>``, voxel-chunked) before the
    group SVD reads them back, so a task's memory is bounded by a chunk (or one run of at most
    ``reduction.run-in-task-mb``) plus the (voxel, component) factors whatever the number of runs, where the
    single graph of :func:`reduce` would keep chunks of every run between passes.
    A run of at most ``reduction.run-in-task-mb`` (and ``exact-max-columns`` time points) is reduced in one
    task that holds it: one read (:func:`_run_components`). Larger runs with an exact SVD are done together in
    two passes: one computes every run's Gram matrix, a second writes every run's components. All runs are
    computed at once, so the runs of a cohort keep all workers busy. The runs' projections multiply in
    float32 (their Gram matrices are float64), as the stored components are float32; one run alone is
    projected in float64, as :func:`reduce` does.

    When the group SVD is randomized (a large cohort), or exact with every run keeping all its time points
    (``n_components`` >= its length: then the scatter is exact), the signals' scatter along the features (what
    :func:`daskparcel.clustering.weights.weigh_components` needs) is computed from the runs' reductions
    (:func:`_scatter`) and written to ``group["scatter"]`` (float64, (component, component)), so that weighing
    the features needs no read of the signals; the caller keeps it before removing ``group``.

    Parameters
    ----------
    runs : list of xarray.DataArray ("voxel", "time")
        One per run (e.g. read from the signals store), voxel-chunked.
    group : zarr.Group
        Where the per-run components (and the scatter) are written.
    n_components, random_state
        As :func:`reduce`.

    Returns
    -------
    numpy.ndarray (voxel, component) float32
    """
    import zarr

    n_components = check_int("n_components", n_components, 1)
    n_voxels = runs[0].sizes["voxel"]
    data, ranks = [], []
    for index, signals in enumerate(runs):
        x = signals.transpose("voxel", "time").data.rechunk({1: -1})
        x = x.map_blocks(_check_finite_block, dtype=x.dtype, meta=np.empty((0, 0), x.dtype))
        k = min(n_components, x.shape[1], n_voxels)
        if k < n_components:
            logger.info(
                "run %d: n_components=%d capped at %d (%d time points), as nilearn does",
                index,
                n_components,
                k,
                x.shape[1],
            )
        data.append(x)
        ranks.append(k)

    exact = [i for i, x in enumerate(data) if x.shape[1] <= exact_max_columns()]
    # a run that fits in a task is reduced there (one read); a larger one in a Gram pass and a projection pass
    in_task = [i for i in exact if 4 * data[i].size <= _run_in_task_bytes()]
    two_pass = [i for i in exact if i not in in_task]
    logger.debug("runs: %d reduced in a task each, %d in 2 passes", len(in_task), len(two_pass))
    grams = dask.compute(*[tree_gram(data[i]) for i in two_pass])
    eig = {i: top_eig(gram, ranks[i]) for i, gram in zip(two_pass, grams, strict=True)}
    right = {i: factors[0] for i, factors in eig.items()}
    # a cluster's task reads its run itself; local threads share the blocks' memory anyway
    distributed = distributed_client() is not None

    def run_blocks(x: da.Array) -> Any:
        return _RunInTask(x) if distributed else list(x.to_delayed().ravel())

    if len(runs) == 1:  # one run: the group SVD would only rotate the same subspace
        if in_task:
            task = dask.delayed(_run_components, pure=False)
            ((out, _),) = dask.compute(task(run_blocks(data[0]), ranks[0], None, np.float64))
            return np.asarray(out)
        if right:
            return gather_rows(project(data[0], right[0])).astype(np.float32)
        n_power_iter = 7 if ranks[0] < 0.1 * min(data[0].shape) else 4
        return passes_left_singular(
            data[0], ranks[0], n_power_iter=n_power_iter, seed=_seed(random_state, 0), what="run 0"
        ).astype(np.float32)

    # the runs' components are float32 (what is stored and stacked): their projections multiply in float32,
    # 3.6x faster than in float64, over fixed row windows (the same numbers on any chunking)
    stored, sources, targets, tasks = [], [], [], []
    spectra: dict[int, Any] = {i: _spectrum(*factors) for i, factors in eig.items()}
    for index, x in enumerate(data):
        array = tall_array(group, f"runs/{index}", n_voxels, ranks[index], x.chunks[0][0])
        if index in in_task:
            task = dask.delayed(_run_components, nout=2, pure=False)
            spectra[index] = task(run_blocks(x), ranks[index], array, np.float32)[1]
            tasks.append(spectra[index])
        elif index in right:
            # whole zarr chunks per task: two tasks writing parts of one chunk would race
            sources.append(project(x, right[index], np.float32).rechunk({0: array.chunks[0]}))
            targets.append(array)
        else:  # a long run: randomized, in its own passes
            n_power_iter = 7 if ranks[index] < 0.1 * min(x.shape) else 4
            array[...] = passes_left_singular(
                x, ranks[index], n_power_iter=n_power_iter, seed=_seed(random_state, index),
                what=f"run {index}", scratch=group,
            ).astype(np.float32)  # fmt: skip
        stored.append(array)
    if sources:
        tasks.append(da.store(sources, targets, lock=False, compute=False))
    done = dask.compute(*tasks)
    spectra.update({i: done[n] for n, i in enumerate(in_task)})
    stacked = da.concatenate([da.from_zarr(a) for a in stored], axis=1)
    n_out = min(n_components, stacked.shape[1])
    seed = _seed(random_state, 2**31 - 1)
    if stacked.shape[1] <= exact_max_columns():
        features, xtu = exact_left_singular(stacked, n_out, np.float32, what="group")
        # the exact path's scatter only where it is exact: every run keeps all its time points (else
        # small cohorts keep the numbers of a read of the signals)
        keeps_all = all(k == x.shape[1] for k, x in zip(ranks, data, strict=True))
    else:
        features, xtu = stacked_svd(stored, n_out, n_power_iter=3, seed=seed, scratch=group)
        keeps_all = True
    if keeps_all and len(spectra) == len(runs):  # not after a randomized run: no singular values
        n_time = sum(x.shape[1] for x in data)
        scatter = _scatter(xtu, [spectra[i] for i in range(len(runs))], n_time)
        group.create_array("scatter", data=scatter, overwrite=True)
    if isinstance(group, zarr.Group) and "runs" in group:
        del group["runs"]
    return features.astype(np.float32)
