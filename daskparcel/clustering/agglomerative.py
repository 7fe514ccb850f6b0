"""Spatially constrained agglomerative clustering (ward, complete, average), exact and compiled.

The merge loop is scikit-learn's (``ward_tree`` / ``linkage_tree`` with a connectivity), compiled with
numba. It keeps the same arithmetic (float64 moments, the same distance formulas, the same order of
operations) and a binary heap that follows CPython's ``heapq`` step by step, so that ties are broken as
scikit-learn breaks them: on the same features and connectivity the labels are identical to
``AgglomerativeClustering(linkage=..., connectivity=grid_to_graph(mask))``.

The merge tree is kept (:class:`MergeTree`): fits that differ only in the number of clusters cut the
same tree. When the connectivity has several connected components the tree is a forest (scikit-learn
would join the components with artificial edges and return disconnected parcels); :meth:`MergeTree.cut`
then splits the number of clusters among the components in proportion to their voxels, so that every
cluster is one connected region.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from daskparcel._checks import check_n_clusters
from daskparcel._log import serial_step
from daskparcel.clustering._common import features_array
from daskparcel.clustering._merge import cut, linkage_loop, merge_components, ward_loop
from daskparcel.clustering.connectivity import check_connectivity, components, grid_connectivity
from daskparcel.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["LINKAGES", "MergeTree", "agglomerate", "allocate_clusters", "build_tree"]

LINKAGES = ("ward", "complete", "average")
_LINKAGE_CODE = {"ward": 0, "complete": 1, "average": 2}


# --------------------------------------------------------------------------------------------------


def allocate_clusters(
    n_clusters: int, sizes: np.ndarray, *, name: str = "n_clusters"
) -> np.ndarray:
    """Split ``n_clusters`` among components in proportion to their sizes, at least one each.

    Largest-remainder rounding; ties go to the component listed first. No component gets more
    clusters than it has leaves (``sizes`` may be weighted voxel counts; see ``capacity`` below).

    Parameters
    ----------
    n_clusters : int
        Total number of clusters.
    sizes : ndarray of int, shape (n_components,)
        Voxels of each component.
    name : str
        Name of the input in error messages.

    Returns
    -------
    ndarray of int64, shape (n_components,)
        Clusters per component, summing to ``n_clusters``.
    """
    return allocate(n_clusters, np.asarray(sizes, dtype=np.float64), np.asarray(sizes), name)


def allocate(n_clusters: int, weight: np.ndarray, capacity: np.ndarray, name: str) -> np.ndarray:
    n_comp = len(weight)
    capacity = np.asarray(capacity, dtype=np.int64)
    if n_clusters < n_comp:
        raise InputError(
            f"{name}={n_clusters}: the mask (or connectivity) has {n_comp} separate connected components and every "
            f"parcel must be one connected region, so at least {n_comp} parcels are needed; pass "
            f"{name}>={n_comp} or a mask with fewer components"
        )
    if n_clusters > int(capacity.sum()):
        raise InputError(
            f"{name}={n_clusters}: larger than the {int(capacity.sum())} voxels (or super-voxels) "
            f"that can be clustered; pass {name}<={int(capacity.sum())}"
        )
    if n_comp == 1:
        return np.array([n_clusters], dtype=np.int64)
    exact = n_clusters * weight / weight.sum()
    alloc = np.clip(np.floor(exact).astype(np.int64), 1, capacity)
    while alloc.sum() != n_clusters:
        if alloc.sum() < n_clusters:
            room = alloc < capacity
            gap = np.where(room, exact - alloc, -np.inf)
            alloc[int(np.argmax(gap))] += 1
        else:
            room = alloc > 1
            gap = np.where(room, exact - alloc, np.inf)
            alloc[int(np.argmin(gap))] -= 1
    return alloc


@dataclass
class MergeTree:
    """A spatially constrained merge tree (a forest when the graph has several components).

    Attributes
    ----------
    children : ndarray of int64, shape (n_merges, 2)
        As scikit-learn's ``children_``: merge ``m`` joins ``children[m]`` into node ``n_leaves + m``.
    distances : ndarray of float64, shape (n_merges,)
        As scikit-learn's ``distances_`` (ward: ``sqrt(2 * inertia increase)``).
    n_leaves : int
        Number of leaves (voxels or super-voxels).
    linkage : str
        "ward", "complete" or "average".
    component_labels : ndarray of int64, shape (n_leaves,)
        Connected component of each leaf.
    component_weights : ndarray of float64, shape (n_components,)
        Size of each component used to split the clusters (voxels, or summed leaf weights).
    merge_component : ndarray of int64, shape (n_merges,)
        Component of each merge.
    """

    children: np.ndarray
    distances: np.ndarray
    n_leaves: int
    linkage: str
    component_labels: np.ndarray
    component_weights: np.ndarray
    merge_component: np.ndarray = field(repr=False)

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The tree as arrays and attributes (to keep it in a store); :meth:`from_arrays` reads it back."""
        arrays = {
            "children": self.children,
            "distances": self.distances,
            "component_labels": self.component_labels,
            "component_weights": self.component_weights,
            "merge_component": self.merge_component,
        }
        return arrays, {"n_leaves": int(self.n_leaves), "linkage": self.linkage}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> MergeTree:
        """The tree kept by :meth:`to_arrays`."""
        return cls(
            children=arrays["children"],
            distances=arrays["distances"],
            n_leaves=int(attrs["n_leaves"]),
            linkage=str(attrs["linkage"]),
            component_labels=arrays["component_labels"],
            component_weights=arrays["component_weights"],
            merge_component=arrays["merge_component"],
        )

    @property
    def n_components(self) -> int:
        """Number of connected components (trees of the forest)."""
        return len(self.component_weights)

    def allocation(self, n_clusters: int) -> np.ndarray:
        """Clusters per component for a cut into ``n_clusters`` (proportional to their size)."""
        leaves = np.bincount(self.component_labels, minlength=self.n_components)
        return allocate(n_clusters, self.component_weights, leaves, "n_clusters")

    def cut(self, n_clusters: int) -> np.ndarray:
        """Labels 0..n_clusters-1 of the leaves: the partition after the first merges.

        Parameters
        ----------
        n_clusters : int
            Number of clusters, at least the number of components and at most ``n_leaves``.

        Returns
        -------
        ndarray of int64, shape (n_leaves,)
            Exactly ``n_clusters`` distinct labels, numbered by first appearance in leaf order.
        """
        n_clusters = check_n_clusters(n_clusters, self.n_leaves)
        alloc = self.allocation(n_clusters)
        leaves = np.bincount(self.component_labels, minlength=self.n_components)
        if self.n_components > 1:
            logger.info(
                "the connectivity has %d separate components: %d clusters split among them in "
                "proportion to their size (%s) so that every cluster is connected",
                self.n_components,
                n_clusters,
                ", ".join(str(int(a)) for a in alloc),
            )
        labels = cut(
            self.children, self.n_leaves, self.merge_component, (leaves - alloc).astype(np.int64)
        )
        return np.asarray(labels)

    def cut_at_distance(self, distance_threshold: float) -> np.ndarray:
        """Labels of the leaves when no merge at or above ``distance_threshold`` is made (scikit-learn's
        ``AgglomerativeClustering(n_clusters=None, distance_threshold=...)``).

        As scikit-learn, the number of clusters of a tree is one plus its merges with a distance
        ``>= distance_threshold``, and the tree is cut there (its last merges undone); each tree of a forest
        is cut so.

        Parameters
        ----------
        distance_threshold : float
            The linkage distance (as :attr:`distances`) at or above which clusters are not merged.

        Returns
        -------
        ndarray of int64, shape (n_leaves,)
            Labels 0..K-1 (K found from the threshold), numbered by first appearance in leaf order.
        """
        n_comp = self.n_components
        above = np.bincount(
            self.merge_component[self.distances >= distance_threshold], minlength=n_comp
        )
        leaves = np.bincount(self.component_labels, minlength=n_comp)
        keep = (leaves - 1 - above).astype(np.int64)
        return np.asarray(cut(self.children, self.n_leaves, self.merge_component, keep))


