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

import logging
from typing import Any

import dask
import numpy as np
from sklearn.cluster import MiniBatchKMeans

from daskparcel._checks import check_int, check_n_clusters
from daskparcel.clustering._common import features_dask
from daskparcel.clustering.kmeans import kmeans, reseed_empty
from daskparcel.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["hierarchical_kmeans", "split_sizes"]


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
    mbk = MiniBatchKMeans(
        n_clusters=n_small,
        init="k-means++",
        batch_size=batch_size,
        n_init=n_init,
        max_no_improvement=max_no_improvement,
        random_state=random_state,
    ).fit(x)
    labels = np.asarray(mbk.labels_, dtype=np.int64)
    counts = np.bincount(labels, minlength=n_small)
    if (counts == 0).any():
        diff = np.asarray(x, dtype=np.float64) - mbk.cluster_centers_[labels]
        labels, _ = reseed_empty(labels, np.einsum("ij,ij->i", diff, diff), n_small)
    return labels


def hierarchical_kmeans(
    features: Any,
    n_clusters: int,
    *,
    random_state: int = 0,
    batch_size: int = 1000,
    n_init: int = 10,
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
        Seed of every mini-batch KMeans (as nilearn, the same seed at both levels).
    batch_size, n_init, max_no_improvement
        scikit-learn ``MiniBatchKMeans`` parameters; the defaults are nilearn ``Parcellations``'.

    Returns
    -------
    numpy.ndarray
        int64 labels, one per voxel, values 0..K-1, each used.

    Raises
    ------
    InputError
        For a bad ``n_clusters`` or option, or non-finite features.
    """
    x = features_dask(features)
    n_voxels = x.shape[0]
    k = check_n_clusters(n_clusters, n_voxels)
    batch_size = check_int("batch_size", batch_size, 1, "pass batch_size=1000")
    n_init = check_int("n_init", n_init, 1, "pass n_init=10")
    n_big = int(np.sqrt(k))
    coarse = kmeans(
        x,
        n_big,
        method="minibatch",
        random_state=random_state,
        n_init=n_init,
        batch_size=batch_size,
        max_no_improvement=max_no_improvement,
    ).labels
    shares = split_sizes(np.bincount(coarse, minlength=n_big), k)
    logger.debug("hierarchical kmeans: %d coarse clusters, shares %s", n_big, shares.tolist())
    members = [np.flatnonzero(coarse == i) for i in range(n_big)]
    tasks: list[Any] = []
    for index, n_small in zip(members, shares):
        if n_small == 0:
            tasks.append(None)
            continue
        rows = x[index] if index.size < n_voxels else x
        tasks.append(
            dask.delayed(_fine_cluster, pure=True)(
                rows,
                int(n_small),
                random_state=random_state,
                batch_size=batch_size,
                n_init=n_init,
                max_no_improvement=max_no_improvement,
            )
        )
    results = dask.compute(*[t for t in tasks if t is not None])
    labels = np.empty(n_voxels, dtype=np.int64)
    offset = 0
    it = iter(results)
    for index, n_small, task in zip(members, shares, tasks):
        if task is None:
            continue
        labels[index] = offset + next(it)
        offset += int(n_small)
    if offset != k or np.unique(labels).size != k:  # pragma: no cover - guarded above
        raise RuntimeError(f"hierarchical kmeans produced {np.unique(labels).size} labels, not {k}")
    return labels
