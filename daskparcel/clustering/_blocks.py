"""The blockwise steps kmeans is made of: nearest centres of a block of voxels, per-cluster sums tree-summed
over the blocks, the final statistics, and the re-seeding of empty clusters (used by kmeans and hierarchical
kmeans, in memory and streamed), and Lloyd's iterations in memory on threads."""

from __future__ import annotations

import functools
import logging
import operator
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dask
import dask.array as da
import numba
import numpy as np
import scipy.sparse

from daskparcel._dask import Moments, task_threads, tree_reduce
from daskparcel.errors import InputError

logger = logging.getLogger(__name__)

_CANDIDATE_BLOCK = 2048
#: Rows of the fixed blocks of :func:`lloyd_in_memory` (its sums do not depend on the number of threads).
LLOYD_ROWS = 8192


def raise_non_finite(where: str) -> None:
    raise InputError(
        f"features: non-finite values (NaN or inf){where}; check the reduction's input signals "
        "(they must be finite) or replace NaN before clustering"
    )


# ---------------------------------------------------------------------------------------------
# chunk kernels and the tree reduction


def sq_distances(x: np.ndarray, centers: np.ndarray, center_sq: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances (n, K), clipped at 0."""
    d2 = (x * x).sum(axis=1)[:, None] - 2.0 * (x @ centers.T) + center_sq[None, :]
    np.maximum(d2, 0.0, out=d2)
    return d2


def nearest(x: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest centre and squared distance to it, centres taken in blocks."""
    x = np.asarray(x, dtype=np.float64)
    best = np.full(x.shape[0], np.inf)
    arg = np.zeros(x.shape[0], dtype=np.int64)
    for start in range(0, centers.shape[0], _CANDIDATE_BLOCK):
        block = centers[start : start + _CANDIDATE_BLOCK]
        d2 = sq_distances(x, block, (block * block).sum(axis=1))
        local = d2.argmin(axis=1)
        value = d2[np.arange(x.shape[0]), local]
        better = value < best
        best[better] = value[better]
        arg[better] = local[better] + start
    return arg, best


def label_sums(x: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster sums (K, d) and counts (K,) of the rows of ``x``."""
    x = np.asarray(x, dtype=np.float64)
    onehot = scipy.sparse.csr_matrix(
        (np.ones(labels.size), (labels, np.arange(labels.size))), shape=(k, labels.size)
    )
    return np.asarray(onehot @ x), np.bincount(labels, minlength=k).astype(np.int64)


def assign_chunk(
    x: np.ndarray, centers: np.ndarray, check: bool
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Lloyd E-step on one chunk: (summed statistics, labels, squared distances)."""
    x = np.asarray(x, dtype=np.float64)
    if check and not np.isfinite(x).all():
        raise_non_finite("")
    labels, d2 = nearest(x, centers)
    sums, counts = label_sums(x, labels, centers.shape[0])
    return {"sums": sums, "counts": counts, "inertia": float(d2.sum())}, labels, d2


def add(*parts: dict[str, Any]) -> dict[str, Any]:
    out = dict(parts[0])
    for part in parts[1:]:
        for key, value in part.items():
            out[key] = out[key] + value
    return out


def delayed_blocks(x: da.Array) -> list[Any]:
    return list(x.to_delayed().ravel())


def block_offsets(x: da.Array) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(x.chunks[0])])


