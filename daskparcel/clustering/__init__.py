"""The clustering methods, registered once: ``METHODS`` maps a method name to what runs it.

A method is either a *partition* (``labels(job)`` gives labels 0..K-1 of the mask's voxels) or a *tree*
(``tree(job)`` gives a :class:`~daskparcel.clustering.agglomerative.MergeTree`; the estimator keeps it in the
signals store and cuts it at K, so another K is a cut, not a refit). The estimator, the CLI's choices, the
docs and the tests all read this mapping: a new method is its module plus one entry here (and its test).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import dask
import numpy as np

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from daskparcel.clustering.agglomerative import MergeTree


@dataclass(frozen=True)
class ClusterJob:
    """What a method may use: the features, K, the mask (its lattice), the seed and the method's options."""

    features: np.ndarray  # (voxel, component), voxels in the mask's np.nonzero order
    n_clusters: int
    mask: np.ndarray  # (x, y, z) bool
    random_state: int = 0
    options: Mapping[str, Any] = field(default_factory=dict)
    connectivity: Any = None  # a voxel x voxel graph replacing the mask's lattice, or None
    signals: Any = None  # the cleaned voxel signals (voxel, time), lazy: to judge starts by R^2
    #: A non-lattice geometry (a SurfaceGeometry: mesh edges), whose graph replaces the mask's lattice.
    geometry: Any = None


@dataclass(frozen=True)
class Method:
    """A registered clustering method."""

    name: str
    summary: str
    labels: Callable[[ClusterJob], np.ndarray] | None = None
    tree: Callable[[ClusterJob], MergeTree] | None = None
    #: The estimator options this method reads from ``ClusterJob.options``.
    options: tuple[str, ...] = ()
    #: Whether the method clusters the features weighted by the signal they carry (``weighting``).
    weighted: bool = False

    @property
    def is_tree(self) -> bool:
        return self.tree is not None


def _kmeans(job: ClusterJob) -> np.ndarray:
    from daskparcel.clustering.kmeans import kmeans

    method: Literal["minibatch", "lloyd"] = (
        "lloyd" if job.options.get("kmeans_method") == "lloyd" else "minibatch"
    )
    n_init = int(job.options.get("n_init", 1))
    return kmeans(
        job.features, job.n_clusters, method=method, random_state=job.random_state, n_init=n_init,
        signals=job.signals if n_init > 1 else None, refine=True,
    ).labels  # fmt: skip


def _hierarchical_kmeans(job: ClusterJob) -> np.ndarray:
    from daskparcel.clustering.hierarchical_kmeans import hierarchical_kmeans

    n_init = int(job.options.get("n_init", 1))
    signals = job.signals if n_init > 1 else None
    return np.asarray(
        hierarchical_kmeans(
            job.features,
            job.n_clusters,
            random_state=job.random_state,
            n_init=n_init,
            signals=signals,
        )
    )


def _rena(job: ClusterJob) -> np.ndarray:
    from daskparcel.clustering.rena import auto_block_shape, rena

    if job.geometry is not None:
        from daskparcel.geometry.clustering import rena_on_graph

        return rena_on_graph(
            job.features, job.n_clusters, job.geometry, n_iter=int(job.options.get("n_iter", 10))
        )
    return rena(
        job.features, job.n_clusters, mask=job.mask, n_iter=int(job.options.get("n_iter", 10)),
        block_shape=auto_block_shape(job.mask),
    )  # fmt: skip


def _agglomerative_tree(linkage: str) -> Callable[[ClusterJob], MergeTree]:
    def build(job: ClusterJob) -> MergeTree:
        from daskparcel.clustering.agglomerative import build_tree
        from daskparcel.clustering.connectivity import check_connectivity, grid_connectivity

        n_voxels = int(job.mask.sum())
        if job.connectivity is not None:
            conn = check_connectivity(job.connectivity, n_voxels)
        elif job.geometry is not None:
            conn = job.geometry.connectivity()
        else:
            conn = grid_connectivity(job.mask)
        return build_tree(job.features, conn, linkage=linkage)

    return build


