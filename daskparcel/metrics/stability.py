"""Stability and the choice of K: refits on resampled data, their agreement and their held-out accuracy.

Thirion et al. (2014, "Which fMRI clustering gives good brain parcellations?") choose the number of parcels
from two curves against K: the *reproducibility* of the parcellation across resamplings of the data (the
adjusted Rand index, ARI, and adjusted mutual information, AMI, of the labels of every pair of samples) and
its *accuracy* on the data left out of each sample (here the compression R^2 of the held-out signals, or
their homogeneity). :func:`stability` computes both, for one or several K:

* a cohort (runs of two or more subjects) is resampled by **bootstrap of subjects**: each sample draws the
  subjects with replacement (all runs of a drawn subject come along, twice if drawn twice); the subjects not
  drawn are held out;
* one subject is resampled by **split halves of time**: each run's time axis is cut into ``n_blocks``
  contiguous blocks and each sample fits a random half of them; the other half is held out.

The preprocessing is done once: the runs are masked, smoothed and cleaned into one signals store (by fitting
the estimator, whose store is then shared), and every sample reads its runs or time blocks from it. Each
sample's reduction is kept in the store (``stability/<sample>``), its clustering is a dask task (the samples'
clusterings run in parallel), and ward / complete / average build one merge tree per sample, kept in the store
too, cut at every K: no refit per K. The held-out accuracies of every (sample, K) and the pairwise ARI / AMI are
computed together in one more pass.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Any

import dask
import numpy as np
import pandas as pd
import xarray as xr

from daskparcel._checks import check_int, check_n_clusters
from daskparcel.errors import InputError

if TYPE_CHECKING:
    from daskparcel.estimator import Parcellations
    from daskparcel.store.signals import SignalsStore

logger = logging.getLogger(__name__)

__all__ = ["ACCURACIES", "RESAMPLINGS", "Sample", "check_stability_args", "stability"]

RESAMPLINGS = ("auto", "bootstrap", "split-half")
ACCURACIES = ("r2", "homogeneity")

#: The columns of the table :func:`stability` returns.
COLUMNS = (
    "n_parcels",
    "ari_mean",
    "ari_sd",
    "ami_mean",
    "ami_sd",
    "accuracy_mean",
    "accuracy_sd",
    "n_samples",
)


@dataclass(frozen=True)
class Sample:
    """One resampling of the signals store: what is fitted and what is held out.

    ``fit`` and ``held_out`` list ``(run index, time indices or None)``: a whole run (None), or some of its
    volumes; a run drawn twice by the bootstrap is listed twice in ``fit``.
    """

    fit: tuple[tuple[int, tuple[int, ...] | None], ...]
    held_out: tuple[tuple[int, tuple[int, ...] | None], ...]

    def describe(self, runs: Sequence[str]) -> dict[str, Any]:
        """The sample as a JSON-ready record (run names; time blocks as volume counts)."""

        def part(item: tuple[int, tuple[int, ...] | None]) -> Any:
            run, idx = item
            return runs[run] if idx is None else {"run": runs[run], "volumes": len(idx)}

        return {"fit": [part(p) for p in self.fit], "held_out": [part(p) for p in self.held_out]}


def check_stability_args(
    n_parcels: int | Sequence[int],
    n_samples: int,
    resampling: str = "auto",
    n_blocks: int = 10,
    accuracy: str = "r2",
) -> list[int]:
    """Check the arguments of :func:`stability` (before any data is read); the sorted distinct K.

    Raises
    ------
    InputError
        A K below 2, fewer than 2 samples, an unknown resampling or accuracy, fewer than 2 time blocks.
    """
    values = [n_parcels] if isinstance(n_parcels, int | np.integer) else list(n_parcels)
    if not values:
        raise InputError(
            "n_parcels: no value given; pass one or more numbers of parcels, e.g. 50 100 200"
        )
    ks = sorted(
        {check_int("n_parcels", k, 2, "stability compares partitions: give K >= 2") for k in values}
    )
    check_int("n_samples", n_samples, 2, "pairwise agreement needs at least 2 samples, e.g. 8")
    if resampling not in RESAMPLINGS:
        raise InputError(
            f"resampling={resampling!r}: unknown; pass one of {', '.join(RESAMPLINGS)}"
        )
    check_int("n_blocks", n_blocks, 2, "split halves need at least 2 time blocks, e.g. 10")
    if accuracy not in ACCURACIES:
        raise InputError(f"accuracy={accuracy!r}: unknown; pass one of {', '.join(ACCURACIES)}")
    return ks


def subject_groups(subjects: Sequence[str]) -> list[list[int]]:
    """The run indices of each subject, subjects in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for index, subject in enumerate(subjects):
        groups.setdefault(subject, []).append(index)
    return list(groups.values())


