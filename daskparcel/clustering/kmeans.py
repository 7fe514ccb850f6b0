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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np
import scipy.sparse
import xarray as xr
from sklearn.cluster import KMeans, MiniBatchKMeans, kmeans_plusplus

from daskparcel.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["KMeansResult", "kmeans", "select_start", "start_seeds"]

_IN_MEMORY_BYTES_DEFAULT = 2**30
_SPLIT_EVERY = 8
_CANDIDATE_BLOCK = 2048


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


def _as_features(features: Any) -> da.Array:
    """Features as a 2-D floating dask array, one column block."""
    if isinstance(features, xr.DataArray):
        if set(features.dims) == {"voxel", "component"}:
            features = features.transpose("voxel", "component")
        features = features.data
    if isinstance(features, da.Array):
        x = features
    else:
        arr = np.asarray(features)
        if arr.dtype.kind not in "fiu":
            raise InputError(
                f"features: dtype {arr.dtype} is not numeric; pass a float array (voxel, component)"
            )
        if arr.ndim == 2:
            x = da.from_array(arr, chunks=(_default_rows(arr.shape), -1))
        else:
            x = da.from_array(arr)
    if x.ndim != 2:
        raise InputError(
            f"features: expected 2 dims (voxel, component), got shape {x.shape}; reshape or "
            "pass the output of daskparcel.reduction.reduce"
        )
    if x.dtype.kind not in "fiu":
        raise InputError(f"features: dtype {x.dtype} is not numeric; pass a float array")
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    if x.numblocks[1] != 1:
        x = x.rechunk({1: -1})
    return x


