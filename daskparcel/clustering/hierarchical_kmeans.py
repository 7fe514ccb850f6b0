"""Hierarchical KMeans of voxel features, as nilearn's ``HierarchicalKMeans``, with exactly K clusters.

First ``int(sqrt(K))`` coarse clusters (mini-batch KMeans on all voxels), then each coarse cluster split
into a number of sub-clusters proportional to its size (each at least 1, summing to K: nilearn's
``_adjust_small_clusters``). The second level runs as independent dask tasks, one per coarse cluster.
With nilearn's parameters (k-means++, batch_size 1000, n_init 10, max_no_improvement 10) the labels
are nilearn's wherever nilearn returns K clusters; where it would not (an empty coarse cluster, a coarse
cluster with fewer voxels than its share, an empty sub-cluster) the shares are capped and moved to
other clusters and empty sub-clusters re-seeded, so that exactly K labels come out.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from daskparcel import config
from daskparcel._checks import check_int, check_n_clusters
from daskparcel._log import add_serial
from daskparcel.clustering._blocks import finalize, raise_non_finite, reseed_empty
from daskparcel.clustering._common import features_dask, features_in_memory
from daskparcel.clustering.kmeans import (
    kmeans,
    minibatch_in_memory,
)
from daskparcel.clustering.starts import check_judge_signals, select_start, start_seeds
from daskparcel.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["hierarchical_kmeans", "split_sizes"]

#: Both levels' in-memory MiniBatchKMeans, with scikit-learn's defaults as nilearn's ``hierarchical_k_means``.
_nilearn_minibatch = functools.partial(minibatch_in_memory, max_iter=100, tol=0.0, init="k-means++")


def _adjust_small_clusters(array: np.ndarray, n_clusters: int) -> np.ndarray:
    """nilearn's rounding of ``array`` (floats summing to ``n_clusters``) to integers >= 1."""
    array_round = np.maximum(np.rint(array).astype(int), 1)
    if array_round.sum() < n_clusters:
        while array_round.sum() != n_clusters:
            array_round[np.argmax(array - array_round)] += 1
    elif array_round.sum() > n_clusters:
        parent = np.arange(array_round.shape[0])
        while array_round.sum() != n_clusters:
            mask = array_round != 1
            idx = np.argmin(array[mask] - array_round[mask])
            array_round[parent[mask][idx]] -= 1
    return array_round


def split_sizes(counts: np.ndarray, n_clusters: int) -> np.ndarray:
    """Number of sub-clusters of each coarse cluster: proportional to its size, summing to K.

    nilearn's rounding (each share >= 1, total exactly ``n_clusters``) when every coarse cluster has
    at least its share of voxels; otherwise empty coarse clusters get 0, each share is capped at the
    cluster's voxel count and the surplus goes to the clusters furthest below their exact share.

    Parameters
    ----------
    counts : numpy.ndarray
        Voxels in each coarse cluster (sum >= ``n_clusters``).
    n_clusters : int
        Total number of clusters K.

    Returns
    -------
    numpy.ndarray
        int64 shares, ``0 <= share <= count``, ``share >= 1`` where ``count >= 1``, summing to K.
    """
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if total < n_clusters:
        raise InputError(
            f"n_clusters={n_clusters}: more clusters than voxels ({total}); pass a smaller n_clusters"
        )
    exact = n_clusters * counts / total
    shares = np.zeros(counts.size, dtype=np.int64)
    nonempty = counts > 0
    if nonempty.sum() > n_clusters:  # cannot happen with int(sqrt(K)) coarse clusters
        raise InputError(
            f"n_clusters={n_clusters}: fewer than the {nonempty.sum()} coarse clusters"
        )
    shares[nonempty] = _adjust_small_clusters(exact[nonempty], n_clusters)
    over = shares > counts
    if over.any():
        shares = np.minimum(shares, counts)
        while shares.sum() < n_clusters:
            room = shares < counts
            gap = np.where(room, exact - shares, -np.inf)
            shares[int(np.argmax(gap))] += 1
        logger.info("hierarchical kmeans: coarse clusters smaller than their share; shares capped")
    return shares


def _fine_cluster(
    x: np.ndarray,
    n_small: int,
    *,
    random_state: int,
    batch_size: int,
    n_init: int,
    max_no_improvement: int | None,
) -> np.ndarray:
    """Second-level clustering of one coarse cluster, exactly ``n_small`` labels."""
    if n_small == 1:
        return np.zeros(x.shape[0], dtype=np.int64)
    labels, d2, _, _ = _nilearn_minibatch(
        x,
        n_small,
        random_state=random_state,
        n_init=n_init,
        batch_size=batch_size,
        max_no_improvement=max_no_improvement,
    )
    return reseed_empty(labels, d2, n_small)[0]


def _coarse_starts(
    x: Any,
    n_big: int,
    seeds: list[int],
    *,
    batch_size: int,
    mbk_n_init: int,
    max_no_improvement: int | None,
) -> list[np.ndarray]:
    """The first level of every start: parallel dask tasks on one in-memory copy of the features (``x``, a
    :func:`daskparcel._dask.shared` value), or (``x`` a dask array: features above
    ``daskparcel.kmeans.in-memory-bytes``) streamed kmeans one start after the other."""
    if not isinstance(x, da.Array):
        runs = dask.compute(
            *[
                dask.delayed(_nilearn_minibatch, pure=True)(
                    x,
                    n_big,
                    random_state=seed,
                    n_init=mbk_n_init,
                    batch_size=batch_size,
                    max_no_improvement=max_no_improvement,
                )
                for seed in seeds
            ]
        )
        if len(seeds) == 1:  # one start is one task: its mini-batch steps run on one core
            add_serial("hierarchical kmeans first level (one start)", runs[0][3])
        return [reseed_empty(labels, d2, n_big)[0] for labels, d2, _, _ in runs]
    return [
        kmeans(
            x,
            n_big,
            method="minibatch",
            random_state=seed,
            n_init=1,
            mbk_n_init=mbk_n_init,
            batch_size=batch_size,
            max_no_improvement=max_no_improvement,
        ).labels
        for seed in seeds
    ]