def choose_resampling(resampling: str, subjects: Sequence[str]) -> str:
    """``bootstrap`` for runs of two or more subjects, ``split-half`` for one (with ``auto``); an InputError
    for a bootstrap of one subject."""
    n_subjects = len(subject_groups(subjects))
    if resampling == "auto":
        return "bootstrap" if n_subjects >= 2 else "split-half"
    if resampling == "bootstrap" and n_subjects < 2:
        raise InputError(
            f"resampling='bootstrap': the runs are of {n_subjects} subject, and a bootstrap of subjects needs "
            "at least 2; pass resampling='split-half' (--resampling split-half) for one subject"
        )
    return resampling


def draw_samples(
    resampling: str,
    subjects: Sequence[str],
    n_time: Sequence[int],
    n_samples: int,
    n_blocks: int,
    random_state: int,
) -> list[Sample]:
    """The ``n_samples`` resamplings of the runs (deterministic for a ``random_state``).

    Bootstrap: subjects drawn with replacement, redrawn when none is left out (every sample has a held-out
    subject). Split-half: each run's volumes cut into ``n_blocks`` contiguous blocks, half of them (rounded
    down) fitted, the others held out.
    """
    rng = np.random.default_rng(random_state)
    samples = []
    if resampling == "bootstrap":
        groups = subject_groups(subjects)
        n = len(groups)
        for _ in range(n_samples):
            for _attempt in range(1000):
                drawn = np.sort(rng.choice(n, size=n, replace=True))
                if len(np.unique(drawn)) < n:
                    break
            left = sorted(set(range(n)) - set(drawn.tolist()))
            fit = tuple((run, None) for g in drawn for run in groups[g])
            held = tuple((run, None) for g in left for run in groups[g])
            samples.append(Sample(fit, held))
        return samples
    short = [i for i, t in enumerate(n_time) if t < n_blocks]
    if short:
        raise InputError(
            f"n_blocks={n_blocks}: run {short[0]} has {n_time[short[0]]} volumes, fewer than the blocks to "
            "cut it into; pass a smaller n_blocks (--n-blocks)"
        )
    for _ in range(n_samples):
        fit_parts, held_parts = [], []
        for run, t in enumerate(n_time):
            blocks = np.array_split(np.arange(t), n_blocks)
            chosen = set(rng.choice(n_blocks, size=n_blocks // 2, replace=False).tolist())
            fit_idx = np.concatenate([b for i, b in enumerate(blocks) if i in chosen])
            held_idx = np.concatenate([b for i, b in enumerate(blocks) if i not in chosen])
            fit_parts.append((run, tuple(int(v) for v in fit_idx)))
            held_parts.append((run, tuple(int(v) for v in held_idx)))
        samples.append(Sample(tuple(fit_parts), tuple(held_parts)))
    return samples


def _parts(
    signals: Sequence[xr.DataArray], parts: Sequence[tuple[int, tuple[int, ...] | None]]
) -> list[xr.DataArray]:
    """The (voxel, time) signals of a sample's parts, lazily (runs from the store, volumes selected)."""
    return [
        signals[run] if idx is None else signals[run].isel(time=list(idx)) for run, idx in parts
    ]


def _sample_features(
    store: SignalsStore, est: Parcellations, sample: Sample, signals: list[xr.DataArray]
) -> tuple[str, str]:
    """The reduction of a sample's fitted parts, written to the store (``stability/<token>``) and weighted as
    the estimator's method clusters them (``stability/<token>-weighted``): the sample's key and the group of
    the features to cluster (the clustering task reads them from there: no array travels in the graph)."""
    from daskparcel.clustering import METHODS
    from daskparcel.reduction import reduce_runs

    token = dask.base.tokenize(
        store.path.name, sample.fit, int(est.n_components), int(est.random_state)
    )
    name = f"stability/{token}"
    parts = _parts(signals, sample.fit)
    reduce = partial(
        reduce_runs, n_components=int(est.n_components), random_state=int(est.random_state)
    )
    features = store.reduced(name, lambda: parts, reduce)
    if not (METHODS[str(est.method)].weighted and est.weighting):
        return name, name
    from daskparcel.clustering.weights import weighted

    joined = xr.concat(parts, dim="time") if len(parts) > 1 else parts[0]
    # kept in the store: the clustering tasks read them from there
    store.derived(name + "-weighted", lambda: weighted(store, name, features, joined))
    return name, name + "-weighted"


@dataclass(frozen=True)
class ClusterSpec:
    """What a sample's clustering task needs of the estimator (not the estimator: no fitted arrays, no
    client travel with the tasks)."""

    method: str
    options: dict[str, Any]
    random_state: int
    connectivity: Any = None
    geometry: Any = (
        None  # a fitted surface / CIFTI geometry: its mesh edges and structures, as the fit's
    )

    @classmethod
    def of(cls, est: Parcellations) -> ClusterSpec:
        from daskparcel.clustering import METHODS

        options = {name: getattr(est, name) for name in METHODS[str(est.method)].options}
        options["weighting"] = False  # the features are weighted already
        geometry = getattr(est, "geometry_", None)
        return cls(str(est.method), options, int(est.random_state), est.connectivity, geometry)


def _sample_labels(
    spec: ClusterSpec, store: SignalsStore, features_group: str, key: str, ks: Sequence[int]
) -> dict[int, np.ndarray]:
    """Labels 0..K-1 of a sample for every K: a tree method's tree (built once, kept in the store under
    ``key``) cut at each K; a partition method run at each K. Runs as one dask task, reading the sample's
    features from the store."""
    import zarr

    from daskparcel.clustering import METHODS, ClusterJob, run_method
    from daskparcel.store.runs import quiet_zarr

    with quiet_zarr():
        features = np.asarray(
            zarr.open_array(str(store.path), path=features_group, mode="r", zarr_format=3)[...]
        )
    method = METHODS[spec.method]
    job = ClusterJob(
        features,
        int(ks[0]),
        store.mask,
        spec.random_state,
        spec.options,
        spec.connectivity,
        None,  # no signals: the features are weighted already
        spec.geometry,
    )
    labels, tree = run_method(method, job, cache=store, key=key)
    out = {int(ks[0]): labels}
    for k in ks[1:]:
        if tree is not None:
            out[int(k)] = np.asarray(tree.cut(int(k)), dtype=np.int64)
        else:
            out[int(k)] = run_method(method, replace(job, n_clusters=int(k)))[0]
    return out


def _accuracy(held_out: list[xr.DataArray], labels: np.ndarray, k: int, accuracy: str) -> list[Any]:
    """Lazy accuracy terms of one (sample, K): per held-out part, its compression R^2 or homogeneity."""
    from daskparcel.metrics.signals import compression_r2, homogeneity

    codes = labels + 1
    if accuracy == "r2":
        return [compression_r2(p, codes, n_parcels=k, compute=False) for p in held_out]
    return [homogeneity(p, codes, n_parcels=k, run=None, compute=False) for p in held_out]


def _pair_scores(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score

    return float(adjusted_rand_score(a, b)), float(adjusted_mutual_info_score(a, b))


def _sd(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.std(finite, ddof=1)) if len(finite) > 1 else float("nan")


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def stability(
    estimator: Parcellations,
    imgs: Any,
    n_parcels: int | Sequence[int],
    *,
    n_samples: int = 8,
    resampling: str = "auto",
    n_blocks: int = 10,
    accuracy: str = "r2",
    random_state: int = 0,
    confounds: Any = None,
) -> pd.DataFrame:
    """Reproducibility (pairwise ARI / AMI) and held-out accuracy of a parcellation method, for each K.

    Parameters
    ----------
    estimator : Parcellations
        The method and its preprocessing parameters (cloned; ``n_parcels`` is replaced by each K). It is fitted
        once on all of ``imgs`` (with the smallest K) to make the signals store the samples share: give it a
        ``store`` folder to reuse a store already written by a fit of the same runs.
    imgs : path, glob, list of runs, store, BIDS folder
        The runs, as ``Parcellations.fit`` takes them.
    n_parcels : int or sequence of int
        The numbers of parcels K to compare (each >= 2).
    n_samples : int, default=8
        Resamplings B (>= 2); the agreement is averaged over the B (B - 1) / 2 pairs.
    resampling : {"auto", "bootstrap", "split-half"}, default="auto"
        Bootstrap of subjects (runs grouped by their subject; needs 2 subjects or more) or random halves of
        each run's time blocks; ``auto``: bootstrap when the runs are of 2 subjects or more.
    n_blocks : int, default=10
        Split-half: contiguous time blocks each run is cut into (half fitted, half held out, per sample).
    accuracy : {"r2", "homogeneity"}, default="r2"
        The held-out accuracy: compression R^2 of the held-out signals by the sample's parcels (per held-out
        run or time half, averaged), or their homogeneity.
    random_state : int, default=0
        Seed of the resampling (the estimator's own ``random_state`` seeds each refit).
    confounds : optional
        As ``Parcellations.fit``.

    Returns
    -------
    pandas.DataFrame
        One row per K, columns :data:`COLUMNS` (means and sample standard deviations over the pairs, for ARI
        and AMI, and over the samples, for the accuracy); ``attrs`` holds the method, the resampling, the
        accuracy measure, the runs and the samples.

    Raises
    ------
    InputError
        Bad arguments (before any data is read), a bootstrap of one subject, or the estimator's own errors.
    """
    from sklearn.base import clone

    ks = check_stability_args(n_parcels, n_samples, resampling, n_blocks, accuracy)
    check_int("random_state", random_state, 0)
    est = clone(estimator).set_params(n_parcels=ks[0], distance_threshold=None)
    est._validate_params()
    from daskparcel.ingest.resolve import resolve_runs

    runs = resolve_runs(imgs, chunk_volumes=est.chunk_volumes)
    chosen = choose_resampling(resampling, [r.subject for r in runs])
    est.fit(imgs, confounds=confounds)
    store = est.store_
    assert store is not None
    check_n_clusters(ks[-1], store.n_voxels, "n_parcels")
    signals = store.run_signals("cleaned")
    n_time = [s.sizes["time"] for s in signals]
    samples = draw_samples(chosen, store.subjects, n_time, n_samples, n_blocks, random_state)
    logger.info(
        "stability of %s at K=%s: %d %s samples of %d run(s)",
        est.method, ks, n_samples, chosen, len(store.runs),
    )  # fmt: skip

    from daskparcel.runtime import connect

    with connect(est.client):
        spec, tasks = ClusterSpec.of(est), []
        for sample in samples:  # each reduction is its own graph over the store (parallel inside)
            key, group = _sample_features(store, est, sample, signals)
            label = dask.delayed(_sample_labels, pure=False)
            tasks.append(label(spec, store, group, key, ks, dask_key_name=f"labels-{key}"))
        labels: list[dict[int, np.ndarray]] = list(
            dask.compute(*tasks)
        )  # the clusterings, in parallel
        held = [_parts(signals, s.held_out) for s in samples]
        acc = {
            (b, k): _accuracy(held[b], labels[b][k], k, accuracy)
            for b in range(n_samples)
            for k in ks
        }
        pairs = [(a, b) for a in range(n_samples) for b in range(a + 1, n_samples)]
        scores = {
            (k, a, b): dask.delayed(_pair_scores, pure=False)(labels[a][k], labels[b][k])
            for k in ks
            for a, b in pairs
        }
        acc_values, score_values = dask.compute(acc, scores)
    rows = []
    for k in ks:
        ari = [score_values[(k, a, b)][0] for a, b in pairs]
        ami = [score_values[(k, a, b)][1] for a, b in pairs]
        per_sample = [_mean([float(v) for v in acc_values[(b, k)]]) for b in range(n_samples)]
        rows.append(
            (
                k,
                _mean(ari),
                _sd(ari),
                _mean(ami),
                _sd(ami),
                _mean(per_sample),
                _sd(per_sample),
                n_samples,
            )
        )
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    table.attrs.update(
        method=str(est.method),
        resampling=chosen,
        accuracy=accuracy,
        n_blocks=n_blocks if chosen == "split-half" else None,
        random_state=int(random_state),
        runs=list(store.runs),
        subjects=list(store.subjects),
        samples=[s.describe(store.runs) for s in samples],
        signals_store=str(store.path),
    )
    return table
