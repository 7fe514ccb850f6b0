"""dask helpers shared by the passes: tree reductions of delayed results and gathering tall arrays."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np


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


def gather_rows(tall: da.Array) -> np.ndarray:
    """Compute a tall (rows, k) array block by block into this process.

    ``dask.compute(tall)`` would concatenate every block in one task, on one worker of a cluster: a
    (voxel x k) float64 peak there (380 MB at 2 mm and k=200), enough to kill a worker with a tight
    memory limit. The blocks come back one by one and are stacked here instead.
    """
    blocks = dask.compute(*tall.rechunk({1: -1}).to_delayed().ravel())
    return np.concatenate([np.asarray(b) for b in blocks], axis=0)
