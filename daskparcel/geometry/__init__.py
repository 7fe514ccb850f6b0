"""A run's geometry: what the pipeline asks about space (neighbours, components, smoothing, images).

Two geometries exist: :class:`VolumeGeometry` (a voxel grid and its mask: the 6-neighbour lattice, Gaussian
smoothing, NIfTI images) and :class:`~daskparcel.geometry.surface.SurfaceGeometry` (a mesh per hemisphere and a
vertex mask: mesh edges, no smoothing, nilearn ``SurfaceImage`` s). Both give the elements of the signals store in
the same order (``np.flatnonzero`` of the mask), so everything between the signals pass and the labels (cleaning,
reduction, clustering, metrics) works on (element, time) without knowing which it is.

A geometry that holds several structures (CIFTI: two hemispheres and subcortical voxel sets) is one whose
``edges`` join elements within a structure only: :func:`daskparcel.clustering.connectivity.components` then
finds one component (at least) per structure, and K is shared among them in proportion as for a mask with
several components, so no parcel spans two structures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from daskparcel.geometry.surface import SurfaceGeometry

__all__ = ["SurfaceGeometry", "VolumeGeometry", "edges_connectivity", "geometry_of"]


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


@dataclass(frozen=True)
class VolumeGeometry:
    """A voxel grid (affine) and its mask: the geometry of NIfTI runs, as the pipeline has always used it."""

    mask: np.ndarray  # (x, y, z) bool
    affine: np.ndarray

    kind = "volume"

    @property
    def n_elements(self) -> int:
        return int(self.mask.sum())

    def edges(self) -> tuple[np.ndarray, np.ndarray]:
        """The 6-neighbour lattice of the mask, each edge once, in voxel order."""
        from daskparcel.clustering.connectivity import grid_edges

        return grid_edges(self.mask)

    def connectivity(self) -> sp.csr_matrix:
        from daskparcel.clustering.connectivity import grid_connectivity

        return grid_connectivity(self.mask)

    def components(self) -> tuple[int, np.ndarray]:
        from daskparcel.clustering.connectivity import components

        return components(self.connectivity())


def geometry_of(runs: Any) -> SurfaceGeometry | None:
    """The surface geometry of ``runs`` (RunInputs), or None for volume runs (their geometry is their mask)."""
    return getattr(runs[0], "geometry", None) if runs else None
