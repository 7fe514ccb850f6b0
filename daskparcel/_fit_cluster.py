"""The clustering step of ``Parcellations.fit``: the registered method on the store's features, cut at
``n_parcels`` or at a ``distance_threshold``, and the merge tree's scikit-learn attributes.

Kept apart from :mod:`daskparcel.estimator` (which holds the parameters and the orchestration) so that the
estimator stays one screenful of orchestration.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from daskparcel._checks import check_int, positive_or_none
from daskparcel.errors import InputError

if TYPE_CHECKING:
    from daskparcel.estimator import Parcellations
    from daskparcel.store.signals import SignalsStore

__all__ = ["check_k_or_threshold", "cluster", "k_or_none"]


def k_or_none(name: str, value: Any) -> None:
    """A number of parcels (an integer >= 1), or None (then ``distance_threshold`` is needed)."""
    if value is not None:
        check_int(name, value, 1, f"pass {name}=50 (nilearn's default) or another integer")


def check_k_or_threshold(params: dict[str, Any]) -> None:
    """``n_parcels`` or ``distance_threshold``, exactly one (as scikit-learn's ``n_clusters`` and
    ``distance_threshold``); the threshold only for the tree methods (ward, complete, average)."""
    from daskparcel.clustering import METHODS

    threshold = params.get("distance_threshold")
    positive_or_none("distance_threshold", threshold)
    if threshold is None:
        if params["n_parcels"] is None:
            raise InputError(
                "n_parcels=None: without distance_threshold the number of parcels is needed; pass "
                "n_parcels=50 (nilearn's default) or a distance_threshold (ward, complete, average)"
            )
        return
    if params["n_parcels"] is not None:
        raise InputError(
            f"n_parcels={params['n_parcels']!r} and distance_threshold={threshold!r}: give one of them; pass "
            "n_parcels=None to cut the tree at the distance threshold (as scikit-learn's AgglomerativeClustering)"
        )
    method = METHODS.get(str(params["method"]))
    if method is None or not method.is_tree:
        trees = ", ".join(name for name, m in METHODS.items() if m.is_tree)
        raise InputError(
            f"distance_threshold={threshold!r}: cuts a merge tree, and method={params['method']!r} has none; "
            f"pass method= one of {trees}, or n_parcels instead"
        )


def cluster(
    est: Parcellations,
    features: np.ndarray,
    mask: np.ndarray,
    store: SignalsStore,
    geometry: Any = None,
) -> np.ndarray:
    """Labels 0..K-1 over the mask's voxels by the estimator's method (trees kept in the store); sets
    ``tree_`` and, for the tree methods, ``children_`` / ``distances_`` (scikit-learn's names, leaves numbered
    as the mask's voxels in ``np.nonzero`` order, i.e. as ``labels_``)."""
    from daskparcel.clustering import METHODS, ClusterJob, run_method

    method = METHODS[str(est.method)]
    options = {name: getattr(est, name) for name in (*method.options, "weighting")}
    threshold = est.distance_threshold
    k = (
        int(mask.sum()) if threshold is not None else int(est.n_parcels)
    )  # a cut into voxels is free
    job = ClusterJob(
        features,
        k,
        mask,
        int(est.random_state),
        options,
        est.connectivity,
        store.signals("cleaned"),
        geometry,
    )
    key = store.features_group(est.n_components, est.random_state)
    labels, est.tree_ = run_method(method, job, cache=store, key=key)
    for name in ("children_", "distances_"):
        est.__dict__.pop(name, None)
    if est.tree_ is not None:
        est.children_, est.distances_ = est.tree_.children, est.tree_.distances
        if threshold is not None:
            labels = est.tree_.cut_at_distance(float(threshold))
    return labels