def assign(
    x: da.Array, centers: np.ndarray, *, check: bool = False
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """One pass: statistics (tree-reduced), labels and squared distances of every voxel."""
    centers_d = dask.delayed(np.asarray(centers, dtype=np.float64), pure=True)
    parts = [
        dask.delayed(assign_chunk, nout=3, pure=True)(block, centers_d, check)
        for block in delayed_blocks(x)
    ]
    stats, labels, d2 = dask.compute(
        tree_reduce([p[0] for p in parts], add), [p[1] for p in parts], [p[2] for p in parts]
    )
    return stats, np.concatenate(labels), np.concatenate(d2)


def stats_chunk(x: np.ndarray, labels: np.ndarray, k: int, check: bool) -> dict[str, Any]:
    x = np.asarray(x, dtype=np.float64)
    if check and not np.isfinite(x).all():
        raise_non_finite("")
    sums, counts = label_sums(x, labels, k)
    return {"sums": sums, "counts": counts, "sumsq": float((x * x).sum())}


def finalize(x: da.Array, labels: np.ndarray, k: int, *, check: bool = False) -> dict[str, Any]:
    """Centres (cluster means) and inertia of given labels, in one pass."""
    offsets = block_offsets(x)
    parts = [
        dask.delayed(stats_chunk, pure=True)(block, labels[offsets[i] : offsets[i + 1]], k, check)
        for i, block in enumerate(delayed_blocks(x))
    ]
    (stats,) = dask.compute(tree_reduce(parts, add))
    counts = stats["counts"]
    centers = stats["sums"] / np.maximum(counts, 1)[:, None]
    inertia = stats["sumsq"] - float((counts * (centers * centers).sum(axis=1)).sum())
    return {"centers": centers, "inertia": max(inertia, 0.0), "counts": counts}


@numba.njit(cache=True, nogil=True)
def _nearest_and_sums(
    d: np.ndarray, x: np.ndarray, x_sq: np.ndarray, labels: np.ndarray, best: np.ndarray,
    sums: np.ndarray, counts: np.ndarray,
) -> None:  # fmt: skip
    """From ``d`` = the centres' squared norms - 2 x.c: each row's nearest centre (the first of ties, as
    ``argmin``), its squared distance, and the rows added into their cluster's sums (float64)."""
    for i in range(d.shape[0]):
        nearest = 0
        low = d[i, 0]
        for j in range(1, d.shape[1]):
            if d[i, j] < low:
                low = d[i, j]
                nearest = j
        labels[i] = nearest
        best[i] = max(low + x_sq[i], 0.0)
        counts[nearest] += 1
        for f in range(x.shape[1]):
            sums[nearest, f] += x[i, f]


def _lloyd_block(
    x: np.ndarray, x_sq: np.ndarray, centers: np.ndarray, center_sq: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Lloyd's E-step on a block of rows, the distances in the rows' dtype: (labels, squared distances,
    the clusters' float64 sums, counts)."""
    d = x @ centers.T
    d *= -2.0
    d += center_sq.astype(d.dtype)[None, :]
    k = centers.shape[0]
    labels = np.empty(x.shape[0], dtype=np.int64)
    best = np.empty(x.shape[0], dtype=np.float64)
    sums = np.zeros((k, x.shape[1]), dtype=np.float64)
    counts = np.zeros(k, dtype=np.int64)
    _nearest_and_sums(d, x, x_sq, labels, best, sums, counts)
    return labels, best, sums, counts


def lloyd(
    e_step: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    sums_of: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    centers: np.ndarray,
    *,
    max_iter: int,
    tol_abs: float,
    relabel: bool,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Lloyd's iterations from ``centers``, whatever holds the rows: ``e_step(centres)`` gives the labels, the
    squared distances and the clusters' sums and counts; ``sums_of(labels)`` the sums and counts of given
    labels (after empty clusters are re-seeded). Stops when no label changes or the centres move by at most
    ``tol_abs`` (squared, summed); with ``relabel``, the labels are then those of the final centres (as
    scikit-learn's). Returns the labels, their squared distances and the number of iterations."""
    k = centers.shape[0]
    centers = np.asarray(centers, dtype=np.float64)
    labels = np.empty(0, dtype=np.int64)
    d2 = np.empty(0)
    converged = False
    n_iter = 0
    while n_iter < max_iter:
        n_iter += 1
        new_labels, d2, sums, counts = e_step(centers)
        if (counts == 0).any():
            new_labels, _ = reseed_empty(new_labels, d2, k)
            sums, counts = sums_of(new_labels)
        new_centers = sums / np.maximum(counts, 1)[:, None]
        converged = np.array_equal(labels, new_labels)
        shift = float(((new_centers - centers) ** 2).sum())
        logger.debug("lloyd iteration %d: centre shift %.3g", n_iter, shift)
        centers, labels = new_centers, new_labels
        if converged or shift <= tol_abs:
            break
    if relabel and not converged:
        labels, d2, _, _ = e_step(centers)
    return labels, d2, n_iter


def _mean_variance(x: np.ndarray, blocks: list[slice], pool: ThreadPoolExecutor) -> float:
    """``np.mean(np.var(x, axis=0))`` from the blocks' :class:`~daskparcel._dask.Moments` (taken on the pool's
    threads, merged in block order): no float64 copy of ``x`` (``np.var``'s took 0.5 s for 2 mm x 200 float32
    features, on one core), the same number on any number of threads."""
    moments = Moments(axis=0)
    for part in pool.map(lambda rows: Moments.of(x[rows], 0), blocks):
        moments.merge(part)
    return float(np.mean(moments.variance())) if moments.n else 0.0


def lloyd_in_memory(
    x: np.ndarray,
    centers: np.ndarray,
    *,
    max_iter: int,
    tol: float,
    threads: int | None = None,
    rows: int = LLOYD_ROWS,
) -> tuple[np.ndarray, np.ndarray, int]:
    """:func:`lloyd` on features in memory, as scikit-learn's ``KMeans(init=centers, n_init=1, max_iter,
    tol)``: ``tol`` is relative to the features' mean variance, and the labels are those of the final centres.

    Each iteration takes the rows in fixed blocks of ``rows`` on ``threads`` threads (default:
    :func:`daskparcel._dask.task_threads`) and adds the blocks' sums in block order: labels and centres are
    the same on any number of threads, where scikit-learn's OpenMP sums change with its thread count (its
    labels differed between the local scheduler and a cluster's one-thread workers; issue 18).
    """
    n, k = x.shape[0], centers.shape[0]
    dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.dtype(np.float64)
    x = np.asarray(x, dtype=dtype)
    blocks = [slice(start, min(start + rows, n)) for start in range(0, n, rows)]
    with ThreadPoolExecutor(max(1, threads or task_threads())) as pool:
        x_sq = np.concatenate(
            list(pool.map(lambda b: np.einsum("ij,ij->i", x[b], x[b], dtype=np.float64), blocks))
        )
        tol_abs = float(tol) * _mean_variance(x, blocks, pool)

        def in_block_order(parts: list[Any], i: int) -> Any:
            return functools.reduce(operator.add, (part[i] for part in parts))

        def e_step(c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
            c_x, c_sq = c.astype(dtype), (c * c).sum(axis=1)
            parts = list(pool.map(lambda b: _lloyd_block(x[b], x_sq[b], c_x, c_sq), blocks))
            labels, d2 = (np.concatenate([p[i] for p in parts]) for i in (0, 1))
            return labels, d2, in_block_order(parts, 2), in_block_order(parts, 3)

        def sums_of(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            parts = list(pool.map(lambda b: label_sums(x[b], labels[b], k), blocks))
            return in_block_order(parts, 0), in_block_order(parts, 1)

        return lloyd(e_step, sums_of, centers, max_iter=max_iter, tol_abs=tol_abs, relabel=True)


# ---------------------------------------------------------------------------------------------
# exactly K clusters


def reseed_empty(labels: np.ndarray, d2: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Give each empty cluster the voxel farthest from its centre (in a cluster of 2 or more).

    Returns the new labels and the indices of the moved voxels. Deterministic: ties broken by index.
    """
    counts = np.bincount(labels, minlength=k)
    empty = np.flatnonzero(counts == 0)
    if empty.size == 0:
        return labels, np.empty(0, dtype=np.int64)
    labels = labels.copy()
    order = np.lexsort((np.arange(labels.size), -d2))
    moved = []
    position = 0
    for cluster in empty:
        while counts[labels[order[position]]] < 2:
            position += 1
        voxel = order[position]
        counts[labels[voxel]] -= 1
        labels[voxel] = cluster
        counts[cluster] = 1
        moved.append(voxel)
        position += 1
    logger.info("re-seeded %d empty cluster(s) with the farthest voxels", empty.size)
    return labels, np.asarray(moved, dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# chunk-independent random numbers