METHODS: dict[str, Method] = {
    "kmeans": Method(
        "kmeans",
        "mini-batch KMeans of the voxels' reduced time courses (nilearn's), finished by Lloyd iterations",
        labels=_kmeans,
        options=("kmeans_method", "n_init"),
        weighted=True,
    ),
    "hierarchical_kmeans": Method(
        "hierarchical_kmeans",
        "two-level KMeans: sqrt(K) coarse clusters, each split in proportion to its size",
        labels=_hierarchical_kmeans,
        options=("n_init",),
        weighted=True,
    ),
    "ward": Method(
        "ward",
        "Ward agglomeration on the mask's 6-neighbour lattice (connected parcels)",
        tree=_agglomerative_tree("ward"),
    ),
    "complete": Method(
        "complete",
        "complete-linkage agglomeration on the lattice (connected parcels)",
        tree=_agglomerative_tree("complete"),
    ),
    "average": Method(
        "average",
        "average-linkage agglomeration on the lattice (connected parcels)",
        tree=_agglomerative_tree("average"),
    ),
    "rena": Method(
        "rena",
        "recursive nearest-neighbour agglomeration, blockwise (connected parcels)",
        labels=_rena,
        options=("n_iter",),
    ),
}


class Cache(Protocol):
    """Where derived features and trees are kept between fits (the signals store)."""

    def derived(self, name: str, compute: Callable[[], np.ndarray]) -> np.ndarray: ...

    def cached_arrays(self, name: str) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None: ...

    def write_arrays(self, name: str, arrays: dict[str, np.ndarray], **attrs: Any) -> None: ...


def run_method(
    method: Method, job: ClusterJob, *, cache: Cache | None = None, key: str = "reduced/features"
) -> tuple[np.ndarray, MergeTree | None]:
    """Labels 0..K-1 of the mask's voxels by ``method``, and its merge tree (None for partitions).

    ``key`` names the features in ``cache`` (``reduced/c<k>-r<seed>``). A weighted method clusters the
    features weighted by their signal, by the scatter ``<key>-scatter`` of the cache (the reduction's when it
    left one, else one read of the signals, kept there), unless ``job.options["weighting"]`` is False. A tree
    method's tree is read from ``cache`` (group ``trees/...-<method>[-<graph token>]``) when it is there, else
    built and kept there; either way it is cut at ``job.n_clusters``.
    """
    if method.weighted and job.options.get("weighting", True) and job.signals is not None:
        from daskparcel.clustering.weights import weighted

        job = dataclasses.replace(job, features=weighted(cache, key, job.features, job.signals))
    if method.tree is None:
        assert method.labels is not None
        # CIFTI: each structure on its own, with its share of K
        split = getattr(job.geometry, "partition_by_structure", None)
        labels = split(method, job) if split is not None else method.labels(job)
        return _exactly_k(np.asarray(labels), job.n_clusters, method.name), None
    from daskparcel.clustering.agglomerative import MergeTree

    name = f"{key.replace('reduced/', 'trees/')}-{method.name}"
    if job.connectivity is not None:
        conn = job.connectivity
        name += "-" + dask.base.tokenize(
            getattr(conn, "indptr", conn), getattr(conn, "indices", None)
        )
    # CIFTI: the meshes are not in the run's identity (nor in the store's), so the tree is kept per graph
    graph_token = getattr(job.geometry, "graph_token", None)
    if graph_token is not None:
        name += "-" + graph_token()
    cached = cache.cached_arrays(name) if cache is not None else None
    if cached is not None:
        logger.info("%s tree reused from %s: cut at %d parcels", method.name, name, job.n_clusters)
        tree = MergeTree.from_arrays(*cached)
    else:
        tree = method.tree(job)
        if cache is not None:
            arrays, attrs = tree.to_arrays()
            cache.write_arrays(name, arrays, **attrs)
    return _exactly_k(np.asarray(tree.cut(job.n_clusters)), job.n_clusters, method.name), tree


def _exactly_k(labels: np.ndarray, k: int, name: str) -> np.ndarray:
    """The registry's contract: labels 0..K-1, every one used (a RuntimeError otherwise: a bug)."""
    labels = np.asarray(labels, dtype=np.int64)
    found = np.unique(labels)
    if len(found) != k or found[0] != 0 or found[-1] != k - 1:
        raise RuntimeError(f"{name} gave {len(found)} clusters instead of {k}: please report this")
    return labels


__all__ = ["METHODS", "Cache", "ClusterJob", "Method", "run_method"]