def hierarchical_kmeans(
    features: Any,
    n_clusters: int,
    *,
    random_state: int = 0,
    n_init: int = 1,
    signals: xr.DataArray | None = None,
    batch_size: int = 1000,
    mbk_n_init: int = 10,
    max_no_improvement: int | None = 10,
) -> np.ndarray:
    """Two-level KMeans (nilearn's ``hierarchical_kmeans`` method), exactly ``n_clusters`` labels.

    Parameters
    ----------
    features : numpy.ndarray, dask.array.Array or xarray.DataArray
        (voxel, component) features.
    n_clusters : int
        Number of clusters K (1 <= K <= number of voxels).
    random_state : int, default=0
        Seed of every mini-batch KMeans of the first start (as nilearn, the same seed at both levels).
    n_init : int, default=1
        Number of starts, each a whole two-level clustering from its own seed (the first from
        ``random_state``: ``n_init=1`` gives nilearn's labels). Both levels of every start run as
        parallel dask tasks; the start kept is the one with the highest compression R^2 of ``signals``
        (:func:`daskparcel.clustering.kmeans.select_start`), or without ``signals`` the lowest inertia.
    signals : xarray.DataArray, dims ("voxel", "time"), optional
        The voxel signals the features were reduced from, to judge the starts (one streaming read).
    batch_size, mbk_n_init, max_no_improvement
        scikit-learn ``MiniBatchKMeans`` parameters (``mbk_n_init`` is its ``n_init``, inside each
        start); the defaults are nilearn ``Parcellations``'.

    Returns
    -------
    numpy.ndarray
        int64 labels, one per voxel, values 0..K-1, each used.

    Raises
    ------
    InputError
        For a bad ``n_clusters``, option or ``signals``, or non-finite features.
    """
    x = features_dask(features)
    n_voxels = x.shape[0]
    k = check_n_clusters(n_clusters, n_voxels)
    batch_size = check_int("batch_size", batch_size, 1, "pass batch_size=1000")
    n_init = check_int("n_init", n_init, 1, "pass n_init=1 (nilearn's single start) or more")
    mbk_n_init = check_int("mbk_n_init", mbk_n_init, 1, "pass mbk_n_init=10 (nilearn's)")
    check_judge_signals(signals, n_voxels)
    seeds = start_seeds(int(random_state), n_init)
    n_big = int(np.sqrt(k))
    limit = int(config.get("kmeans.in-memory-bytes"))
    data: Any = x
    shared = None
    if x.nbytes <= limit:  # read the features once, for every start and both levels
        # one copy of the in-memory features for both levels (sent to a distributed cluster once)
        data, x, shared = features_in_memory(features, x)
        if not np.isfinite(data).all():
            raise_non_finite("")
    coarse_starts = _coarse_starts(
        data if shared is None else shared,
        n_big,
        seeds,
        batch_size=batch_size,
        mbk_n_init=mbk_n_init,
        max_no_improvement=max_no_improvement,
    )
    plans = []
    tasks: list[Any] = []
    for seed, coarse in zip(seeds, coarse_starts, strict=True):
        shares = split_sizes(np.bincount(coarse, minlength=n_big), k)
        logger.debug("hierarchical kmeans: %d coarse clusters, shares %s", n_big, shares.tolist())
        members = [np.flatnonzero(coarse == i) for i in range(n_big)]
        plan = []
        for index, n_small in zip(members, shares, strict=True):
            if n_small == 0:
                continue
            if shared is not None:
                rows: Any = dask.delayed(_take, pure=True)(shared, index)
            else:
                rows = x[index] if index.size < n_voxels else x
            plan.append((index, int(n_small), len(tasks)))
            tasks.append(
                dask.delayed(_fine_cluster, pure=True)(
                    rows,
                    int(n_small),
                    random_state=seed,
                    batch_size=batch_size,
                    n_init=mbk_n_init,
                    max_no_improvement=max_no_improvement,
                )
            )
        plans.append(plan)
    results = dask.compute(*tasks)  # the second level of every start, in parallel
    labelings = []
    for plan in plans:
        labels = np.empty(n_voxels, dtype=np.int64)
        offset = 0
        for index, n_small, task in plan:
            labels[index] = offset + results[task]
            offset += n_small
        if offset != k or np.unique(labels).size != k:  # pragma: no cover - guarded above
            raise RuntimeError(
                f"hierarchical kmeans produced {np.unique(labels).size} labels, not {k}"
            )
        labelings.append(labels)
    inertias = None
    if signals is None and len(labelings) > 1:
        inertias = [finalize(x, labels, k)["inertia"] for labels in labelings]
    return labelings[select_start(labelings, signals, inertias=inertias)]


def _take(x: np.ndarray, index: np.ndarray) -> np.ndarray:
    return x if index.size == x.shape[0] else x[index]
