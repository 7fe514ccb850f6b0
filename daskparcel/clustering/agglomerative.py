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

import numba
import numpy as np
import scipy.sparse as sp

from daskparcel._checks import check_n_clusters
from daskparcel.clustering._common import features_array
from daskparcel.clustering.connectivity import check_connectivity, components, grid_connectivity
from daskparcel.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["LINKAGES", "MergeTree", "agglomerate", "allocate_clusters", "build_tree"]

LINKAGES = ("ward", "complete", "average")
_LINKAGE_CODE = {"ward": 0, "complete": 1, "average": 2}


# --------------------------------------------------------------------------------------------------
# A binary heap that reproduces CPython's heapq (heappush / heappop / heapify) operation by operation.
# Entries are (weight, a, b). ``lexi`` selects the comparison: scikit-learn's ward heap holds tuples
# (compared lexicographically), its linkage heap holds WeightedEdge objects (compared by weight only).


@numba.njit(cache=True, inline="always")
def _lt(w1: float, a1: int, b1: int, w2: float, a2: int, b2: int, lexi: bool) -> bool:
    if not lexi:
        return w1 < w2
    if w1 != w2:
        return w1 < w2
    if a1 != a2:
        return a1 < a2
    return b1 < b2


@numba.njit(cache=True)
def _siftdown(hw, ha, hb, startpos, pos, lexi):
    nw, na, nb = hw[pos], ha[pos], hb[pos]
    while pos > startpos:
        parentpos = (pos - 1) >> 1
        if _lt(nw, na, nb, hw[parentpos], ha[parentpos], hb[parentpos], lexi):
            hw[pos], ha[pos], hb[pos] = hw[parentpos], ha[parentpos], hb[parentpos]
            pos = parentpos
            continue
        break
    hw[pos], ha[pos], hb[pos] = nw, na, nb


@numba.njit(cache=True)
def _siftup(hw, ha, hb, size, pos, lexi):
    startpos = pos
    nw, na, nb = hw[pos], ha[pos], hb[pos]
    childpos = 2 * pos + 1
    while childpos < size:
        rightpos = childpos + 1
        if rightpos < size and not _lt(
            hw[childpos], ha[childpos], hb[childpos], hw[rightpos], ha[rightpos], hb[rightpos], lexi
        ):
            childpos = rightpos
        hw[pos], ha[pos], hb[pos] = hw[childpos], ha[childpos], hb[childpos]
        pos = childpos
        childpos = 2 * pos + 1
    hw[pos], ha[pos], hb[pos] = nw, na, nb
    _siftdown(hw, ha, hb, startpos, pos, lexi)


@numba.njit(cache=True)
def _grow_f(arr, need):
    if need <= arr.shape[0]:
        return arr
    new = np.empty(max(need, 2 * arr.shape[0]), dtype=arr.dtype)
    new[: arr.shape[0]] = arr
    return new


@numba.njit(cache=True)
def _grow_i(arr, need):
    if need <= arr.shape[0]:
        return arr
    new = np.empty(max(need, 2 * arr.shape[0]), dtype=arr.dtype)
    new[: arr.shape[0]] = arr
    return new


@numba.njit(cache=True)
def _ward_pair(m1, m2, slot, row, col):
    # scikit-learn's compute_ward_dist, operation for operation.
    n = (m1[row] * m1[col]) / (m1[row] + m1[col])
    sr = slot[row]
    sc = slot[col]
    pa = 0.0
    for f in range(m2.shape[1]):
        d = m2[sr, f] / m1[row] - m2[sc, f] / m1[col]
        pa += d * d
    return pa * n


