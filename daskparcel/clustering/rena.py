"""Recursive Neighbour Agglomeration (ReNA) as a blockwise dask graph, and Ward on ReNA super-voxels.

ReNA (Hoyos-Idrobo et al. 2018; nilearn's ``ReNA``) repeats: weight every edge of the graph by the
squared distance between its nodes' features, keep each node's nearest-neighbour edge(s), take the
connected components of those edges as clusters, and reduce features (cluster means) and graph
(cluster adjacency). It stops once at most ``n_clusters`` nodes remain or after ``n_iter`` rounds.

Blockwise: the volume is split into spatial blocks (``block_shape``); each node (a voxel, then a
cluster) lives in the block of its first voxel. In every round

1. one task per block weights the edges of its nodes and selects their nearest neighbours; it reads
   the features of its own nodes plus a halo (the neighbours that live in other blocks: at the voxel
   level, a one-voxel halo). Features never leave these tasks.
2. the nearest-neighbour edges (integers, one or two per node) are joined on the client into global
   connected components (scipy's ``connected_components``, the same call and numbering as nilearn),
   and the reduced graph is derived from the integer edge list;
3. one task per block averages the features of the clusters that live there (reading children from
   other blocks where a cluster crosses a block border) and the reduced means are persisted for the
   next round.

Every floating-point operation is done on the same values, in the same order and dtype as nilearn
(float64 voxel-level weights with numpy's pairwise sum, float32 cluster means accumulated by scipy's
sparse product in child order, the same ``1 - threshold`` test), and the global steps (the edge
selection that stops at ``n_clusters``, connected components) run on the full integer edge list, so the
labels do not depend on the block shape and equal nilearn's ``ReNA`` (up to label names).

Exactly K: nilearn can stop with more than ``n_clusters`` (``n_iter`` runs out). We then merge the
closest neighbouring clusters (smallest squared distance of their means, ties by index) until exactly
``n_clusters`` remain, over every edge of the lattice: nilearn drops the zero-weight edges (voxels
with identical features, such as air in a background mask) from its rounds, which can leave nodes
with no edge at all, so they come back for this last merge. When the mask has several connected components, ReNA runs on each with a share
of ``n_clusters`` proportional to its voxels, so every parcel is one connected region.
"""

from __future__ import annotations

import logging
from typing import Any

import dask
import dask.array as da
import numpy as np
from scipy.sparse import coo_matrix, csgraph, dia_matrix

from daskparcel._checks import check_n_clusters
from daskparcel._dask import shared as shared_value
from daskparcel._dask import shared_many
from daskparcel._log import serial_step
from daskparcel.clustering.agglomerative import allocate
from daskparcel.clustering.connectivity import grid_edges
from daskparcel.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["auto_block_shape", "rena", "rena_on_edges"]


# --------------------------------------------------------------------------------------------------
# per-block kernels (numpy only)


def _edge_weights(
    level: int, threshold: float, local: np.ndarray, li: np.ndarray, lj: np.ndarray
) -> np.ndarray:
    """Edge weights as nilearn computes them (level 0: voxels, float64; later: cluster means).

    Computed ``_EDGE_CHUNK`` edges at a time: the (edge, component) differences of a whole block would be
    ~1 GB at 2 mm (700k edges x 200 components in float64); each edge's sum is the same either way.
    """
    w = np.empty(len(li), dtype=np.float64 if level == 0 else local.dtype)
    x = local.astype(np.float64) if level == 0 else local
    xt = local.T  # the (component, node) Fortran-ordered view nilearn reduces on at later levels
    for start in range(0, len(li), _EDGE_CHUNK):
        i, j = li[start : start + _EDGE_CHUNK], lj[start : start + _EDGE_CHUNK]
        if level == 0:
            w[start : start + len(i)] = np.sum((x[i] - x[j]) ** 2, axis=-1)
        else:
            w[start : start + len(i)] = np.sum((xt[:, i] - xt[:, j]) ** 2, axis=0)
    if level == 0:
        return w / 2  # nilearn symmetrises with (C + C.T) / 2
    return np.maximum(threshold, w)


_EDGE_CHUNK = 16384