def _default_rows(shape: tuple[int, ...]) -> int:
    n_cols = shape[1] if len(shape) > 1 else 1
    return max(1, min(shape[0] if shape else 1, (32 * 2**20) // (8 * max(1, n_cols))))


def _check_int(name: str, value: Any, minimum: int, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise InputError(f"{name}={value!r}: must be an integer >= {minimum}; {hint}")
    return int(value)


def _check_n_clusters(n_clusters: Any, n_voxels: int) -> int:
    k = _check_int(
        "n_clusters", n_clusters, 1, "pass n_clusters=50 (nilearn's default) or another integer"
    )
    if k > n_voxels:
        raise InputError(
            f"n_clusters={k}: more clusters than voxels ({n_voxels}); pass n_clusters <= {n_voxels} "
            "or a larger mask"
        )
    return k


def _raise_non_finite(where: str) -> None:
    raise InputError(
        f"features: non-finite values (NaN or inf){where}; check the reduction's input signals "
        "(they must be finite) or replace NaN before clustering"
    )


# ---------------------------------------------------------------------------------------------
# chunk kernels and the tree reduction


def _sq_distances(x: np.ndarray, centers: np.ndarray, center_sq: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances (n, K), clipped at 0."""
    d2 = (x * x).sum(axis=1)[:, None] - 2.0 * (x @ centers.T) + center_sq[None, :]
    np.maximum(d2, 0.0, out=d2)
    return d2


def _nearest(x: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest centre and squared distance to it, centres taken in blocks."""
    x = np.asarray(x, dtype=np.float64)
    best = np.full(x.shape[0], np.inf)
    arg = np.zeros(x.shape[0], dtype=np.int64)
    for start in range(0, centers.shape[0], _CANDIDATE_BLOCK):
        block = centers[start : start + _CANDIDATE_BLOCK]
        d2 = _sq_distances(x, block, (block * block).sum(axis=1))
        local = d2.argmin(axis=1)
        value = d2[np.arange(x.shape[0]), local]
        better = value < best
        best[better] = value[better]
        arg[better] = local[better] + start
    return arg, best


def _label_sums(x: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster sums (K, d) and counts (K,) of the rows of ``x``."""
    x = np.asarray(x, dtype=np.float64)
    onehot = scipy.sparse.csr_matrix(
        (np.ones(labels.size), (labels, np.arange(labels.size))), shape=(k, labels.size)
    )
    return np.asarray(onehot @ x), np.bincount(labels, minlength=k).astype(np.int64)


def _assign_chunk(
    x: np.ndarray, centers: np.ndarray, check: bool
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Lloyd E-step on one chunk: (summed statistics, labels, squared distances)."""
    x = np.asarray(x, dtype=np.float64)
    if check and not np.isfinite(x).all():
        _raise_non_finite("")
    labels, d2 = _nearest(x, centers)
    sums, counts = _label_sums(x, labels, centers.shape[0])
    return {"sums": sums, "counts": counts, "inertia": float(d2.sum())}, labels, d2


def _add(*parts: dict[str, Any]) -> dict[str, Any]:
    out = dict(parts[0])
    for part in parts[1:]:
        for key, value in part.items():
            out[key] = out[key] + value
    return out


def _tree(parts: Sequence[Any], combine: Callable[..., Any]) -> Any:
    """Tree reduction of delayed objects, ``_SPLIT_EVERY`` at a time (depth log_8 of the chunks)."""
    level = list(parts)
    while len(level) > 1:
        level = [
            dask.delayed(combine, pure=True)(*level[i : i + _SPLIT_EVERY])
            for i in range(0, len(level), _SPLIT_EVERY)
        ]
    return level[0]


def _blocks(x: da.Array) -> list[Any]:
    return list(x.to_delayed().ravel())


def _offsets(x: da.Array) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(x.chunks[0])])


def _assign(
    x: da.Array, centers: np.ndarray, *, check: bool = False
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """One pass: statistics (tree-reduced), labels and squared distances of every voxel."""
    centers_d = dask.delayed(np.asarray(centers, dtype=np.float64), pure=True)
    parts = [
        dask.delayed(_assign_chunk, nout=3, pure=True)(block, centers_d, check)
        for block in _blocks(x)
    ]
    stats, labels, d2 = dask.compute(
        _tree([p[0] for p in parts], _add), [p[1] for p in parts], [p[2] for p in parts]
    )
    return stats, np.concatenate(labels), np.concatenate(d2)


def _stats_chunk(x: np.ndarray, labels: np.ndarray, k: int, check: bool) -> dict[str, Any]:
    x = np.asarray(x, dtype=np.float64)
    if check and not np.isfinite(x).all():
        _raise_non_finite("")
    sums, counts = _label_sums(x, labels, k)
    return {"sums": sums, "counts": counts, "sumsq": float((x * x).sum())}


def _finalize(x: da.Array, labels: np.ndarray, k: int, *, check: bool = False) -> dict[str, Any]:
    """Centres (cluster means) and inertia of given labels, in one pass."""
    offsets = _offsets(x)
    parts = [
        dask.delayed(_stats_chunk, pure=True)(block, labels[offsets[i] : offsets[i + 1]], k, check)
        for i, block in enumerate(_blocks(x))
    ]
    (stats,) = dask.compute(_tree(parts, _add))
    counts = stats["counts"]
    centers = stats["sums"] / np.maximum(counts, 1)[:, None]
    inertia = stats["sumsq"] - float((counts * (centers * centers).sum(axis=1)).sum())
    return {"centers": centers, "inertia": max(inertia, 0.0), "counts": counts}


# ---------------------------------------------------------------------------------------------
# exactly K clusters


def _reseed_empty(labels: np.ndarray, d2: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
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
        _, _, d2 = _assign(x, candidates, check=check and r == 0)
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
    stats, _, _ = _assign(x, candidates)
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
    """Lloyd iterations from ``centers``, one pass each; empty clusters re-seeded on the way."""
    k = centers.shape[0]
    labels = np.empty(0, dtype=np.int64)
    d2 = np.empty(0)
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        stats, new_labels, d2 = _assign(x, centers)
        counts = stats["counts"]
        sums = stats["sums"]
        if (counts == 0).any():
            new_labels, _ = _reseed_empty(new_labels, d2, k)
            full = _finalize(x, new_labels, k)
            sums, counts = full["centers"] * full["counts"][:, None], full["counts"]
        new_centers = sums / np.maximum(counts, 1)[:, None]
        shift = float(((new_centers - centers) ** 2).sum())
        unchanged = labels.size == new_labels.size and np.array_equal(labels, new_labels)
        centers, labels = new_centers, new_labels
        logger.debug(
            "lloyd iteration %d: inertia %.6g, centre shift %.3g", n_iter, stats["inertia"], shift
        )
        if unchanged or shift <= tol_abs:
            break
    return labels, d2, n_iter


def _sample_kmeans_plusplus(x: da.Array, k: int, seed: int, *, n_trials: int) -> np.ndarray:
    """k-means++ centres drawn from a random sample of voxels spread over all chunks."""
    n = x.shape[0]
    rng = np.random.default_rng(seed)
    size = min(n, max(3 * 1024, 3 * k))
    index = np.sort(rng.choice(n, size=size, replace=False))
    sample = np.asarray(x[index].compute(), dtype=np.float64)
    if not np.isfinite(sample).all():
        _raise_non_finite("")
    best, best_inertia = None, np.inf
    for trial in range(n_trials):
        centers, _ = kmeans_plusplus(sample, k, random_state=int(rng.integers(2**31)) + trial)
        inertia = float(_nearest(sample, centers)[1].sum())
        if inertia < best_inertia:
            best, best_inertia = centers, inertia
    assert best is not None
    return best


# ---------------------------------------------------------------------------------------------
# mini-batch


def _minibatch_in_memory(
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
) -> tuple[np.ndarray, np.ndarray, int]:
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
    labels = np.asarray(mbk.labels_, dtype=np.int64)
    centers = np.asarray(mbk.cluster_centers_, dtype=np.float64)
    n_iter = int(mbk.n_iter_)
    if refine:
        # full Lloyd iterations from the mini-batch centres: mini-batch stops short of a local optimum
        full = KMeans(
            n_clusters=k, init=centers, n_init=1, max_iter=50, random_state=random_state
        ).fit(x)
        labels = np.asarray(full.labels_, dtype=np.int64)
        centers = np.asarray(full.cluster_centers_, dtype=np.float64)
        n_iter += int(full.n_iter_)
    diff = np.asarray(x, dtype=np.float64) - centers[labels]
    return labels, np.einsum("ij,ij->i", diff, diff), n_iter


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
    blocks = _blocks(x)
    epoch = 0
    for epoch in range(1, n_epochs + 1):
        before = mbk.cluster_centers_.copy() if hasattr(mbk, "cluster_centers_") else centers
        for i in rng.permutation(len(blocks)):
            (chunk,) = dask.compute(blocks[i])
            chunk = np.asarray(chunk, dtype=np.float64)
            if check and epoch == 1 and not np.isfinite(chunk).all():
                _raise_non_finite(f" in chunk {i}")
            chunk = chunk[rng.permutation(chunk.shape[0])]
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


def start_seeds(random_state: int, n_init: int) -> list[int]:
    """Seeds of ``n_init`` starts: ``random_state`` itself first (nilearn's single start), then seeds
    derived from it (the same on every machine)."""
    derived = np.random.SeedSequence(int(random_state)).generate_state(max(n_init, 1))
    return [int(random_state)] + [int(s) for s in derived[1:n_init]]


def _check_judge_signals(signals: Any, n_voxels: int) -> None:
    """``signals`` is None or a (voxel, time) DataArray of ``n_voxels`` voxels, else InputError."""
    if signals is None:
        return
    if not isinstance(signals, xr.DataArray) or set(signals.dims) != {"voxel", "time"}:
        raise InputError(
            f"signals: expected an xarray.DataArray with dims ('voxel', 'time'), got "
            f"{type(signals).__name__} {getattr(signals, 'dims', '')}; pass the voxel signals the "
            "features were reduced from, or signals=None to judge the starts by inertia"
        )
    if signals.sizes["voxel"] != n_voxels:
        raise InputError(
            f"signals: {signals.sizes['voxel']} voxels but the features have {n_voxels} rows; pass "
            "the signals of the same voxels, in the same order"
        )


def select_start(
    labelings: Sequence[np.ndarray],
    signals: xr.DataArray | None,
    *,
    inertias: Sequence[float] | None = None,
) -> int:
    """Index of the best of several labelings of the same voxels.

    Parameters
    ----------
    labelings : sequence of numpy.ndarray
        Cluster indices ``0..K-1`` of every voxel, one array per start.
    signals : xarray.DataArray, dims ("voxel", "time"), or None
        With signals, the best start has the highest compression R^2
        (:func:`daskparcel.metrics.compression_r2`), all computed in one streaming read of the signals;
        ties go to the earlier start.
    inertias : sequence of float, optional
        Without signals, the best start has the lowest inertia.

    Returns
    -------
    int
        Index of the kept start (0 with a single labeling).
    """
    if len(labelings) <= 1:
        return 0
    if signals is None:
        if inertias is None:
            return 0
        best = int(np.argmin(inertias))
        logger.info("%d starts judged by inertia: kept start %d", len(labelings), best)
        return best
    from daskparcel.metrics import compression_r2

    k = max(int(np.max(labels)) + 1 for labels in labelings)
    lazy = [
        compression_r2(signals, np.asarray(labels) + 1, n_parcels=k, compute=False)
        for labels in labelings
    ]
    scores = [float(score) for score in dask.compute(*lazy)]
    best = int(np.argmax(scores))
    logger.info(
        "%d starts judged by compression R^2 (%s): kept start %d",
        len(labelings),
        ", ".join(f"{score:.4f}" for score in scores),
        best,
    )
    return best


# ---------------------------------------------------------------------------------------------
# public


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
    x = _as_features(features)
    n_voxels = x.shape[0]
    k = _check_n_clusters(n_clusters, n_voxels)
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
    n_init = _check_int("n_init", n_init, 1, "pass n_init=1 (nilearn's single start) or more")
    mbk_n_init = _check_int("mbk_n_init", mbk_n_init, 1, "pass mbk_n_init=3 (nilearn's)")
    batch_size = _check_int("batch_size", batch_size, 1, "pass batch_size=1024")
    if max_iter is not None:
        max_iter = _check_int("max_iter", max_iter, 1, "pass max_iter=None for the default")
    if tol is not None and (not isinstance(tol, numbers.Real) or not tol >= 0):
        raise InputError(f"tol={tol!r}: must be a number >= 0; pass tol=None for the default")
    _check_judge_signals(signals, n_voxels)
    seeds = start_seeds(int(random_state), n_init)

    starts: list[dict[str, Any]] = []
    if method == "minibatch":
        limit = int(dask.config.get("daskparcel.kmeans.in-memory-bytes", _IN_MEMORY_BYTES_DEFAULT))
        if x.nbytes <= limit:
            logger.debug("minibatch kmeans in memory (%d bytes <= %d)", x.nbytes, limit)
            arr = np.asarray(x.compute())
            if not np.isfinite(arr).all():
                _raise_non_finite("")
            shared = dask.delayed(arr, pure=True)  # one copy of the features for every start
            runs = dask.compute(
                *[
                    dask.delayed(_minibatch_in_memory, pure=True)(
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
            x = da.from_array(arr, chunks=(_default_rows(arr.shape), -1))
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
            labels, moved = _reseed_empty(labels, d2, k)
            final = _finalize(x, labels, k)
            starts.append({"final": final, "labels": labels, "n_iter": n_iter, "moved": moved.size})
    else:
        first = _finalize(x, np.zeros(n_voxels, dtype=np.int64), 1, check=True)
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
            labels, moved = _reseed_empty(labels, d2, k)
            final = _finalize(x, labels, k)
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
        _raise_non_finite("")
    return KMeansResult(
        labels=labels,
        centers=final["centers"],
        inertia=float(final["inertia"]),
        n_iter=int(n_iter),
        n_reseeded=int(n_reseeded),
    )
