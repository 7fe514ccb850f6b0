"""dask helpers shared by the passes: tree reductions of delayed results, gathering tall arrays, and moments
merged block by block."""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np

from daskparcel._log import wait_futures

SCATTER_BYTES = (
    2**20
)  # arrays above this size are scattered to a distributed cluster, not put in graphs
GATHER_BYTES = 64 * 2**20  # gather_rows fetches a cluster's blocks in batches of about this size


def tree_reduce(parts: Sequence[Any], combine: Callable[..., Any], split_every: int = 8) -> Any:
    """A delayed tree reduction: ``combine`` takes at most ``split_every`` parts at each node (depth
    log_split_every of the parts), so no task holds more than that many partial results."""
    level = list(parts)
    split_every = max(2, int(split_every))
    while len(level) > 1:
        level = [
            dask.delayed(combine, pure=True)(*level[i : i + split_every])
            for i in range(0, len(level), split_every)
        ]
    return level[0]


def _sum(*parts: np.ndarray) -> np.ndarray:
    total = np.array(parts[0], dtype=np.float64, copy=True)
    for part in parts[1:]:
        total += part
    return total


def tree_sum(parts: Sequence[Any], part_bytes: int, max_bytes: int = 256 * 2**20) -> Any:
    """A delayed tree sum (float64) of delayed arrays of ``part_bytes`` each: every sum takes at most 8
    parts, and at most ``max_bytes`` of them."""
    return tree_reduce(parts, _sum, int(np.clip(max_bytes // (part_bytes or 1), 2, 8)))


def row_windows(blocks: list[np.ndarray], rows: int) -> Any:
    """``(start, rows start:start + rows)`` of the row-wise concatenation of ``blocks``, without making it:
    windows of the same rows whatever the blocks (the last one shorter)."""
    pending: list[np.ndarray] = []
    held = start = 0
    for block in blocks:
        offset = 0
        while offset < len(block):
            piece = block[offset : offset + rows - held]
            pending.append(piece)
            held += len(piece)
            offset += len(piece)
            if held == rows:
                yield start, pending[0] if len(pending) == 1 else np.concatenate(pending)
                start += held
                pending, held = [], 0
    if held:
        yield start, pending[0] if len(pending) == 1 else np.concatenate(pending)


class Moments:
    """Means and sums of squared deviations along ``axis``, merged block by block in the order the blocks come
    (Chan et al.'s parallel formula, in float64): one pass, no float64 copy of the whole data, and the same
    numbers however the blocks were computed (a block's part, :meth:`of`, can be taken on any thread)."""

    def __init__(self, axis: int) -> None:
        self.axis = axis
        self.n = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None

    @staticmethod
    def of(block: np.ndarray, axis: int) -> tuple[int, np.ndarray, np.ndarray]:
        """A block's count, means and sums of squared deviations along ``axis``."""
        x = np.asarray(block, dtype=np.float64)
        mean = x.mean(axis=axis, keepdims=True)
        return x.shape[axis], mean.squeeze(axis), ((x - mean) ** 2).sum(axis=axis)

    def merge(self, part: tuple[int, np.ndarray, np.ndarray]) -> None:
        n_b, mean_b, m2_b = part
        if self.mean is None or self.m2 is None:
            self.n, self.mean, self.m2 = n_b, mean_b, m2_b
            return
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + delta**2 * (self.n * n_b / n)
        self.n = n

    def add(self, block: np.ndarray) -> None:
        self.merge(self.of(block, self.axis))

    def variance(self, ddof: int = 0) -> np.ndarray:
        assert self.m2 is not None
        return self.m2 / max(self.n - ddof, 1)


def gather_rows(tall: da.Array) -> np.ndarray:
    """Compute a tall (rows, k) array block by block into this process.

    ``dask.compute(tall)`` would concatenate every block in one task, on one worker of a cluster: a
    (voxel x k) float64 peak there (380 MB at 2 mm and k=200), enough to kill a worker with a tight
    memory limit. On the local schedulers each task copies its block into the result itself (in parallel:
    the serial concatenation of 2 mm x 200 float32 rows took 0.3 s). On a distributed cluster the blocks
    stay on the workers until all are computed, then come over a few at a time (about
    ``GATHER_BYTES``) into the result, each released once copied: the client holds the result and one
    batch, not every block and their concatenation (twice the result).
    """
    tall = tall.rechunk({1: -1})
    out = np.empty(tall.shape, tall.dtype)
    client = distributed_client()
    if client is None:
        da.store(tall, out, lock=False)
        return out
    futures = client.compute(list(tall.to_delayed().ravel()))
    try:
        wait_futures(futures)
        row_bytes = max(1, out.itemsize * int(np.prod(out.shape[1:])))
        starts = np.cumsum((0, *tall.chunks[0]))

        def window(i: int) -> int:
            """A batch: the blocks that end in one ``GATHER_BYTES`` window of the result."""
            return int(starts[i + 1]) * row_bytes // GATHER_BYTES

        for _, batch in itertools.groupby(range(len(futures)), key=window):
            indices = list(batch)
            for i, block in zip(indices, client.gather([futures[i] for i in indices]), strict=True):
                out[starts[i] : starts[i + 1]] = block
                futures[i].release()
    finally:
        for future in futures:
            future.release()
    return out


def distributed_client() -> Any:
    """The distributed client dask computes on now, or None (a local scheduler)."""
    scheduler = (
        dask.base.get_scheduler()
    )  # a distributed client's ``get`` where dask.compute goes to one
    owner = getattr(scheduler, "__self__", None)
    client = getattr(owner, "client", owner)  # _log.ProgressScheduler draws bars for a client
    return client if type(client).__name__ == "Client" else None


def local_cores() -> int:
    """The threads of the local threaded scheduler: dask's ``num_workers``, else the cores this process may
    run on (its CPU affinity: a process pinned to 2 cores of 16 gets 2)."""
    configured = dask.config.get("num_workers", None)
    if configured:
        return max(1, int(configured))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def task_threads() -> int:
    """Threads a task may use for work it splits itself: its worker's threads on a distributed cluster,
    else :func:`local_cores`."""
    try:
        from distributed import get_worker

        return max(1, int(get_worker().state.nthreads))
    except (ImportError, ValueError):  # not in a worker
        return local_cores()


def shared(value: Any, *, name: str | None = None) -> Any:
    """``value`` (an array that the tasks of one or several graphs read) as one node of dask graphs.

    Computed on a distributed cluster, the value is scattered to the workers once and the graphs refer to it
    by its key: they stay small (distributed warns "Sending large graph" above 10 MB, and ships the graph
    through the scheduler) and no copy travels with each graph. On the local schedulers it is a delayed.

    Each call scatters under a new key (``hash=False``): under a key hashed from the data, an array scattered
    again right after its previous copy was released (hierarchical kmeans between its two levels, two fits of
    the same features) could meet that release on the worker, and the tasks failed with "lost dependencies".
    """
    client = distributed_client()
    if client is not None and getattr(value, "nbytes", 0) > SCATTER_BYTES:
        return client.scatter(value, hash=False)
    return dask.delayed(value, pure=True, name=name)


def shared_many(values: Sequence[Any]) -> list[Any]:
    """Arrays that many tasks of one graph read, each small but MBs together (ReNA's per-block edge lists
    at 2 mm): scattered to a distributed cluster in one call when they pass ``SCATTER_BYTES`` together, so
    the graph stays small; unchanged on the local schedulers."""
    client = distributed_client()
    if client is None or sum(getattr(v, "nbytes", 0) for v in values) <= SCATTER_BYTES:
        return list(values)
    return list(client.scatter(list(values), hash=False))


def numpy_views(
    arr: np.ndarray, chunks: Any = "auto", name: str | None = None, *, read_only: bool = False
) -> da.Array:
    """A dask array whose blocks are views of ``arr`` (no copy), named ``name`` (a random name if None).

    ``da.from_array`` copies a numpy array whole before it chunks it, and hashes its bytes for a name: for
    a user's in-memory 2 mm run (1 GB at 300 volumes), one more GB held for the whole fit. The blocks share
    ``arr``'s memory, so ``arr`` must not change while the array is in use; ``read_only`` views (a user's
    data) make any task that would write into them fail instead of changing ``arr``.
    """
    chunks = da.core.normalize_chunks(chunks, arr.shape, dtype=arr.dtype)
    name = name or f"from-numpy-{uuid.uuid4().hex}"
    keys = itertools.product([name], *(range(len(c)) for c in chunks))
    slices = da.core.slices_from_chunks(chunks)
    views = {key: arr[where] for key, where in zip(keys, slices, strict=True)}
    if read_only:
        for view in views.values():
            view.flags.writeable = False
    return da.Array(views, name, chunks, dtype=arr.dtype)


def user_array(arr: np.ndarray, chunks: Any, prefix: str) -> tuple[da.Array, str]:
    """A user's in-memory run as read-only :func:`numpy_views` named ``<prefix>-<token>``, and that token (a
    hash of its values: the run's identity)."""
    token = dask.base.tokenize(arr)
    return numpy_views(arr, chunks, name=f"{prefix}-{token}", read_only=True), token


def from_numpy(arr: np.ndarray, chunks: Any = "auto") -> da.Array:
    """``da.from_array(arr, chunks)``, whose blocks, on a distributed cluster, are scattered to the workers
    rather than shipped inside every graph that uses them (see :func:`shared`).

    Locally its blocks are views of ``arr`` under a random name: ``da.from_array`` copies the array, and names
    it by hashing its bytes (each 0.07-0.2 s for 2 mm x 200 float32 components, on one core, at every call).
    """
    arr = np.asarray(arr)
    x = numpy_views(arr, chunks)
    client = distributed_client()
    if client is None or arr.nbytes <= SCATTER_BYTES or any(len(c) > 1 for c in x.chunks[1:]):
        return x
    bounds = np.cumsum((0, *x.chunks[0]))
    pieces = [arr[a:b] for a, b in itertools.pairwise(bounds)]
    futures = client.scatter(pieces, hash=False)
    blocks = [
        da.from_delayed(dask.delayed(f), shape=p.shape, dtype=arr.dtype)
        for f, p in zip(futures, pieces, strict=True)
    ]
    return da.concatenate(blocks, axis=0) if len(blocks) > 1 else blocks[0]
