"""KMeans of voxel features: mini-batch (nilearn's choice) and a distributed Lloyd KMeans with k-means||.

Two methods, one result type:

- ``method="minibatch"``: scikit-learn's ``MiniBatchKMeans`` (k-means++, ``n_init`` starts), as nilearn's
  ``Parcellations(method="kmeans")``. Features up to ``daskparcel.kmeans.in-memory-bytes`` (default
  1 GiB) are computed once and fitted in memory; larger ones are streamed: the k-means++ start is drawn
  from a random sample of voxels across all chunks, then ``partial_fit`` runs over shuffled batches,
  one voxel chunk in memory at a time, and up to 10 full-batch Lloyd passes finish it.
- ``method="lloyd"``: Lloyd's algorithm on dask, started by k-means|| (Bahmani et al. 2012) with an
  oversampling factor of 10 (dask-ml's default of 2 misses many of the starting centres). Each
  iteration is one pass over the voxel chunks, whose per-chunk sums and counts are combined by a tree
  reduction. Random draws are a function of the seed and the voxel index only, so the labels do not
  depend on the chunking nor on the scheduler.

Both return exactly ``n_clusters`` clusters: a cluster left empty is re-seeded with the voxel farthest
from its centre (nilearn can return fewer labels than asked, nilearn issue 2238). The reported centres
are the means of the final clusters and the inertia is the sum of squared distances to them.
"""

from __future__ import annotations

import logging
import math
import numbers
import time
from dataclasses import dataclass
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np
import xarray as xr
from sklearn.cluster import KMeans, MiniBatchKMeans, kmeans_plusplus

from daskparcel import config
from daskparcel._checks import check_int, check_n_clusters
from daskparcel._dask import row_windows
from daskparcel._log import add_serial, serial_step
from daskparcel.clustering._blocks import (
    assign,
    delayed_blocks,
    finalize,
    lloyd,
    lloyd_in_memory,
    nearest,
    raise_non_finite,
    reseed_empty,
)
from daskparcel.clustering._common import features_dask, features_in_memory
from daskparcel.clustering.starts import check_judge_signals, select_start, start_seeds
from daskparcel.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["KMeansResult", "kmeans"]


@dataclass(frozen=True)
class KMeansResult:
    """Result of :func:`kmeans`.

    Attributes
    ----------
    labels : numpy.ndarray
        int64, one per voxel, values 0..K-1, each used at least once.
    centers : numpy.ndarray
        (K, n_features) float64, the mean of each cluster's features.
    inertia : float
        Sum of squared Euclidean distances of the voxels to their cluster's centre.
    n_iter : int
        Iterations run (Lloyd iterations, or mini-batch epochs of the best start).
    n_reseeded : int
        Clusters that came out empty and were re-seeded with a far voxel.
    """

    labels: np.ndarray
    centers: np.ndarray
    inertia: float
    n_iter: int
    n_reseeded: int = 0


# ---------------------------------------------------------------------------------------------
# input checks