def _check_linkage(linkage: Any) -> str:
    if linkage not in LINKAGES:
        raise InputError(
            f"linkage={linkage!r}: unknown linkage; pass one of {', '.join(repr(k) for k in LINKAGES)}"
        )
    return str(linkage)


def _pairwise_row_distances(x: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Euclidean distance of rows ``x[rows]`` and ``x[cols]`` (scikit-learn's paired_distances)."""
    out = np.empty(len(rows), dtype=np.float64)
    step = max(1, 4_000_000 // max(1, x.shape[1]))
    for s in range(0, len(rows), step):
        d = x[rows[s : s + step]] - x[cols[s : s + step]]
        out[s : s + step] = np.sqrt(np.einsum("ij,ij->i", d, d))
    return out


def build_tree(
    features: Any,
    connectivity: Any,
    linkage: str = "ward",
    *,
    sample_weight: np.ndarray | None = None,
) -> MergeTree:
    """Build the full spatially constrained merge tree.

    Parameters
    ----------
    features : array-like, shape (n_voxels, n_components)
        One row per voxel (numpy, or dask / xarray, computed into memory).
    connectivity : scipy sparse matrix, shape (n_voxels, n_voxels)
        Neighbour pattern (e.g. :func:`~daskparcel.clustering.connectivity.grid_connectivity`).
    linkage : {"ward", "complete", "average"}
        Merge criterion, as scikit-learn's ``AgglomerativeClustering``.
    sample_weight : ndarray of float, shape (n_voxels,), optional
        Ward only: the weight (e.g. number of voxels) of each row, the row being the mean of its
        voxels. Ward's inertia is then the inertia of the underlying voxels.

    Returns
    -------
    MergeTree
        Identical to scikit-learn's tree (``children_``, ``distances_``) on a connected graph.

    Raises
    ------
    InputError
        Bad linkage name, connectivity of the wrong size, non-finite features.
    """
    linkage = _check_linkage(linkage)
    x = features_array(features)
    n = x.shape[0]
    conn = check_connectivity(connectivity, n)
    n_comp, comp = components(conn)
    indptr = conn.indptr.astype(np.int64)
    indices = conn.indices.astype(np.int64)
    if sample_weight is not None:
        if linkage != "ward":
            raise InputError(
                f"sample_weight: only supported with linkage='ward', not {linkage!r}; drop it"
            )
        w = np.asarray(sample_weight, dtype=np.float64)
        if w.shape != (n,) or not np.all(w > 0):
            raise InputError(
                f"sample_weight: expected {n} positive weights (one per row of features), got shape "
                f"{w.shape}; pass the number of voxels of each row"
            )
    else:
        w = np.ones(n)
    comp_weight = np.bincount(comp, weights=w, minlength=n_comp)
    if n == 1:
        children = np.empty((0, 2), dtype=np.int64)
        distances = np.empty(0)
    elif linkage == "ward":
        with serial_step(f"{linkage} merge loop"):
            children, inertia = ward_loop(indptr, indices, x.astype(np.float64, copy=False), w)
        distances = np.sqrt(2.0 * inertia)
    else:
        rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
        dist = _pairwise_row_distances(x, rows, indices).astype(x.dtype).astype(np.float64)
        with serial_step(f"{linkage} merge loop"):
            children, distances = linkage_loop(indptr, indices, dist, _LINKAGE_CODE[linkage])
    merge_comp = merge_components(np.asarray(children), comp)
    logger.debug("%s tree: %d leaves, %d merges, %d components", linkage, n, len(children), n_comp)
    return MergeTree(
        children=np.asarray(children),
        distances=np.asarray(distances),
        n_leaves=n,
        linkage=linkage,
        component_labels=comp,
        component_weights=comp_weight,
        merge_component=np.asarray(merge_comp, dtype=np.int64),
    )


def agglomerate(
    features: Any,
    n_clusters: int,
    *,
    mask: np.ndarray | None = None,
    connectivity: Any = None,
    linkage: str = "ward",
) -> np.ndarray:
    """Spatially constrained agglomerative clustering into exactly ``n_clusters`` connected parcels.

    Parameters
    ----------
    features : array-like, shape (n_voxels, n_components)
        One row per mask voxel in voxel order (numpy, dask or xarray; loaded into memory).
    n_clusters : int
        Number of parcels.
    mask : ndarray of bool, shape (x, y, z), optional
        The mask; its 6-neighbour lattice is the connectivity when ``connectivity`` is None.
    connectivity : scipy sparse matrix, optional
        A user connectivity (neighbour pattern) instead of the mask's lattice.
    linkage : {"ward", "complete", "average"}
        Merge criterion.

    Returns
    -------
    ndarray of int64, shape (n_voxels,)
        Labels 0..n_clusters-1. On a connected graph, identical (up to label names) to
        ``AgglomerativeClustering(n_clusters, linkage=linkage, connectivity=...)``.

    Raises
    ------
    InputError
        Neither/both of mask and connectivity, a mask that does not match the features, a bad
        linkage, or ``n_clusters`` out of range.
    """
    linkage = _check_linkage(linkage)
    x = features_array(features)
    n_voxels = x.shape[0]
    check_n_clusters(n_clusters, n_voxels)
    if connectivity is None:
        if mask is None:
            raise InputError(
                "mask/connectivity: neither was given; pass the brain mask (mask=...) or a "
                "connectivity matrix (connectivity=...)"
            )
        mask_arr = np.asarray(mask).astype(bool)
        if mask_arr.ndim != 3 or int(mask_arr.sum()) != n_voxels:
            raise InputError(
                f"mask: has {int(mask_arr.sum())} voxels (shape {mask_arr.shape}) but features have "
                f"{n_voxels} rows; pass the mask the features were extracted with"
            )
        connectivity = grid_connectivity(mask_arr)
    elif not sp.issparse(connectivity) and not isinstance(connectivity, np.ndarray):
        raise InputError(
            f"connectivity: expected a scipy.sparse matrix, got {type(connectivity).__name__}; "
            "pass e.g. grid_connectivity(mask)"
        )
    tree = build_tree(x, connectivity, linkage)
    return tree.cut(n_clusters)
