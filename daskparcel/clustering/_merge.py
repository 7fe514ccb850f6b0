"""The compiled merge loops of the agglomerative methods (scikit-learn's ``ward_tree`` / ``linkage_tree``
with a connectivity, in numba), and the tree cut. They keep scikit-learn's arithmetic and a binary heap that
follows CPython's ``heapq`` step by step, so ties break as scikit-learn breaks them.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, inline="always")
def _copy(dst, at, src, start, n):  # pragma: no cover - compiled
    """``dst[at:at + n] = src[start:start + n]`` element by element (the regions do not overlap). A slice
    assignment would compile numba's shape-mismatch error messages: seconds of the first fit's compilation."""
    for i in range(n):
        dst[at + i] = src[start + i]


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
def _grow(arr, need):
    """``arr`` with room for ``need`` entries (doubled when it grows; numba compiles one per dtype)."""
    if need <= arr.shape[0]:
        return arr
    new = np.empty(max(need, 2 * arr.shape[0]), dtype=arr.dtype)
    _copy(new, 0, arr, 0, arr.shape[0])
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
def _adjacency(indptr, indices, n_nodes, capacity):
    """The graph's neighbour lists in one pool of ``capacity`` keys: (pool, start, length, capacity per
    node, first free position); the merged nodes' lists are added after it."""
    n = indptr.shape[0] - 1
    pool = np.empty(capacity, dtype=np.int64)
    start = np.zeros(n_nodes, dtype=np.int64)
    length = np.zeros(n_nodes, dtype=np.int64)
    capac = np.zeros(n_nodes, dtype=np.int64)
    top = 0
    for i in range(n):
        d = indptr[i + 1] - indptr[i]
        start[i] = top
        length[i] = d
        capac[i] = d
        _copy(pool, top, indices, indptr[i], d)
        top += d
    return pool, start, length, capac, top


@numba.njit(cache=True, inline="always")
def _pop_live(hw, ha, hb, size, used, lexi):
    """Pop heap entries until one joins two live nodes (``used`` nonzero): (size, found, weight, i, j)."""
    w = 0.0
    i = 0
    j = 0
    while size > 0:
        size -= 1
        lw, la, lb = hw[size], ha[size], hb[size]
        if size > 0:
            w, i, j = hw[0], ha[0], hb[0]
            hw[0], ha[0], hb[0] = lw, la, lb
            _siftup(hw, ha, hb, size, 0, lexi)
        else:
            w, i, j = lw, la, lb
        if used[i] != 0 and used[j] != 0:
            return size, True, w, i, j
    return size, False, w, i, j


@numba.njit(cache=True, inline="always")
def _reserve(hw, ha, hb, need):
    """The heap arrays with room for ``need`` entries."""
    if need > hw.shape[0]:
        return _grow(hw, need), _grow(ha, need), _grow(hb, need)
    return hw, ha, hb


@numba.njit(cache=True, inline="always")
def _push(hw, ha, hb, size, w, a, b, lexi):
    """Push (w, a, b) on a heap of ``size`` entries with room for it; returns the new size."""
    hw[size] = w
    ha[size] = a
    hb[size] = b
    _siftdown(hw, ha, hb, 0, size, lexi)
    return size + 1


@numba.njit(cache=True, inline="always")
def _keep_live(keys, values, n, key, value, used):
    """Append (key, value) at ``n`` when ``key`` is a live node; returns the new count."""
    if used[key] == 0:
        return n
    keys[n] = key
    values[n] = value
    return n + 1


@numba.njit(cache=True)
def _heap_arrays(indptr, indices):
    """Empty heap arrays (weights, first node, second node) with room for twice the graph's edges."""
    n = indptr.shape[0] - 1
    m = 0
    for i in range(n):
        for p in range(indptr[i], indptr[i + 1]):
            if indices[p] < i:
                m += 1
    hcap = max(16, 2 * m)
    return np.empty(hcap), np.empty(hcap, dtype=np.int64), np.empty(hcap, dtype=np.int64)