def _uniform(seed: int, stream: int, index: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) numbers from (seed, stream, voxel index) by splitmix64: any chunking agrees."""
    with np.errstate(over="ignore"):
        z = (
            index.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
            + np.uint64(seed & 0xFFFFFFFF) * np.uint64(0xD1B54A32D192ED03)
            + np.uint64(stream & 0xFFFF) * np.uint64(0x8CB92BA72F3D8DD7)
        )
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(2**53)


# ---------------------------------------------------------------------------------------------
# Lloyd with k-means||


def _kmeans_parallel_init(
    x: da.Array,
    k: int,
    seed: int,
    *,
    oversampling_factor: float,
    n_rounds: int,
    check: bool,
) -> np.ndarray:
    """k-means|| initial centres: sample candidates in rounds, then weighted k-means++ on them."""
    n = x.shape[0]
    rng = np.random.default_rng(seed)
    first = int(rng.integers(n))
    candidates = np.asarray(x[first : first + 1].compute(), dtype=np.float64)
    chosen = [np.array([first])]
    ell = oversampling_factor * k
    for r in range(n_rounds):
        _, _, d2 = assign(x, candidates, check=check and r == 0)
        phi = float(d2.sum())
        if phi <= 0.0:
            break
        prob = np.minimum(1.0, ell * d2 / phi)
        new = np.flatnonzero(_uniform(seed, r + 1, np.arange(n)) < prob)
        new = np.setdiff1d(new, np.concatenate(chosen))
        if new.size == 0:
            continue
        chosen.append(new)
        rows = np.asarray(x[new].compute(), dtype=np.float64)
        candidates = np.concatenate([candidates, rows])
    # weight of a candidate = number of voxels nearest to it
    order = np.argsort(np.concatenate(chosen), kind="stable")
    candidates = candidates[order]
    stats, _, _ = assign(x, candidates)
    weights = stats["counts"].astype(np.float64)
    logger.debug("k-means||: %d candidates for %d centres", candidates.shape[0], k)
    keep = weights > 0
    candidates, weights = candidates[keep], weights[keep]
    if candidates.shape[0] <= k:
        # too few distinct candidates: pad with voxels drawn at random
        extra = np.sort(rng.choice(n, size=k - candidates.shape[0], replace=False))
        pad = np.asarray(x[extra].compute(), dtype=np.float64)
        return np.concatenate([candidates, pad])
    km = KMeans(n_clusters=k, init="k-means++", n_init=1, random_state=seed)
    km.fit(candidates, sample_weight=weights)
    return np.asarray(km.cluster_centers_, dtype=np.float64)


def _lloyd(
    x: da.Array,
    k: int,
    seed: int,
    *,
    init: str,
    max_iter: int,
    tol: float,
    variance: float,
    check: bool,
) -> tuple[np.ndarray, np.ndarray, int]:
    """One Lloyd run from a k-means|| (or k-means++ on a sample) start: (labels, d2, n_iter)."""
    if init == "k-means||":
        centers = _kmeans_parallel_init(
            x, k, seed, oversampling_factor=10.0, n_rounds=5, check=check
        )
    else:
        centers = _sample_kmeans_plusplus(x, k, seed, n_trials=1)
    return _lloyd_iterate(x, centers, max_iter=max_iter, tol_abs=tol * variance)


def _lloyd_iterate(
    x: da.Array, centers: np.ndarray, *, max_iter: int, tol_abs: float
) -> tuple[np.ndarray, np.ndarray, int]:
    """:func:`~daskparcel.clustering._blocks.lloyd` on dask, one pass over ``x`` an iteration."""
    k = centers.shape[0]

    def e_step(c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        stats, labels, d2 = assign(x, c)
        return labels, d2, stats["sums"], stats["counts"]

    def sums_of(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        full = finalize(x, labels, k)
        return full["centers"] * full["counts"][:, None], full["counts"]

    return lloyd(e_step, sums_of, centers, max_iter=max_iter, tol_abs=tol_abs, relabel=False)


def _sample_kmeans_plusplus(x: da.Array, k: int, seed: int, *, n_trials: int) -> np.ndarray:
    """k-means++ centres drawn from a random sample of voxels spread over all chunks."""
    n = x.shape[0]
    rng = np.random.default_rng(seed)
    size = min(n, max(3 * 1024, 3 * k))
    index = np.sort(rng.choice(n, size=size, replace=False))
    sample = np.asarray(x[index].compute(), dtype=np.float64)
    if not np.isfinite(sample).all():
        raise_non_finite("")
    best, best_inertia = None, np.inf
    for trial in range(n_trials):
        centers, _ = kmeans_plusplus(sample, k, random_state=int(rng.integers(2**31)) + trial)
        inertia = float(nearest(sample, centers)[1].sum())
        if inertia < best_inertia:
            best, best_inertia = centers, inertia
    assert best is not None
    return best


# ---------------------------------------------------------------------------------------------
# mini-batch


def minibatch_in_memory(
    x: np.ndarray,
    k: int,
    *,
    random_state: int,
    n_init: int,
    max_iter: int,
    tol: float,
    batch_size: int,
    max_no_improvement: int | None,
    init: str,
    refine: bool = False,
) -> tuple[np.ndarray, np.ndarray, int, float]:
    """scikit-learn's ``MiniBatchKMeans`` of ``x``, then (``refine``) Lloyd iterations from its centres: the
    labels, each row's squared distance to its centre, the iterations, and the seconds of the mini-batch
    steps (on one thread: what no number of cores shortens)."""
    from threadpoolctl import threadpool_limits

    start = time.perf_counter()

    # one OpenMP thread, in the thread that runs this (OpenMP limits are per thread: the client's do not
    # reach dask's threads): scikit-learn's sums depend on its thread count, and mini-batch steps are too
    # small to gain from more
    with threadpool_limits(limits=1, user_api="openmp"):
        mbk = MiniBatchKMeans(
            n_clusters=k,
            init=init,
            n_init=n_init,
            max_iter=max_iter,
            tol=tol,
            batch_size=batch_size,
            max_no_improvement=max_no_improvement,
            random_state=random_state,
        ).fit(x)
    seconds = time.perf_counter() - start
    labels = np.asarray(mbk.labels_, dtype=np.int64)
    centers = np.asarray(mbk.cluster_centers_, dtype=np.float64)
    n_iter = int(mbk.n_iter_)
    if refine:
        # full Lloyd iterations from the mini-batch centres (mini-batch stops short of a local optimum), on
        # every thread the task has, with the same result on any number of them
        labels, d2, refine_iter = lloyd_in_memory(x, centers, max_iter=50, tol=1e-4)
        return labels, d2, n_iter + refine_iter, seconds
    return labels, _squared_distances(x, centers, labels), n_iter, seconds


def _squared_distances(x: np.ndarray, centers: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each row's squared distance to its centre, in float64, 8192 rows at a time: a float64 copy of the whole
    of ``x`` (and of its centres) would be 4x the features (1.1 GB for 2 mm x 200 components, in a task)."""
    d2 = np.empty(len(x))
    for start, rows in row_windows([x], 8192):
        diff = np.asarray(rows, dtype=np.float64) - centers[labels[start : start + len(rows)]]
        d2[start : start + len(rows)] = np.einsum("ij,ij->i", diff, diff)
    return d2