def _nn_task(
    level: int,
    threshold: float,
    n_own: int,
    own_ids: np.ndarray,
    local_ids: np.ndarray,
    li: np.ndarray,
    lj: np.ndarray,
    *pieces: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest-neighbour edges (i -> j) of the block's own nodes; also the zero-weight edges."""
    local = np.concatenate(pieces, axis=0) if len(pieces) > 1 else np.asarray(pieces[0])
    w = _edge_weights(level, threshold, local, li, lj)
    zero = w == 0
    dropped = np.stack([local_ids[li[zero]], local_ids[lj[zero]]]) if zero.any() else None
    keep_e = ~zero
    li, lj, w = li[keep_e], lj[keep_e], w[keep_e]
    # directed entries (row -> col) for rows that are own nodes (local index < n_own)
    rows = np.concatenate([li, lj])
    cols = np.concatenate([lj, li])
    data = np.concatenate([w, w])
    own = rows < n_own
    rows, cols, data = rows[own], cols[own], data[own]
    inv = 1.0 / data
    mx = np.zeros(n_own, dtype=inv.dtype)
    np.maximum.at(mx, rows, inv)
    with np.errstate(divide="ignore"):
        scale = 1.0 / mx
    c = scale[rows] * inv
    sel = c > 1 - threshold
    nn = np.stack([local_ids[rows[sel]], local_ids[cols[sel]]])
    if dropped is None:
        dropped = np.empty((2, 0), dtype=np.int64)
    return nn, dropped, own_ids


def _weights_task(
    level: int, threshold: float, li: np.ndarray, lj: np.ndarray, *pieces: np.ndarray
) -> np.ndarray:
    local = np.concatenate(pieces, axis=0) if len(pieces) > 1 else np.asarray(pieces[0])
    return np.asarray(_edge_weights(level, threshold, local, li, lj))


def _reduce_task(
    n_clusters_local: int, child_cluster: np.ndarray, *pieces: np.ndarray
) -> np.ndarray:
    """Cluster means of the children, with nilearn's sparse arithmetic (children in global order)."""
    x = np.concatenate(pieces, axis=0) if len(pieces) > 1 else np.asarray(pieces[0])
    n = len(child_cluster)
    incidence = coo_matrix(
        (np.ones(n), (child_cluster, np.arange(n))),
        shape=(n_clusters_local, n),
        dtype=np.float32,
    ).tocsc()
    inv_sum_col = dia_matrix(
        (np.asarray(1.0 / incidence.sum(axis=1)).reshape(-1), 0),
        shape=(n_clusters_local, n_clusters_local),
    )
    incidence = inv_sum_col @ incidence
    return np.asarray(incidence @ x)


# --------------------------------------------------------------------------------------------------
# the driver


def _take(block: np.ndarray, pos: np.ndarray) -> np.ndarray:
    return np.asarray(block)[pos]


class _Level:
    """Nodes of one ReNA round: home block and position of each node, features per block."""

    def __init__(self, home: np.ndarray, blocks: list[Any]) -> None:
        self.home = home
        self.blocks = (
            blocks  # one dask object per block: (nodes of the block in id order, components)
        )
        self.pos = np.empty(len(home), dtype=np.int64)
        self.sizes = np.bincount(home, minlength=len(blocks))
        for b in range(len(blocks)):
            ids = np.flatnonzero(home == b)
            self.pos[ids] = np.arange(len(ids))

    def gather(self, ids: np.ndarray) -> tuple[np.ndarray, list[Any]]:
        """Dask pieces holding the features of ``ids`` grouped by home block, and their order."""
        order, pieces = [], []
        homes = self.home[ids]
        for b in np.unique(homes):
            sel = np.sort(ids[homes == b])
            pos = self.pos[sel]
            if len(pos) == self.sizes[b]:
                pieces.append(self.blocks[b])
            else:
                pieces.append(dask.delayed(_take, pure=False)(self.blocks[b], pos))
            order.append(sel)
        return np.concatenate(order), pieces


def _block_local_edges(
    level: _Level, b: int, ei: np.ndarray, ej: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[Any], int]:
    own = np.flatnonzero(level.home == b)
    inc = (level.home[ei] == b) | (level.home[ej] == b)
    ei_b, ej_b = ei[inc], ej[inc]
    halo = np.setdiff1d(np.union1d(ei_b, ej_b), own, assume_unique=False)
    own_order, own_pieces = level.gather(own)
    if len(halo):
        halo_order, halo_pieces = level.gather(halo)
    else:
        halo_order, halo_pieces = np.empty(0, dtype=np.int64), []
    local_ids = np.concatenate([own_order, halo_order])
    lookup = np.argsort(local_ids)
    sorted_ids = local_ids[lookup]
    li = lookup[np.searchsorted(sorted_ids, ei_b)]
    lj = lookup[np.searchsorted(sorted_ids, ej_b)]
    return own_order, local_ids, li, lj, own_pieces + halo_pieces, len(own)


def _nn_grouping(n_nodes: int, nn_i: np.ndarray, nn_j: np.ndarray, n_clusters: int) -> np.ndarray:
    """nilearn's ``_nearest_neighbor_grouping`` after the nearest-neighbour edges are known."""
    nn_connectivity = coo_matrix((np.ones_like(nn_j), (nn_i, nn_j)), (n_nodes, n_nodes))
    n_components = n_nodes - (nn_connectivity + nn_connectivity.T).nnz / 2
    if n_components < n_clusters:
        n_edges = n_nodes - n_clusters
        nn_connectivity = nn_connectivity + nn_connectivity.T
        i_idx, j_idx = nn_connectivity.nonzero()
        edges = np.array([i_idx, j_idx])
        edge_mask = np.argsort(i_idx - j_idx)[:n_edges]
        weight = np.ones(2 * n_edges)
        edges = np.hstack([edges[:, edge_mask], edges[::-1, edge_mask]])
        nn_connectivity = coo_matrix((weight, edges), (n_nodes, n_nodes))
    _, labels = csgraph.connected_components(nn_connectivity)
    return np.asarray(labels, dtype=np.int64)


def _block_ids(mask: np.ndarray, block_shape: tuple[int, int, int] | None) -> np.ndarray:
    n = int(mask.sum())
    if block_shape is None:
        return np.zeros(n, dtype=np.int64)
    coords = np.argwhere(mask)
    grid = tuple(-(-s // b) for s, b in zip(mask.shape, block_shape))
    flat = np.ravel_multi_index(tuple((coords // np.asarray(block_shape)).T), grid)
    _, ids = np.unique(flat, return_inverse=True)
    return ids.astype(np.int64)


def _union_find_merge(
    n_nodes: int, ei: np.ndarray, ej: np.ndarray, w: np.ndarray, n_clusters: int
) -> np.ndarray:
    """Merge the closest neighbouring pairs (by weight, then index) until ``n_clusters`` remain."""
    parent = np.arange(n_nodes)

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    count = n_nodes
    for e in np.lexsort((ej, ei, w)):
        if count <= n_clusters:
            break
        ra, rb = find(int(ei[e])), find(int(ej[e]))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
            count -= 1
    roots = np.array([find(a) for a in range(n_nodes)])
    _, labels = np.unique(roots, return_inverse=True)
    return labels.astype(np.int64)


def _relabel_pairs(pairs: np.ndarray, n_nodes: int, new: np.ndarray, n_new: int) -> np.ndarray:
    """Edges ``lo * n_nodes + hi`` between nodes, as edges between their new clusters (self-loops dropped)."""
    a, b = new[pairs // n_nodes], new[pairs % n_nodes]
    cross = a != b
    return np.unique(np.minimum(a[cross], b[cross]) * n_new + np.maximum(a[cross], b[cross]))


def _rena_connected(
    x: Any,
    mask: np.ndarray,
    n_clusters: int,
    n_iter: int,
    threshold: float,
    block_shape: tuple[int, int, int] | None,
    single_block_below: int,
    edges: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """ReNA of one connected graph: the mask's lattice, or ``edges`` (each once, ``rows < cols``; e.g. a
    mesh's) with ``block_shape=None``."""
    n_vox = int(mask.sum())
    if n_clusters >= n_vox:
        return np.arange(n_vox, dtype=np.int64)
    home = _block_ids(mask, block_shape)
    n_blocks = int(home.max()) + 1
    blocks: list[Any] = []
    for b in range(n_blocks):
        ids = np.flatnonzero(home == b)
        if isinstance(x, np.ndarray):
            piece = x if len(ids) == n_vox else x[ids]
            blocks.append(shared_value(piece, name=f"rena-block-{b}-{dask.base.tokenize(piece)}"))
        else:
            blocks.append(x if len(ids) == n_vox else x[ids])
    if isinstance(x, np.ndarray):
        blocks = list(dask.persist(*blocks))  # on a cluster: each block goes to a worker once
    logger.debug("ReNA: %d voxels in %d spatial blocks", n_vox, n_blocks)
    level = _Level(home, blocks)
    ei, ej = grid_edges(mask) if edges is None else edges
    labels = np.arange(n_vox, dtype=np.int64)
    n_nodes = n_vox
    # lattice edges of zero weight (identical features, e.g. air, constant or zeroed voxels) leave the
    # rounds' graph as they leave nilearn's; kept here (in current node ids) for the final merge, whose
    # graph must be the whole lattice, or a mask cut by such edges could not be merged down to K
    gone = np.empty(0, dtype=np.int64)
    for it in range(n_iter):
        local = [_block_local_edges(level, b, ei, ej) for b in range(int(level.home.max()) + 1)]
        # the first rounds' edge lists are MBs at 2 mm: sent to a cluster's workers, not in the graph
        shared_edges = iter(shared_many([a for block in local for a in block[:4]]))
        tasks = [
            dask.delayed(_nn_task, pure=False)(
                it, threshold, n_own, *[next(shared_edges) for _ in range(4)], *pieces
            )
            for *_, pieces, n_own in local
        ]
        results = dask.compute(*tasks)  # compute point 1: nearest neighbours of every node
        nn = np.concatenate([r[0] for r in results], axis=1)
        dropped = np.concatenate([r[1] for r in results], axis=1)
        if dropped.shape[1]:
            # zero-weight edges vanish from nilearn's sparse graph: drop them too
            pairs = np.unique(np.minimum(dropped[0], dropped[1]) * n_nodes + np.maximum(*dropped))
            key = ei * n_nodes + ej
            keep = ~np.isin(key, pairs)
            ei, ej = ei[keep], ej[keep]
            gone = np.union1d(gone, pairs)
        with serial_step("rena groupings"):
            new = _nn_grouping(n_nodes, nn[0], nn[1], n_clusters)
        n_new = int(new.max()) + 1
        labels = new[labels]
        gone = _relabel_pairs(gone, n_nodes, new, n_new)
        # reduced graph
        a, b_ = new[ei], new[ej]
        cross = a != b_
        lo, hi = np.minimum(a[cross], b_[cross]), np.maximum(a[cross], b_[cross])
        key = np.unique(lo * n_new + hi)
        ei, ej = key // n_new, key % n_new
        logger.debug("ReNA round %d: %d -> %d nodes", it + 1, n_nodes, n_new)
        if n_new <= n_clusters:
            n_nodes = n_new
            break
        # reduce the features: one task per block of the new clusters
        first_child = np.full(n_new, n_nodes, dtype=np.int64)
        np.minimum.at(first_child, new, np.arange(n_nodes))
        new_home = level.home[first_child]
        if n_new <= single_block_below:
            new_home = np.zeros(n_new, dtype=np.int64)
        _, new_home = np.unique(new_home, return_inverse=True)
        new_blocks = []
        for b in range(int(new_home.max()) + 1):
            clusters = np.flatnonzero(new_home == b)
            children = np.flatnonzero(np.isin(new, clusters))  # ascending child ids
            order, pieces = level.gather(children)
            local_cluster = np.searchsorted(clusters, new[order])
            perm = np.argsort(order)  # pieces come grouped by block; restore child id order
            task = dask.delayed(_reorder_then_reduce, pure=False)(
                len(clusters), local_cluster[perm], perm, *pieces
            )
            new_blocks.append(task)
        new_blocks = list(dask.persist(*new_blocks))  # compute point 2: the reduced features
        level = _Level(new_home.astype(np.int64), new_blocks)
        n_nodes = n_new
    if n_nodes > n_clusters:
        logger.info(
            "ReNA stopped after n_iter=%d rounds with %d clusters; merging the closest neighbouring "
            "clusters until exactly %d remain",
            n_iter,
            n_nodes,
            n_clusters,
        )
        key = np.union1d(ei * n_nodes + ej, gone)
        ei, ej = key // n_nodes, key % n_nodes
        tasks = []
        for b in range(int(level.home.max()) + 1):
            _, local_ids, li, lj, pieces, _ = _block_local_edges(level, b, ei, ej)
            # weights of the edges whose smaller end lives here (each edge once)
            first = level.home[local_ids[li]] == b
            first &= local_ids[li] < local_ids[lj]
            task = dask.delayed(_weights_task, pure=False)(
                1, threshold, li[first], lj[first], *pieces
            )
            tasks.append((local_ids[li[first]], local_ids[lj[first]], task))
        weights = dask.compute(*[t[2] for t in tasks])
        wi = np.concatenate([t[0] for t in tasks])
        wj = np.concatenate([t[1] for t in tasks])
        w = np.concatenate(weights)
        with serial_step("rena groupings"):
            final = _union_find_merge(n_nodes, wi, wj, w, n_clusters)
        labels = final[labels]
    return labels


def rena_on_edges(
    features: np.ndarray,
    n_clusters: int,
    edges: tuple[np.ndarray, np.ndarray],
    *,
    n_iter: int = 10,
    threshold: float = 1e-7,
) -> np.ndarray:
    """ReNA of the nodes of one connected graph given by its ``edges`` (each once, ``rows < cols``; e.g. a
    mesh's), in one block: labels 0..n_clusters-1 (see :func:`rena` for the rounds and the exact-K merge)."""
    mask = np.ones((len(features), 1, 1), dtype=bool)
    return _rena_connected(
        features, mask, int(n_clusters), int(n_iter), float(threshold), None, 20_000, edges=edges
    )


def _reorder_then_reduce(
    n_clusters_local: int, child_cluster: np.ndarray, perm: np.ndarray, *pieces: np.ndarray
) -> np.ndarray:
    x = np.concatenate(pieces, axis=0) if len(pieces) > 1 else np.asarray(pieces[0])
    return _reduce_task(n_clusters_local, child_cluster, np.ascontiguousarray(x[perm]))


# --------------------------------------------------------------------------------------------------
# public API


def _check_inputs(
    features: Any, mask: Any, n_clusters: Any, n_iter: Any, threshold: Any, block_shape: Any
) -> tuple[Any, np.ndarray, tuple[int, int, int] | None]:
    mask_arr = np.asarray(mask)
    if mask_arr.ndim != 3:
        raise InputError(
            f"mask: expected a 3D boolean array, got shape {mask_arr.shape}; pass the brain mask "
            "the features were extracted with"
        )
    mask_arr = mask_arr.astype(bool)
    if hasattr(features, "data") and hasattr(features, "dims"):  # xarray.DataArray
        features = features.data
    # numpy stays numpy: each spatial block is cut from it and shipped once (wrapping the whole array in
    # dask would embed all of it in every chunk's task)
    x = features if isinstance(features, da.Array) else np.asarray(features)
    if x.ndim != 2:
        raise InputError(
            f"features: expected a 2D (voxel, component) array, got shape {x.shape}; pass one row "
            "per mask voxel"
        )
    n_vox = int(mask_arr.sum())
    if x.shape[0] != n_vox:
        raise InputError(
            f"mask: has {n_vox} voxels but features have {x.shape[0]} rows; pass the mask the "
            "features were extracted with"
        )
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    check_n_clusters(n_clusters, n_vox)
    if isinstance(n_iter, bool) or not isinstance(n_iter, (int, np.integer)) or n_iter < 1:
        raise InputError(
            f"n_iter={n_iter!r}: must be an integer >= 1; pass n_iter=10 (nilearn's default)"
        )
    if not (0 <= float(threshold) < 1):
        raise InputError(f"threshold={threshold!r}: must be in [0, 1); pass threshold=1e-7")
    bs: tuple[int, int, int] | None = None
    if block_shape is not None:
        bs_t = tuple(int(b) for b in block_shape)
        if len(bs_t) != 3 or min(bs_t) < 1:
            raise InputError(
                f"block_shape={block_shape!r}: must be three positive integers (x, y, z); pass "
                "e.g. block_shape=(32, 32, 32) or None for one block"
            )
        bs = (bs_t[0], bs_t[1], bs_t[2])
    return x, mask_arr, bs


def auto_block_shape(mask: np.ndarray, max_voxels: int = 50_000) -> tuple[int, int, int] | None:
    """A spatial block shape giving about ``max_voxels`` mask voxels a block (None: one block is enough).

    The longest side is halved until the grid has enough blocks, so each task of a round holds a block's
    features (a few tens of MB at 200 components), not the whole mask's.
    """
    n_vox = int(np.count_nonzero(mask))
    wanted = -(-n_vox // max_voxels)
    if wanted <= 1:
        return None
    shape = [int(s) for s in mask.shape]
    while np.prod([-(-s // b) for s, b in zip(mask.shape, shape, strict=True)]) < wanted:
        axis = int(np.argmax(shape))
        if shape[axis] == 1:
            break
        shape[axis] = -(-shape[axis] // 2)
    return (shape[0], shape[1], shape[2])


def rena(
    features: Any,
    n_clusters: int,
    *,
    mask: np.ndarray,
    n_iter: int = 10,
    threshold: float = 1e-7,
    block_shape: tuple[int, int, int] | None = None,
    single_block_below: int = 20_000,
) -> np.ndarray:
    """ReNA clustering of mask voxels into exactly ``n_clusters`` connected parcels, blockwise.

    Parameters
    ----------
    features : array-like, shape (n_voxels, n_components)
        One row per mask voxel in voxel order: numpy, dask (read block by block) or xarray.
    n_clusters : int
        Number of parcels.
    mask : ndarray of bool, shape (x, y, z)
        The mask; the graph is its 6-neighbour lattice.
    n_iter : int
        Maximum number of ReNA rounds (nilearn's default and Parcellations' value: 10).
    threshold : float
        nilearn's tolerance for nearest-neighbour ties (1e-7).
    block_shape : tuple of 3 int, optional
        Spatial block shape in voxels; None runs one block. Labels do not depend on it.
    single_block_below : int
        Once fewer nodes than this remain, later rounds run in one block.

    Returns
    -------
    ndarray of int64, shape (n_voxels,)
        Labels 0..n_clusters-1. With a connected mask, identical (up to label names) to nilearn's
        ``ReNA(mask_img, n_clusters, n_iter=n_iter).fit(features.T).labels_`` whenever nilearn returns
        exactly ``n_clusters``.

    Raises
    ------
    InputError
        Bad mask, features, ``n_clusters``, ``n_iter``, ``threshold`` or ``block_shape``.
    """
    x, mask_arr, bs = _check_inputs(features, mask, n_clusters, n_iter, threshold, block_shape)
    from scipy import ndimage

    comp_vol, n_comp = ndimage.label(mask_arr)  # 6-connectivity, as the lattice graph
    if n_comp <= 1:
        return _rena_connected(
            x, mask_arr, int(n_clusters), int(n_iter), float(threshold), bs, single_block_below
        )
    comp = comp_vol[mask_arr] - 1
    sizes = np.bincount(comp, minlength=n_comp)
    alloc = allocate(int(n_clusters), sizes.astype(np.float64), sizes, "n_clusters")
    logger.info(
        "the mask has %d separate components: ReNA runs on each with %s of the %d parcels "
        "(in proportion to their voxels) so that every parcel is connected",
        n_comp,
        ", ".join(str(int(a)) for a in alloc),
        n_clusters,
    )
    labels = np.empty(len(comp), dtype=np.int64)
    offset = 0
    for c in range(n_comp):
        ids = np.flatnonzero(comp == c)
        sub_mask = comp_vol == c + 1
        sub_x = x if len(ids) == len(comp) else x[ids]
        sub = _rena_connected(
            sub_x, sub_mask, int(alloc[c]), int(n_iter), float(threshold), bs, single_block_below
        )
        labels[ids] = sub + offset
        offset += int(alloc[c])
    return labels
