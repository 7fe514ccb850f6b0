"""A run's geometry: what the pipeline asks about space when it is not a voxel grid.

Volume runs have no geometry object (``RunInput.geometry``, ``ClusterJob.geometry`` and
``Parcellations.geometry_`` are None): their mask's 6-neighbour lattice, Gaussian smoothing and NIfTI images are
the pipeline's defaults, unchanged. A :class:`~daskparcel.geometry.surface.SurfaceGeometry` (a mesh per
hemisphere and a vertex mask) answers instead: its edges (mesh edges), its components (at least one per
hemisphere), its smoothing (refused) and its images (nilearn ``SurfaceImage`` s). Both give the elements of the
signals store in the same order (``np.flatnonzero`` of the mask), so everything between the signals pass and the
labels (cleaning, reduction, clustering, metrics) works on (element, time) without knowing which it is.

A geometry that holds several structures (CIFTI: two hemispheres and subcortical voxel sets) is one more class
with the same methods (:class:`~daskparcel.geometry.cifti.CiftiGeometry`), whose ``edges`` join elements within a structure only (mesh edges for the cortex, the
6-neighbour lattice within each subcortical structure): its ``components`` then give one component (at least) per
structure, and K is shared among them in proportion as for a mask with several components, so no parcel spans
two structures.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from daskparcel.geometry.cifti import CiftiGeometry
from daskparcel.geometry.surface import SurfaceGeometry

__all__ = ["CiftiGeometry", "SurfaceGeometry", "edges_connectivity"]


def edges_connectivity(rows: np.ndarray, cols: np.ndarray, n: int) -> sp.csr_matrix:
    """A symmetric 0/1 graph of ``n`` nodes from undirected edges, with the diagonal set (as
    :func:`daskparcel.clustering.connectivity.grid_connectivity`)."""
    diag = np.arange(n, dtype=np.int64)
    r = np.concatenate([rows, cols, diag])
    c = np.concatenate([cols, rows, diag])
    conn = sp.csr_matrix((np.ones(len(r), dtype=int), (r, c)), shape=(n, n))
    conn.sum_duplicates()
    conn.data[:] = 1
    conn.sort_indices()
    return conn
