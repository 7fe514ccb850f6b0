"""Spatial connectivity of a mask: the 6-neighbour lattice graph, user graphs, connected components.

Voxel order is the C order of the mask (``np.flatnonzero(mask)``), the same as nilearn's ``apply_mask``
and scikit-learn's ``grid_to_graph(mask=...)``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from daskparcel.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["check_connectivity", "components", "grid_connectivity", "grid_edges"]


def _check_mask(mask: Any, name: str = "mask") -> np.ndarray:
    arr = np.asarray(mask)
    if arr.ndim != 3:
        raise InputError(
            f"{name}: expected a 3D boolean array on the run's grid, got an array of shape {arr.shape}; "
            "pass the brain mask as a (x, y, z) numpy bool array"
        )
    if arr.dtype != bool:
        arr = arr != 0
    if not arr.any():
        raise InputError(
            f"{name}: the mask is empty (no voxel is True); pass a mask with brain voxels"
        )
    return arr


def grid_edges(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edges of the 6-neighbour lattice restricted to ``mask``, in voxel order.

    Parameters
    ----------
    mask : ndarray of bool, shape (x, y, z)
        The mask; voxels are numbered in C order of the mask.

    Returns
    -------
    rows, cols : ndarray of int64
        Each undirected edge once, with ``rows < cols``.
    """
    mask = _check_mask(mask)
    index = np.full(mask.shape, -1, dtype=np.int64)
    index[mask] = np.arange(int(mask.sum()), dtype=np.int64)
    rows, cols = [], []
    for axis in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis] = slice(None, -1)
        hi[axis] = slice(1, None)
        a = index[tuple(lo)]
        b = index[tuple(hi)]
        keep = (a >= 0) & (b >= 0)
        rows.append(a[keep])
        cols.append(b[keep])
    return np.concatenate(rows), np.concatenate(cols)


def grid_connectivity(mask: np.ndarray) -> sp.csr_matrix:
    """The 6-neighbour lattice graph of a mask, as scikit-learn's ``grid_to_graph``.

    Parameters
    ----------
    mask : ndarray of bool, shape (x, y, z)
        The brain mask. Voxels are numbered in C order (``np.flatnonzero(mask)``).

    Returns
    -------
    scipy.sparse.csr_matrix of int, shape (n_voxels, n_voxels)
        Symmetric, with the diagonal set, the same sparsity pattern as
        ``sklearn.feature_extraction.image.grid_to_graph(*mask.shape, mask=mask)``.
    """
    mask = _check_mask(mask)
    n = int(mask.sum())
    rows, cols = grid_edges(mask)
    diag = np.arange(n, dtype=np.int64)
    r = np.concatenate([rows, cols, diag])
    c = np.concatenate([cols, rows, diag])
    conn = sp.csr_matrix((np.ones(len(r), dtype=int), (r, c)), shape=(n, n))
    conn.sum_duplicates()
    conn.sort_indices()
    logger.debug("grid connectivity: %d voxels, %d undirected edges", n, len(rows))
    return conn


def check_connectivity(conn: Any, n_voxels: int, name: str = "connectivity") -> sp.csr_matrix:
    """Validate a user connectivity and return its symmetric pattern without the diagonal.

    Parameters
    ----------
    conn : scipy sparse matrix/array or ndarray, shape (n_voxels, n_voxels)
        Which voxels may be merged (non-zero = neighbours). Only the pattern is used; it is
        made symmetric (as scikit-learn does with ``connectivity + connectivity.T``).
    n_voxels : int
        The number of voxels (rows of the features).
    name : str
        Name of the input in error messages.

    Returns
    -------
    scipy.sparse.csr_matrix of int8
        Symmetric pattern, sorted indices, no diagonal.

    Raises
    ------
    InputError
        If ``conn`` is not a square matrix of the size of the features.
    """
    if sp.issparse(conn):
        mat = sp.csr_matrix(conn)
    else:
        arr = np.asarray(conn)
        if arr.ndim != 2:
            raise InputError(
                f"{name}: expected a square (n_voxels, n_voxels) matrix, got an array of shape "
                f"{arr.shape}; pass a scipy.sparse matrix such as grid_connectivity(mask)"
            )
        mat = sp.csr_matrix(arr)
    if mat.shape != (n_voxels, n_voxels):
        raise InputError(
            f"{name}: shape {mat.shape} does not match the {n_voxels} voxels of the features; "
            f"pass a ({n_voxels}, {n_voxels}) matrix whose rows follow the mask's voxel order "
            "(e.g. grid_connectivity(mask))"
        )
    pattern = (mat != 0).astype(np.int8)
    pattern = (pattern + pattern.T).tocsr()
    pattern.setdiag(0)
    pattern.eliminate_zeros()
    pattern.data[:] = 1
    pattern.sort_indices()
    return sp.csr_matrix(pattern, dtype=np.int8)


def components(conn: Any) -> tuple[int, np.ndarray]:
    """Connected components of a connectivity graph (undirected).

    Parameters
    ----------
    conn : scipy sparse matrix, shape (n, n)

    Returns
    -------
    n_components : int
    labels : ndarray of int64, shape (n,)
        Component of each node, numbered in order of each component's smallest node.
    """
    n, labels = connected_components(sp.csr_matrix(conn), directed=False)
    return int(n), labels.astype(np.int64)
