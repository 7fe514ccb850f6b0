"""Helpers for testing and measuring daskparcel (used by its tests and benchmarks; useful to users' tests).

- :func:`raise_if_dask_computes` / :class:`CountingScheduler`: prove that building a graph computes nothing
  (or at most N times), as xarray's tests do.
- :class:`RaiseOnRead`: an array that raises if anything reads it, to prove laziness end to end.
- :func:`requires`: a pytest ``skipif`` marker for an optional package, with the pip extra that provides it.
- :func:`peak_rss`: a process's peak resident memory (for the memory checks of tests and benchmarks).
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from typing import Any

import dask
import numpy as np


class CountingScheduler:
    """A dask scheduler that counts computes and raises past ``max_computes``."""

    def __init__(self, max_computes: int = 0) -> None:
        self.total_computes = 0
        self.max_computes = max_computes

    def __call__(self, dsk: Any, keys: Any, **kwargs: Any) -> Any:
        self.total_computes += 1
        if self.total_computes > self.max_computes:
            raise RuntimeError(
                f"Too many computes: {self.total_computes} > {self.max_computes} (the graph should be lazy)"
            )
        return dask.get(dsk, keys, **kwargs)


@contextlib.contextmanager
def raise_if_dask_computes(max_computes: int = 0) -> Iterator[CountingScheduler]:
    """Fail if anything inside the block computes more than ``max_computes`` times."""
    scheduler = CountingScheduler(max_computes)
    with dask.config.set(scheduler=scheduler):
        yield scheduler


class ReadError(AssertionError):
    """Raised by :class:`RaiseOnRead` when its data are read."""


class RaiseOnRead:
    """An array-like of a given shape and dtype that raises :class:`ReadError` when read.

    Wrap it with ``dask.array.from_array(RaiseOnRead(shape), chunks=..., meta=np.empty((0,) * ndim))`` and
    anything that builds a graph on it stays silent, while anything that reads it fails.
    """

    def __init__(self, shape: tuple[int, ...], dtype: Any = np.float32) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        raise ReadError(f"the data were read ({key!r}) where nothing should read them")

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        raise ReadError("the data were read (converted to numpy) where nothing should read them")


def requires(module: str, extra: str | None = None) -> Any:
    """A pytest marker skipping a test when ``module`` cannot be imported, saying how to install it."""
    import pytest

    how = f'pip install "daskparcel[{extra}]"' if extra else f"pip install {module}"
    return pytest.mark.skipif(
        importlib.util.find_spec(module) is None, reason=f"{module} is not installed ({how})"
    )


requires_jobqueue = requires("dask_jobqueue", "slurm")
requires_niizarr = requires("niizarr", "test")
requires_nbclient = requires("nbclient", "test")


def peak_rss() -> int:
    """This process's peak resident memory since it started, in bytes (Linux ``VmHWM``; 0 elsewhere).

    Run it on workers (``client.run(peak_rss)``) to see how close each came to its ``memory_limit``;
    ``resource.getrusage(...).ru_maxrss`` would also count the process a spawned worker was forked from.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