def _minibatch_streaming(
    x: da.Array,
    k: int,
    *,
    random_state: int,
    n_init: int,
    n_epochs: int,
    batch_size: int,
    check: bool,
    n_polish: int = 10,
) -> tuple[np.ndarray, np.ndarray, int]:
    """partial_fit over shuffled batches, one voxel chunk in memory at a time, then Lloyd passes."""
    rng = np.random.default_rng(random_state)
    centers = _sample_kmeans_plusplus(x, k, random_state, n_trials=n_init)
    mbk = MiniBatchKMeans(
        n_clusters=k, init=centers, n_init=1, batch_size=batch_size, random_state=random_state
    )
    blocks = delayed_blocks(x)
    epoch = 0
    for epoch in range(1, n_epochs + 1):
        before = mbk.cluster_centers_.copy() if hasattr(mbk, "cluster_centers_") else centers
        for i in rng.permutation(len(blocks)):
            (chunk,) = dask.compute(blocks[i])
            chunk = np.asarray(chunk, dtype=np.float64)
            if check and epoch == 1 and not np.isfinite(chunk).all():
                raise_non_finite(f" in chunk {i}")
            chunk = chunk[rng.permutation(chunk.shape[0])]
            with serial_step("streamed mini-batch kmeans steps"):
                for start in range(0, chunk.shape[0], batch_size):
                    mbk.partial_fit(chunk[start : start + batch_size])
        shift = float(((mbk.cluster_centers_ - before) ** 2).sum())
        logger.debug("streaming mini-batch epoch %d: centre shift %.3g", epoch, shift)
    # a few full-batch (Lloyd) passes polish what the stream of mini-batches found
    labels, d2, _ = _lloyd_iterate(
        x, np.asarray(mbk.cluster_centers_, dtype=np.float64), max_iter=n_polish, tol_abs=0.0
    )
    return labels, d2, epoch


# ---------------------------------------------------------------------------------------------
# several starts, judged by what users judge


