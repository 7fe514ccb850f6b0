"""Out-of-core SVD building blocks: Gram matrices tree-summed over voxel blocks, their top eigenvectors, and the
randomized range finder over a tall (voxel, column) array in separate passes, one pass per power iteration for
the stacked per-run components (:func:`stacked_svd`). :mod:`daskparcel.reduction` runs them."""

from __future__ import annotations

import logging
from typing import Any

import dask
import dask.array as da
import numpy as np

from daskparcel import config
from daskparcel._dask import gather_rows, tree_sum

logger = logging.getLogger(__name__)

__all__ = [
    "block_gram",
    "exact_max_columns",
    "passes_left_singular",
    "project",
    "stacked_svd",
    "tall_array",
    "top_eig",
    "tree_gram",
]


def exact_max_columns() -> int:
    """Runs (and the stacked group matrix) with at most this many columns get an exact SVD."""
    return int(config.get("reduction.exact-max-columns"))


def top_eig(gram: np.ndarray, k: int, rtol: float = 1e-7) -> tuple[np.ndarray, np.ndarray]:
    """Right singular vectors over singular values (0 where a value is 0), and singular values.

    From the eigendecomposition of the (small) Gram matrix; each vector's largest entry is made
    positive so that the signs do not depend on rounding. Singular values below ``rtol`` times the
    largest count as 0.
    """
    w, v = np.linalg.eigh(np.asarray(gram, dtype=np.float64))
    w, v = w[::-1][:k], v[:, ::-1][:, :k]
    s = np.sqrt(np.maximum(w, 0.0))
    largest = np.abs(v).argmax(axis=0)
    v = v * np.sign(v[largest, np.arange(v.shape[1])])
    # singular values below the Gram matrix's rounding are zero (a rank-deficient block)
    if s.size:
        s = np.where(s > s[0] * rtol, s, 0.0)
    scale = np.divide(1.0, s, out=np.zeros_like(s), where=s > 0)
    return v * scale, s


#: Singular values below this times the largest count as 0 when the Gram matrix was multiplied in float32: its
#: rounding (~4e-7 of the largest eigenvalue in spectral norm on the 10-subject 2 mm group, whose smallest
#: kept singular value is 0.5 of the largest) gives the null directions of a rank-deficient matrix (a run
#: given twice) singular values of ~1.6e-4 of the largest, which must not become unit-norm noise features.
FLOAT32_GRAM_RTOL = 1e-2


def block_gram(block: np.ndarray, dtype: Any = np.float64) -> np.ndarray:
    """``block.T @ block`` of a (rows, columns) block with BLAS syrk (numpy picks it for ``a.T @ a``: half
    the flops of a general product), multiplied in ``dtype``, returned in float64.

    float64 by default, although the signals are float32: products of float32 values are exact in float64,
    so Grams summed over different chunkings differ only in the last bits, and the labels of the
    tie-sensitive agglomerative methods stay the same on any chunking (float32 products flipped a few voxels).
    float32 (2.8x faster) is for the group SVD of many runs, whose columns are unit-norm components.
    """
    b = np.ascontiguousarray(block, dtype=dtype)
    return np.asarray(b.T @ b, dtype=np.float64)


def tree_gram(x: da.Array, dtype: Any = np.float64) -> Any:
    """The (columns, columns) Gram matrix of a tall array as a delayed tree sum of per-block Grams, each
    multiplied in ``dtype`` and summed in float64."""
    parts = [
        dask.delayed(block_gram, pure=True)(b, dtype)
        for b in x.rechunk({1: -1}).to_delayed().ravel()
    ]
    return tree_sum(parts, 8 * x.shape[1] ** 2)


def project(x: da.Array, right: np.ndarray, dtype: Any = np.float64) -> da.Array:
    """``x @ right`` in ``dtype``, ``right`` one shared chunk (not copied into every task)."""
    shared = da.from_array(np.asarray(right, dtype=dtype), chunks=right.shape)
    return x.rechunk({1: -1}).astype(dtype) @ shared


def tall_array(group: Any, name: str, n_rows: int, n_cols: int, row_chunk: int) -> Any:
    """A (voxel, column) float32 scratch array of ``group``, uncompressed: SVD factors do not compress, and
    each pass over them would pay the codec."""
    return group.create_array(
        name, shape=(n_rows, n_cols), dtype=np.float32, chunks=(row_chunk, n_cols),
        compressors=None, overwrite=True,
    )  # fmt: skip


