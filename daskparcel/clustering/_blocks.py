"""The blockwise steps kmeans is made of: nearest centres of a block of voxels, per-cluster sums tree-summed
over the blocks, the final statistics, and the re-seeding of empty clusters (used by kmeans and hierarchical
kmeans, in memory and streamed)."""

from __future__ import annotations

import logging
from typing import Any

import dask
import dask.array as da
import numpy as np
import scipy.sparse

from daskparcel._dask import tree_reduce
from daskparcel.errors import InputError

logger = logging.getLogger(__name__)

_CANDIDATE_BLOCK = 2048


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