def kmeans(
    features: Any,
    n_clusters: int,
    *,
    method: Literal["minibatch", "lloyd"] = "minibatch",
    random_state: int = 0,
    n_init: int = 1,
    signals: xr.DataArray | None = None,
    mbk_n_init: int = 3,
    max_iter: int | None = None,
    tol: float | None = None,
    batch_size: int = 1024,
    init: Literal["k-means++", "k-means||"] | None = None,
    max_no_improvement: int | None = 10,
    refine: bool = False,
) -> KMeansResult:
    """Cluster voxels by KMeans on their features, returning exactly ``n_clusters`` clusters.

    Parameters
    ----------
    features : numpy.ndarray, dask.array.Array or xarray.DataArray
        (voxel, component) features, e.g. from :func:`daskparcel.reduction.reduce`. Dask arrays are
        processed chunk by chunk along "voxel".
    n_clusters : int
        Number of clusters K, 1 <= K <= number of voxels.
    method : {"minibatch", "lloyd"}, default="minibatch"
        "minibatch" is scikit-learn's ``MiniBatchKMeans`` as in nilearn (in memory up to
        ``daskparcel.kmeans.in-memory-bytes`` of features, streamed over chunks above);
        "lloyd" is full-batch Lloyd iterations on dask with a tree reduction per iteration.
    random_state : int, default=0
        Seed; the same seed gives the same labels on any scheduler (and, for "lloyd", any chunking).
    n_init : int, default=1
        Number of starts, each a whole KMeans from its own seed (the first from ``random_state``, so
        ``n_init=1`` gives nilearn's single start and its labels). In memory the starts run as parallel
        dask tasks sharing one copy of the features; "lloyd" and streamed starts run one after the
        other. The kept start is the one with the highest compression R^2 of ``signals`` (see
        :func:`select_start`), or without ``signals`` the lowest inertia in feature space (which does
        not track the R^2 users judge on real data).
    signals : xarray.DataArray, dims ("voxel", "time"), optional
        The voxel signals the features were reduced from (same voxels, same order), to judge the starts
        by their compression R^2: one streaming read of the signals for all starts.
    mbk_n_init : int, default=3
        "minibatch": scikit-learn's ``n_init`` inside each start (k-means++ draws kept by inertia on a
        batch; nilearn uses 3); "lloyd": unused.
    max_iter : int or None
        "minibatch": epochs over the data (default 100 in memory as scikit-learn, 10 streamed);
        "lloyd": iterations (default 300).
    tol : float or None
        "lloyd": stop when the squared centre shift is below ``tol`` times the mean feature variance
        (default 1e-4, scikit-learn's); "minibatch": scikit-learn's ``tol`` (default 0.0).
    batch_size : int, default=1024
        Mini-batch size.
    init : {"k-means++", "k-means||"} or None
        Start of each run. Default: "k-means++" for "minibatch", "k-means||" (oversampling factor 10,
        5 rounds) for "lloyd"; "k-means++" with "lloyd" draws it from a sample of 3072 voxels.
    max_no_improvement : int or None, default=10
        Mini-batch early stopping (scikit-learn's parameter), in-memory mini-batch only.
    refine : bool, default=False
        In-memory mini-batch: finish with full Lloyd iterations (at most 50) from the mini-batch centres,
        which lowers the inertia (nilearn stops at the mini-batch result).

    Returns
    -------
    KMeansResult
        ``labels`` (int64, exactly K distinct values), ``centers`` (cluster means), ``inertia`` (sum of
        squared distances to them), ``n_iter``, ``n_reseeded``.

    Raises
    ------
    InputError
        For a bad ``n_clusters`` (not an integer, < 1, more than voxels), bad options, or non-finite
        features (found during the first pass over the data).
    """
    x = features_dask(features)
    n_voxels = x.shape[0]
    k = check_n_clusters(n_clusters, n_voxels)
    if method not in ("minibatch", "lloyd"):
        raise InputError(f"method={method!r}: must be 'minibatch' or 'lloyd'")
    if init is None:
        init = "k-means++" if method == "minibatch" else "k-means||"
    if init not in ("k-means++", "k-means||") or (method == "minibatch" and init != "k-means++"):
        raise InputError(
            f"init={init!r}: must be 'k-means++' (minibatch or lloyd) or 'k-means||' (lloyd only)"
        )
    if isinstance(random_state, bool) or not isinstance(random_state, numbers.Integral):
        raise InputError(
            f"random_state={random_state!r}: must be an integer; pass random_state=0 or another seed"
        )
    n_init = check_int("n_init", n_init, 1, "pass n_init=1 (nilearn's single start) or more")
    mbk_n_init = check_int("mbk_n_init", mbk_n_init, 1, "pass mbk_n_init=3 (nilearn's)")
    batch_size = check_int("batch_size", batch_size, 1, "pass batch_size=1024")
    if max_iter is not None:
        max_iter = check_int("max_iter", max_iter, 1, "pass max_iter=None for the default")
    if tol is not None and (not isinstance(tol, numbers.Real) or not tol >= 0):
        raise InputError(f"tol={tol!r}: must be a number >= 0; pass tol=None for the default")
    check_judge_signals(signals, n_voxels)
    seeds = start_seeds(int(random_state), n_init)

    starts: list[dict[str, Any]] = []
    if method == "minibatch":
        limit = int(config.get("kmeans.in-memory-bytes"))
        if x.nbytes <= limit:
            logger.debug("minibatch kmeans in memory (%d bytes <= %d)", x.nbytes, limit)
            arr, x, shared = features_in_memory(features, x)  # one copy of them for every start
            if not np.isfinite(arr).all():
                raise_non_finite("")
            runs = dask.compute(
                *[
                    dask.delayed(minibatch_in_memory, pure=True)(
                        shared,
                        k,
                        random_state=seed,
                        n_init=mbk_n_init,
                        max_iter=100 if max_iter is None else max_iter,
                        tol=0.0 if tol is None else float(tol),
                        batch_size=batch_size,
                        max_no_improvement=max_no_improvement,
                        init=init,
                        refine=refine,
                    )
                    for seed in seeds
                ]
            )
            if len(seeds) == 1:  # one start is one task: its mini-batch steps run on one core
                add_serial("mini-batch kmeans (one start)", runs[0][3])
            runs = tuple(run[:3] for run in runs)
        else:
            logger.debug(
                "minibatch kmeans streamed over %d chunks (%d bytes > %d)",
                x.numblocks[0],
                x.nbytes,
                limit,
            )
            runs = tuple(
                _minibatch_streaming(
                    x,
                    k,
                    random_state=seed,
                    n_init=mbk_n_init,
                    n_epochs=10 if max_iter is None else max_iter,
                    batch_size=batch_size,
                    check=True,
                )
                for seed in seeds
            )
        for labels, d2, n_iter in runs:
            labels, moved = reseed_empty(labels, d2, k)
            final = finalize(x, labels, k)
            starts.append({"final": final, "labels": labels, "n_iter": n_iter, "moved": moved.size})
    else:
        first = finalize(x, np.zeros(n_voxels, dtype=np.int64), 1, check=True)
        variance = first["inertia"] / (n_voxels * x.shape[1])
        # lloyd's seeds are all derived from random_state (as before starts were judged)
        for seed in np.random.SeedSequence(int(random_state)).generate_state(n_init).tolist():
            labels, d2, n_iter = _lloyd(
                x,
                k,
                seed,
                init=init,
                max_iter=300 if max_iter is None else max_iter,
                tol=1e-4 if tol is None else float(tol),
                variance=variance,
                check=False,
            )
            labels, moved = reseed_empty(labels, d2, k)
            final = finalize(x, labels, k)
            logger.debug(
                "lloyd start seed %d: inertia %.6g in %d iterations", seed, final["inertia"], n_iter
            )
            starts.append({"final": final, "labels": labels, "n_iter": n_iter, "moved": moved.size})
    chosen = starts[
        select_start(
            [start["labels"] for start in starts],
            signals,
            inertias=[start["final"]["inertia"] for start in starts],
        )
    ]
    final, labels, n_iter, n_reseeded = (
        chosen["final"],
        chosen["labels"],
        chosen["n_iter"],
        chosen["moved"],
    )
    if not math.isfinite(final["inertia"]):
        raise_non_finite("")
    return KMeansResult(
        labels=labels,
        centers=final["centers"],
        inertia=float(final["inertia"]),
        n_iter=int(n_iter),
        n_reseeded=int(n_reseeded),
    )
