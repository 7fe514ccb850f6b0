"""ReNA on a geometry's graph (mesh edges) instead of a voxel lattice, one connected component at a time."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from daskparcel._checks import check_n_clusters
from daskparcel.clustering.agglomerative import allocate
from daskparcel.clustering.connectivity import components
from daskparcel.clustering.rena import rena_on_edges

logger = logging.getLogger(__name__)

__all__ = ["rena_on_graph"]


def rena_on_graph(
    features: Any, n_clusters: int, geometry: Any, *, n_iter: int = 10, threshold: float = 1e-7
) -> np.ndarray:
    """ReNA of the geometry's elements into exactly ``n_clusters`` parcels, each connected on its graph.

    Parameters
    ----------
    features : array-like, shape (n_elements, n_components)
    n_clusters : int
    geometry : SurfaceGeometry (or any object with ``edges()`` and ``connectivity()``)
    n_iter : int
        ReNA rounds (nilearn's 10).
    threshold : float
        nilearn's tolerance for nearest-neighbour ties.

    Returns
    -------
    ndarray of int64, shape (n_elements,)
        Labels 0..n_clusters-1; with several components (the hemispheres, islands of a mask) ReNA runs on each
        with a share of ``n_clusters`` proportional to its elements.
    """
    x = np.asarray(features)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    n = len(x)
    check_n_clusters(n_clusters, n)
    rows, cols = geometry.edges()
    n_comp, comp = components(geometry.connectivity())
    sizes = np.bincount(comp, minlength=n_comp)
    alloc = allocate(int(n_clusters), sizes.astype(np.float64), sizes, "n_parcels")
    if n_comp > 1:
        logger.info(
            "the geometry has %d separate components: ReNA runs on each with %s of the %d parcels "
            "(in proportion to their elements) so that every parcel is connected",
            n_comp,
            ", ".join(str(int(a)) for a in alloc),
            n_clusters,
        )
    labels = np.empty(n, dtype=np.int64)
    new_index = np.empty(n, dtype=np.int64)
    offset = 0
    for c in range(n_comp):
        ids = np.flatnonzero(comp == c)
        new_index[ids] = np.arange(len(ids))
        inside = comp[rows] == c
        sub_edges = (new_index[rows[inside]], new_index[cols[inside]])
        sub = rena_on_edges(x[ids], int(alloc[c]), sub_edges, n_iter=n_iter, threshold=threshold)
        labels[ids] = sub + offset
        offset += int(alloc[c])
    return labels