def exact_left_singular(
    x: da.Array, k: int, dtype: Any = np.float64, *, what: str = "array"
) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` left singular vectors ``u`` of a tall array from its Gram matrix (one pass), multiplied in
    ``dtype`` (a second pass), and ``x.T @ u`` (float64, (columns, k)), which the Gram matrix gives without a
    pass: ``x.T @ x @ V / S = V S``."""
    logger.debug("%s: exact SVD of %d x %d in 2 passes", what, *x.shape)
    (gram,) = dask.compute(tree_gram(x, dtype))
    rtol = FLOAT32_GRAM_RTOL if np.dtype(dtype) == np.float32 else 1e-7
    w, _ = top_eig(gram, k, rtol=rtol)
    return gather_rows(project(x, w, dtype)), gram @ w


def passes_left_singular(
    x: da.Array,
    k: int,
    *,
    n_power_iter: int,
    seed: int,
    what: str,
    scratch: Any = None,
    exact_dtype: Any = np.float64,
) -> np.ndarray:
    """Top ``k`` left singular vectors of a tall (voxel, column) array, in separate passes over ``x``.

    Each pass is its own compute, so no task keeps ``x``'s chunks between passes. Exact (Gram matrix) up to
    ``exact-max-columns`` columns, else Halko's randomized range finder with ``n_power_iter`` power
    iterations (what ``svd_compressed`` does, written as passes). The exact path multiplies in
    ``exact_dtype`` (float64 by default; float32 for the group of unit-norm run components, whose top
    subspace it gives to 0.01 degree, with :data:`FLOAT32_GRAM_RTOL`); the randomized one multiplies in
    float32 (the signals' precision; BLAS is 2.5x faster), with sums and factorisations of the small matrices
    in float64 (its range, orthonormalised blockwise, depends on the chunking in the last bits anyway).

    With a zarr group ``scratch``, the tall (voxel, k + 10) factors of the randomized path are written there
    by the workers and orthonormalised blockwise (dask's TSQR), so this process holds only (column, k)
    matrices until the result; without it they are gathered here.
    """
    n_rows, n_cols = x.shape
    if n_cols <= exact_max_columns():
        return exact_left_singular(x, k, exact_dtype, what=what)[0]
    x32 = x.rechunk({1: -1}).astype(np.float32)
    n_oversample = min(n_cols, k + 10)
    logger.debug(
        "%s: randomized SVD of %d x %d, rank %d, in %d passes",
        what,
        n_rows,
        n_cols,
        k,
        2 * n_power_iter + 2,
    )
    omega = np.random.default_rng(seed).standard_normal((n_cols, n_oversample))
    row_chunks = x32.chunks[0]
    if scratch is None:

        def orthonormal_range(right: np.ndarray) -> da.Array:  # q of x @ right: one pass, QR here
            q, _ = np.linalg.qr(gather_rows(project(x32, right, np.float32)).astype(np.float64))
            return da.from_array(q.astype(np.float32), chunks=(row_chunks, -1))

    else:
        tall = tall_array(scratch, "range", n_rows, n_oversample, row_chunks[0])

        def orthonormal_range(
            right: np.ndarray,
        ) -> da.Array:  # q of x @ right: one pass, QR blockwise
            da.store(project(x32, right, np.float32), tall, lock=False)
            q, _ = da.linalg.tsqr(da.from_zarr(tall).astype(np.float64))
            return q.astype(np.float32)

    def transposed_times(q: da.Array) -> np.ndarray:  # x.T @ q, one pass
        return np.asarray(dask.compute(x32.T @ q)[0], dtype=np.float64)

    q = orthonormal_range(omega)
    for _ in range(n_power_iter):
        z, _ = np.linalg.qr(transposed_times(q))
        q = orthonormal_range(z)
    b = transposed_times(q).T  # (oversample, n_cols)
    ub, s, _ = np.linalg.svd(b, full_matrices=False)
    right = ub[:, :k] * (s[:k] > s[0] * 1e-7)
    u = gather_rows(project(q, right, np.float32))
    if scratch is not None:
        del scratch["range"]
    return u


class ZarrRows:
    """Rows ``start:stop`` of zarr arrays side by side, read by the task that multiplies them, on the worker
    that runs it: a block of the stacked components never travels between workers."""

    def __init__(self, arrays: list[Any], start: int, stop: int) -> None:
        self.arrays, self.start, self.stop = arrays, start, stop

    def read(self) -> np.ndarray:
        out = np.empty((self.stop - self.start, sum(a.shape[1] for a in self.arrays)), np.float32)
        column = 0
        for array in self.arrays:
            out[:, column : column + array.shape[1]] = array[self.start : self.stop]
            column += array.shape[1]
        return out


def _fused_pass_block(
    x_block: np.ndarray | ZarrRows, z: np.ndarray, tall: Any, start: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """One voxel block of a fused pass: ``y = x @ z``, and ``[x.T @ y ; y.T @ y]`` (float64) to be summed.

    ``y`` is written to rows ``start:`` of the zarr array ``tall`` when one is given, else returned.
    """
    x = x_block.read() if isinstance(x_block, ZarrRows) else np.asarray(x_block, np.float32)
    y = x @ z
    n_cols = x.shape[1]
    sums = np.empty((n_cols + y.shape[1], y.shape[1]))
    sums[:n_cols] = x.T @ y
    y64 = y.astype(np.float64)
    sums[n_cols:] = y64.T @ y64
    if tall is not None:
        tall[start : start + y.shape[0]] = y
        return sums, None
    return sums, y


def stacked_svd(
    x: da.Array | list[Any], k: int, *, n_power_iter: int, seed: int, scratch: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` left singular vectors ``u`` of the stacked per-run components, in ``n_power_iter + 1``
    passes, and ``x.T @ u`` (float64, (columns, k)), which the last pass gives for free.

    The randomized range finder of :func:`passes_left_singular` (the same subspace in exact arithmetic)
    with each power iteration in one pass over ``x`` instead of two: a task reads a voxel block ``x_b``
    once, computes ``y_b = x_b @ z`` and the block's share of ``x.T @ y`` and ``y.T @ y``. With
    ``y.T @ y = V S^2 V.T``, ``q = y V / S`` is an orthonormal basis of the range of ``y``, and
    ``x.T @ q = (x.T @ y) V / S`` is the next iteration's input: no tall QR and no second pass. The last
    pass also keeps ``y`` (in ``scratch`` when given), and the result is ``y V / S`` times the left
    singular vectors of ``q.T @ x``.

    It squares the condition number of ``y`` (the Gram matrix ``y.T @ y``), which is safe here: the columns of
    ``x`` are blocks of orthonormal vectors, so its singular values lie in [0, sqrt(runs)] and the directions
    kept (singular value above 1e-5 times the largest) are well conditioned. The runs' raw signals are not
    (a large baseline next to small fluctuations); their randomized SVD keeps the QR of
    :func:`passes_left_singular`.

    ``x`` is a dask array, or a list of zarr arrays (voxel, columns) side by side (the runs' stored
    components): then each task reads its rows of them itself (:class:`ZarrRows`). ``x.T @ u`` is
    ``(x.T @ y) @ right``, with ``x.T @ y`` summed in the last pass (:mod:`daskparcel.reduction` weighs the
    features with it, without another read of the signals).
    """
    blocks: list[Any]
    if isinstance(x, da.Array):
        x32 = x.rechunk({1: -1}).astype(np.float32)
        # regular row blocks: each task writes whole chunks of the scratch array, no two tasks the same one
        x32 = x32.rechunk({0: x32.chunks[0][0]})
        (n_rows, n_cols), row_chunk = x32.shape, x32.chunks[0][0]
        blocks = list(x32.to_delayed().ravel())
    else:  # zarr arrays side by side, each block read by the task that uses it
        n_rows, n_cols, row_chunk = x[0].shape[0], sum(a.shape[1] for a in x), x[0].chunks[0]
        blocks = [ZarrRows(x, s, min(s + row_chunk, n_rows)) for s in range(0, n_rows, row_chunk)]
    starts = list(range(0, n_rows, row_chunk))
    n_oversample = min(n_cols, k + 10)
    tall = (
        None if scratch is None else tall_array(scratch, "range", n_rows, n_oversample, row_chunk)
    )

    def fused_pass(z: np.ndarray, keep: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        shared = dask.delayed(np.ascontiguousarray(z, dtype=np.float32), pure=True)
        sums, ys = [], []
        for block, start in zip(blocks, starts, strict=True):
            part, y = dask.delayed(_fused_pass_block, nout=2, pure=False)(
                block, shared, tall if keep else None, start
            )
            sums.append(part)
            ys.append(y)
        total = tree_sum(sums, 8 * (n_cols + z.shape[1]) * z.shape[1])
        if keep and tall is None:
            total, *y_blocks = dask.compute(total, *ys)
            return total[:n_cols], total[n_cols:], np.concatenate(y_blocks, axis=0)
        (total,) = dask.compute(total)
        return total[:n_cols], total[n_cols:], None

    logger.debug(
        "group: randomized SVD of %d x %d, rank %d, in %d fused passes",
        n_rows,
        n_cols,
        k,
        n_power_iter + 1,
    )
    omega = np.random.default_rng(seed).standard_normal((n_cols, n_oversample))
    xty, yty, y = fused_pass(omega, keep=n_power_iter == 0)
    basis, _ = top_eig(yty, n_oversample, rtol=1e-5)  # q = y @ basis is orthonormal
    for i in range(n_power_iter):
        z, _ = np.linalg.qr(xty @ basis)  # x.T @ q, orthonormalised
        xty, yty, y = fused_pass(z, keep=i == n_power_iter - 1)
        basis, _ = top_eig(yty, n_oversample, rtol=1e-5)
    b = (xty @ basis).T  # q.T @ x, (oversample, n_cols)
    ub, s, _ = np.linalg.svd(b, full_matrices=False)
    # directions without energy (zero columns of basis, or s ~ 0) give zero columns, as the exact path
    right = basis @ (ub[:, :k] * (s[:k] > s[0] * 1e-7))
    xtu = xty @ right
    if tall is None:
        assert y is not None
        return (y.astype(np.float64) @ right).astype(np.float32), xtu
    u = gather_rows(project(da.from_zarr(tall), right, np.float32))
    del scratch["range"]
    return u, xtu