@numba.njit(cache=True)
def _ward_loop(indptr, indices, x, weights):
    """scikit-learn's ward_tree merge loop (with connectivity). Returns children, inertias."""
    n = indptr.shape[0] - 1
    n_nodes = 2 * n - 1
    n_features = x.shape[1]
    m1 = np.zeros(n_nodes)
    m1[:n] = weights
    # moments of order 2, stored in slots: a merged node reuses its first child's slot
    m2 = np.empty((n, n_features))
    for i in range(n):
        for f in range(n_features):
            m2[i, f] = x[i, f] * weights[i] if weights[i] != 1.0 else x[i, f]
    slot = np.empty(n_nodes, dtype=np.int64)
    slot[:n] = np.arange(n)

    # adjacency lists in one pool (start, length, capacity per node)
    cap0 = indices.shape[0] + 16
    pool = np.empty(2 * cap0, dtype=np.int64)
    start = np.zeros(n_nodes, dtype=np.int64)
    length = np.zeros(n_nodes, dtype=np.int64)
    capac = np.zeros(n_nodes, dtype=np.int64)
    top = 0
    for i in range(n):
        d = indptr[i + 1] - indptr[i]
        start[i] = top
        length[i] = d
        capac[i] = d
        pool[top : top + d] = indices[indptr[i] : indptr[i + 1]]
        top += d

    # initial heap: (inertia, ind, r) for r < ind, in CSR order, then heapify
    m = 0
    for i in range(n):
        for p in range(indptr[i], indptr[i + 1]):
            if indices[p] < i:
                m += 1
    hcap = max(16, 2 * m)
    hw = np.empty(hcap)
    ha = np.empty(hcap, dtype=np.int64)
    hb = np.empty(hcap, dtype=np.int64)
    size = 0
    for i in range(n):
        for p in range(indptr[i], indptr[i + 1]):
            j = indices[p]
            if j < i:
                hw[size] = _ward_pair(m1, m2, slot, i, j)
                ha[size] = i
                hb[size] = j
                size += 1
    for i in range(size // 2 - 1, -1, -1):
        _siftup(hw, ha, hb, size, i, True)

    parent = np.arange(n_nodes, dtype=np.int64)
    root = np.arange(n_nodes, dtype=np.int64)  # path-compressed copy of parent, for head lookups
    used = np.ones(n_nodes, dtype=np.bool_)
    visited_stamp = np.full(n_nodes, -1, dtype=np.int64)
    children = np.empty((n - 1, 2), dtype=np.int64)
    inertias = np.empty(n - 1)
    buf = np.empty(64, dtype=np.int64)
    n_merges = 0
    for k in range(n, n_nodes):
        # identify the merge
        found = False
        inert = 0.0
        i = 0
        j = 0
        while size > 0:
            size -= 1
            lw, la, lb = hw[size], ha[size], hb[size]
            if size > 0:
                inert, i, j = hw[0], ha[0], hb[0]
                hw[0], ha[0], hb[0] = lw, la, lb
                _siftup(hw, ha, hb, size, 0, True)
            else:
                inert, i, j = lw, la, lb
            if used[i] and used[j]:
                found = True
                break
        if not found:
            break  # the graph is not connected: the tree is a forest
        parent[i] = k
        parent[j] = k
        root[i] = k
        root[j] = k
        children[n_merges, 0] = j  # scikit-learn reverses (i, j) at the end
        children[n_merges, 1] = i
        inertias[n_merges] = inert
        n_merges += 1
        used[i] = False
        used[j] = False
        m1[k] = m1[i] + m1[j]
        si = slot[i]
        sj = slot[j]
        for f in range(n_features):
            m2[si, f] = m2[si, f] + m2[sj, f]
        slot[k] = si

        # heads of the neighbours of i and j
        visited_stamp[k] = k
        nb = 0
        for src in (i, j):
            for p in range(start[src], start[src] + length[src]):
                node = pool[p]
                r = node
                while root[r] != r:
                    r = root[r]
                # path compression
                while root[node] != r:
                    nxt = root[node]
                    root[node] = r
                    node = nxt
                if visited_stamp[r] != k:
                    visited_stamp[r] = k
                    if nb >= buf.shape[0]:
                        buf = _grow_i(buf, nb + 1)
                    buf[nb] = r
                    nb += 1
        # A[k] = heads; A[col].append(k)
        pool = _grow_i(pool, top + nb)
        start[k] = top
        length[k] = nb
        capac[k] = nb
        pool[top : top + nb] = buf[:nb]
        top += nb
        for q in range(nb):
            col = buf[q]
            if length[col] == capac[col]:
                newcap = 2 * capac[col] + 4
                pool = _grow_i(pool, top + newcap)
                pool[top : top + length[col]] = pool[start[col] : start[col] + length[col]]
                start[col] = top
                capac[col] = newcap
                top += newcap
            pool[start[col] + length[col]] = k
            length[col] += 1
        # push the new inertias
        if size + nb > hw.shape[0]:
            hw = _grow_f(hw, size + nb)
            ha = _grow_i(ha, size + nb)
            hb = _grow_i(hb, size + nb)
        for q in range(nb):
            col = buf[q]
            hw[size] = _ward_pair(m1, m2, slot, k, col)
            ha[size] = k
            hb[size] = col
            size += 1
            _siftdown(hw, ha, hb, 0, size - 1, True)
    return children[:n_merges], inertias[:n_merges]


@numba.njit(cache=True)
def _linkage_loop(indptr, indices, dist, method):
    """scikit-learn's linkage_tree merge loop for complete (1) / average (2) linkage."""
    n = indptr.shape[0] - 1
    n_nodes = 2 * n - 1
    nnz = indices.shape[0]
    kpool = np.empty(2 * nnz + 16, dtype=np.int64)
    vpool = np.empty(2 * nnz + 16)
    start = np.zeros(n_nodes, dtype=np.int64)
    length = np.zeros(n_nodes, dtype=np.int64)
    capac = np.zeros(n_nodes, dtype=np.int64)
    top = 0
    for i in range(n):
        d = indptr[i + 1] - indptr[i]
        start[i] = top
        length[i] = d
        capac[i] = d
        kpool[top : top + d] = indices[indptr[i] : indptr[i + 1]]
        vpool[top : top + d] = dist[indptr[i] : indptr[i + 1]]
        top += d
    m = 0
    for i in range(n):
        for p in range(indptr[i], indptr[i + 1]):
            if indices[p] < i:
                m += 1
    hcap = max(16, 2 * m)
    hw = np.empty(hcap)
    ha = np.empty(hcap, dtype=np.int64)
    hb = np.empty(hcap, dtype=np.int64)
    size = 0
    for i in range(n):
        for p in range(indptr[i], indptr[i + 1]):
            if indices[p] < i:
                hw[size] = dist[p]
                ha[size] = i
                hb[size] = indices[p]
                size += 1
    for i in range(size // 2 - 1, -1, -1):
        _siftup(hw, ha, hb, size, i, False)

    used = np.ones(n_nodes, dtype=np.int64)
    children = np.empty((n - 1, 2), dtype=np.int64)
    distances = np.empty(n - 1)
    bk = np.empty(64, dtype=np.int64)
    bv = np.empty(64)
    n_merges = 0
    for k in range(n, n_nodes):
        found = False
        w = 0.0
        i = 0
        j = 0
        while size > 0:
            size -= 1
            lw, la, lb = hw[size], ha[size], hb[size]
            if size > 0:
                w, i, j = hw[0], ha[0], hb[0]
                hw[0], ha[0], hb[0] = lw, la, lb
                _siftup(hw, ha, hb, size, 0, False)
            else:
                w, i, j = lw, la, lb
            if used[i] != 0 and used[j] != 0:
                found = True
                break
        if not found:
            break
        distances[n_merges] = w
        children[n_merges, 0] = j
        children[n_merges, 1] = i
        n_merges += 1
        n_i = used[i]
        n_j = used[j]
        used[k] = n_i + n_j
        used[i] = 0
        used[j] = 0
        n_out = float(n_i + n_j)
        # merge the two sorted dicts A[i] (a) and A[j] (b), skipping merged keys
        need = length[i] + length[j]
        if need > bk.shape[0]:
            bk = _grow_i(bk, need)
            bv = _grow_f(bv, need)
        nb = 0
        pa = start[i]
        ea = start[i] + length[i]
        pb = start[j]
        eb = start[j] + length[j]
        while pa < ea or pb < eb:
            if pb >= eb or (pa < ea and kpool[pa] < kpool[pb]):
                key = kpool[pa]
                if used[key] != 0:
                    bk[nb] = key
                    bv[nb] = vpool[pa]
                    nb += 1
                pa += 1
            elif pa >= ea or kpool[pb] < kpool[pa]:
                key = kpool[pb]
                if used[key] != 0:
                    bk[nb] = key
                    bv[nb] = vpool[pb]
                    nb += 1
                pb += 1
            else:
                key = kpool[pa]
                if used[key] != 0:
                    va = vpool[pa]
                    vb = vpool[pb]
                    bk[nb] = key
                    if method == 1:
                        bv[nb] = max(va, vb)
                    else:
                        bv[nb] = (n_i * va + n_j * vb) / n_out
                    nb += 1
                pa += 1
                pb += 1
        # A[k] = merged; A[col].append(k, d); push (d, k, col) in key order
        kpool = _grow_i(kpool, top + nb)
        vpool = _grow_f(vpool, top + nb)
        start[k] = top
        length[k] = nb
        capac[k] = nb
        kpool[top : top + nb] = bk[:nb]
        vpool[top : top + nb] = bv[:nb]
        top += nb
        if size + nb > hw.shape[0]:
            hw = _grow_f(hw, size + nb)
            ha = _grow_i(ha, size + nb)
            hb = _grow_i(hb, size + nb)
        for q in range(nb):
            col = bk[q]
            d = bv[q]
            if length[col] == capac[col]:
                newcap = 2 * capac[col] + 4
                kpool = _grow_i(kpool, top + newcap)
                vpool = _grow_f(vpool, top + newcap)
                kpool[top : top + length[col]] = kpool[start[col] : start[col] + length[col]]
                vpool[top : top + length[col]] = vpool[start[col] : start[col] + length[col]]
                start[col] = top
                capac[col] = newcap
                top += newcap
            kpool[start[col] + length[col]] = k
            vpool[start[col] + length[col]] = d
            length[col] += 1
            hw[size] = d
            ha[size] = k
            hb[size] = col
            size += 1
            _siftdown(hw, ha, hb, 0, size - 1, False)
    return children[:n_merges], distances[:n_merges]


@numba.njit(cache=True)
def _cut(children, n_leaves, merge_comp, n_merges_per_comp):
    """Partition after the first ``n_merges_per_comp[c]`` merges of each component ``c``."""
    n_nodes = n_leaves + children.shape[0]
    parent = np.arange(n_nodes, dtype=np.int64)
    done = np.zeros(n_merges_per_comp.shape[0], dtype=np.int64)
    for m in range(children.shape[0]):
        c = merge_comp[m]
        if done[c] < n_merges_per_comp[c]:
            parent[children[m, 0]] = n_leaves + m
            parent[children[m, 1]] = n_leaves + m
            done[c] += 1
    labels = np.full(n_leaves, -1, dtype=np.int64)
    head_label = np.full(n_nodes, -1, dtype=np.int64)
    nxt = 0
    for v in range(n_leaves):
        r = v
        while parent[r] != r:
            r = parent[r]
        if head_label[r] < 0:
            head_label[r] = nxt
            nxt += 1
        labels[v] = head_label[r]
    return labels


@numba.njit(cache=True)
def _merge_components(children, leaf_comp):
    n = leaf_comp.shape[0]
    node_comp = np.empty(n + children.shape[0], dtype=np.int64)
    node_comp[:n] = leaf_comp
    out = np.empty(children.shape[0], dtype=np.int64)
    for m in range(children.shape[0]):
        c = node_comp[children[m, 0]]
        node_comp[n + m] = c
        out[m] = c
    return out


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
        labels = _cut(
            self.children, self.n_leaves, self.merge_component, (leaves - alloc).astype(np.int64)
        )
        return np.asarray(labels)


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
        children, inertia = _ward_loop(indptr, indices, x.astype(np.float64, copy=False), w)
        distances = np.sqrt(2.0 * inertia)
    else:
        rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
        dist = _pairwise_row_distances(x, rows, indices).astype(x.dtype).astype(np.float64)
        children, distances = _linkage_loop(indptr, indices, dist, _LINKAGE_CODE[linkage])
    merge_comp = _merge_components(np.asarray(children), comp)
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