@numba.njit(cache=True)
def ward_loop(indptr, indices, x, weights):
    """scikit-learn's ward_tree merge loop (with connectivity). Returns children, inertias."""
    n = indptr.shape[0] - 1
    n_nodes = 2 * n - 1
    n_features = x.shape[1]
    m1 = np.zeros(n_nodes)
    _copy(m1, 0, weights, 0, n)
    # moments of order 2, stored in slots: a merged node reuses its first child's slot
    m2 = np.empty((n, n_features))
    for i in range(n):
        for f in range(n_features):
            m2[i, f] = x[i, f] * weights[i] if weights[i] != 1.0 else x[i, f]
    slot = np.empty(n_nodes, dtype=np.int64)
    for i in range(n):
        slot[i] = i

    pool, start, length, capac, top = _adjacency(
        indptr, indices, n_nodes, 2 * (indices.shape[0] + 16)
    )
    # initial heap: (inertia, ind, r) for r < ind, in CSR order, then heapify
    hw, ha, hb = _heap_arrays(indptr, indices)
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
        size, found, inert, i, j = _pop_live(hw, ha, hb, size, used, True)
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
                        buf = _grow(buf, nb + 1)
                    buf[nb] = r
                    nb += 1
        # A[k] = heads; A[col].append(k)
        pool = _grow(pool, top + nb)
        start[k] = top
        length[k] = nb
        capac[k] = nb
        _copy(pool, top, buf, 0, nb)
        top += nb
        for q in range(nb):
            col = buf[q]
            if length[col] == capac[col]:
                newcap = 2 * capac[col] + 4
                pool = _grow(pool, top + newcap)
                _copy(pool, top, pool, start[col], length[col])
                start[col] = top
                capac[col] = newcap
                top += newcap
            pool[start[col] + length[col]] = k
            length[col] += 1
        # push the new inertias
        hw, ha, hb = _reserve(hw, ha, hb, size + nb)
        for q in range(nb):
            col = buf[q]
            size = _push(hw, ha, hb, size, _ward_pair(m1, m2, slot, k, col), k, col, True)
    return children[:n_merges], inertias[:n_merges]


@numba.njit(cache=True)
def linkage_loop(indptr, indices, dist, method):
    """scikit-learn's linkage_tree merge loop for complete (1) / average (2) linkage."""
    n = indptr.shape[0] - 1
    n_nodes = 2 * n - 1
    kpool, start, length, capac, top = _adjacency(
        indptr, indices, n_nodes, 2 * indices.shape[0] + 16
    )
    vpool = np.empty(kpool.shape[0])  # the distances, beside their keys
    for i in range(n):
        _copy(vpool, start[i], dist, indptr[i], length[i])
    hw, ha, hb = _heap_arrays(indptr, indices)
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
        size, found, w, i, j = _pop_live(hw, ha, hb, size, used, False)
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
            bk = _grow(bk, need)
            bv = _grow(bv, need)
        nb = 0
        pa = start[i]
        ea = start[i] + length[i]
        pb = start[j]
        eb = start[j] + length[j]
        while pa < ea or pb < eb:
            if pb >= eb or (pa < ea and kpool[pa] < kpool[pb]):
                nb = _keep_live(bk, bv, nb, kpool[pa], vpool[pa], used)
                pa += 1
            elif pa >= ea or kpool[pb] < kpool[pa]:
                nb = _keep_live(bk, bv, nb, kpool[pb], vpool[pb], used)
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
        kpool = _grow(kpool, top + nb)
        vpool = _grow(vpool, top + nb)
        start[k] = top
        length[k] = nb
        capac[k] = nb
        _copy(kpool, top, bk, 0, nb)
        _copy(vpool, top, bv, 0, nb)
        top += nb
        hw, ha, hb = _reserve(hw, ha, hb, size + nb)
        for q in range(nb):
            col = bk[q]
            d = bv[q]
            if length[col] == capac[col]:
                # drop the merged nodes from A[col] first (they would only be skipped later): a node beside a
                # growing cluster gets its new id at each of its merges, and its list grew without bound
                # (average linkage on a whole brain: 29k voxels, 3.9 GB)
                live = start[col]
                for p in range(start[col], start[col] + length[col]):
                    if used[kpool[p]] != 0:
                        kpool[live] = kpool[p]
                        vpool[live] = vpool[p]
                        live += 1
                length[col] = live - start[col]
            if length[col] == capac[col]:
                newcap = 2 * capac[col] + 4
                kpool = _grow(kpool, top + newcap)
                vpool = _grow(vpool, top + newcap)
                _copy(kpool, top, kpool, start[col], length[col])
                _copy(vpool, top, vpool, start[col], length[col])
                start[col] = top
                capac[col] = newcap
                top += newcap
            kpool[start[col] + length[col]] = k
            vpool[start[col] + length[col]] = d
            length[col] += 1
            size = _push(hw, ha, hb, size, d, k, col, False)
    return children[:n_merges], distances[:n_merges]


@numba.njit(cache=True)
def cut(children, n_leaves, merge_comp, n_merges_per_comp):
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
def merge_components(children, leaf_comp):
    n = leaf_comp.shape[0]
    node_comp = np.empty(n + children.shape[0], dtype=np.int64)
    _copy(node_comp, 0, leaf_comp, 0, n)
    out = np.empty(children.shape[0], dtype=np.int64)
    for m in range(children.shape[0]):
        c = node_comp[children[m, 0]]
        node_comp[n + m] = c
        out[m] = c
    return out
