"""Streamed reads of gzipped NIfTI runs: one sequential inflate per run, blocks smoothed on several threads.

A ``.nii.gz`` can only be inflated in order, so a pass over all its volumes is one task per run
(:func:`stream_smoothed`: smooth, mask and write the run to the signals store), runs in parallel.

**The default mask in the same read.** With no mask given, nilearn's EPI mask needs each run's temporal
mean, which was a whole read of every run (inflate and sum) before the signals pass inflated every run
again. A gzipped run is now inflated once for both (:func:`plan_streamed_mask`, then
:func:`streamed_mask_pass`):

1. the mask step reads only each run's first block of volumes and takes a *superset* of where the mask can
   be: the EPI mask of that block's mean (same cutoffs, no connected-component step), dilated by
   :data:`SUPERSET_DILATION` voxels, united over the runs;
2. one task per run inflates it, sums its volumes in float64 (its mean image, as the mask pass computed it)
   and writes the smoothed signals of the superset's voxels to a scratch store;
3. the mask is computed from the means exactly as before (:func:`~daskparcel.preprocessing.masking.mask_of_means`);
4. each run's mask rows are copied from the scratch store into the signals store (:func:`copy_rows`), by the
   same blocks as :func:`stream_smoothed` takes them, so the store is byte for byte the one of the two
   passes.

The superset is a guess that the data check: if the mask has a voxel outside it (a first block unlike the
rest of the run), the scratch store is dropped and every run is streamed again, as before. Only the
voxels' values come from the superset; the mask never depends on it.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import shutil
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import numpy as np
import zarr
from scipy import ndimage

from daskparcel._dask import local_cores
from daskparcel.ingest.nifti import NiftiVolumes
from daskparcel.preprocessing.smoothing import smooth_block
from daskparcel.store.runs import quiet_zarr
from daskparcel.store.signals import SIGNALS_COMPRESSORS, RunInput, store_time_chunk

logger = logging.getLogger(__name__)

#: Voxels the first block's EPI mask is dilated by to make the superset of the run's mask.
SUPERSET_DILATION = 2
#: No superset is taken when it would hold more than this share of the grid (the scratch store would then
#: cost about what the second inflate saves).
SUPERSET_MAX_FRACTION = 0.5


class Moments:
    """Per-voxel mean and sum of squared deviations, merged block by block (Chan et al.'s parallel formula)."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None

    def add(self, block: np.ndarray) -> None:
        x = block.astype(np.float64)
        n_b = x.shape[1]
        mean_b = x.mean(axis=1)
        m2_b = ((x - mean_b[:, None]) ** 2).sum(axis=1)
        if self.mean is None or self.m2 is None:
            self.n, self.mean, self.m2 = n_b, mean_b, m2_b
            return
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + delta**2 * (self.n * n_b / n)
        self.n = n

    def result(self, ddof: int) -> np.ndarray:
        assert self.mean is not None and self.m2 is not None
        std = np.sqrt(self.m2 / max(self.n - ddof, 1))
        return np.stack([self.mean, std], axis=1)


def gzipped_volumes(run: RunInput) -> NiftiVolumes | None:
    """The run's gzipped NIfTI file, when its ``bold`` is that file's volumes untouched (else None)."""
    if run.nifti is None:
        return None
    volumes = NiftiVolumes(run.nifti)
    if not volumes.gzipped or volumes.shape != tuple(run.data["bold"].shape):
        return None
    return volumes


def threads_per_stream(n_streams: int) -> int:
    """Smoothing threads for each streamed run: the local threaded scheduler's cores shared among the runs
    streamed at once (1 on a distributed cluster, whose workers run one task per thread)."""
    try:
        from distributed import default_client

        default_client()
        return 1
    except (ImportError, ValueError):
        pass
    if dask.config.get("scheduler", "threads") not in ("threads", "threading"):
        return 1
    return max(1, local_cores() // max(1, n_streams))


def ordered_map(fn: Callable[[Any], Any], items: Iterable[Any], threads: int) -> Iterator[Any]:
    """``map(fn, items)`` in order, with ``threads`` threads and at most ``threads + 1`` items in flight."""
    if threads <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(threads) as pool:
        pending: deque[Future[Any]] = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def write_blocks(
    blocks: Iterable[np.ndarray], store: str, path: str, store_time: int, ddof: int | None = None
) -> int:
    """Write (voxel, time) blocks, in time order, to the array ``path`` of ``store`` by whole zarr chunks of
    ``store_time`` volumes; with ``ddof``, also each voxel's mean and standard deviation (merged block by
    block) to ``zscore/<run>`` beside it. Returns the number of volumes written."""
    with quiet_zarr():
        target = zarr.open_array(store, path=path, mode="r+", zarr_format=3)
    moments = Moments() if ddof is not None else None
    pending: list[np.ndarray] = []
    written = n = 0
    for block in blocks:
        if moments is not None:
            moments.add(block)
        pending.append(block)
        n += block.shape[1]
        if n - written >= store_time or n == target.shape[1]:
            target[:, written:n] = np.concatenate(pending, axis=1)
            pending, written = [], n
    if moments is not None:
        with quiet_zarr():
            run = path.rsplit("/", 1)[-1]
            stats = zarr.open_array(store, path=f"zscore/{run}", mode="r+", zarr_format=3)
        stats[:] = moments.result(ddof or 0)
    return n


def stream_smoothed(
    volumes: NiftiVolumes,
    store: str,
    run: str,
    mask: np.ndarray,
    sigma: np.ndarray | None,
    fast: bool,
    time_chunk: int,
    store_time: int,
    ddof: int | None = None,
    threads: int = 1,
) -> int:
    """Pass 1 for a gzipped run, as one task: stream its volumes once, smooth and mask each block of
    ``time_chunk`` volumes, and write them to ``smoothed/<run>`` (:func:`write_blocks`).

    One thread inflates (inside ``volumes.stream``) while ``threads`` threads smooth blocks, at most
    ``threads + 1`` blocks in flight; results are taken in order, so the values do not depend on ``threads``."""

    def smooth(item: tuple[int, np.ndarray]) -> np.ndarray:
        return smooth_block(item[1], sigma, fast, mask=mask)

    blocks = ordered_map(smooth, volumes.stream(time_chunk), threads)
    return write_blocks(blocks, store, f"smoothed/{run}", store_time, ddof)


# --------------------------------------------------------------------------------------------------
# the default EPI mask in the signals pass's read


@dataclass
class StreamedMask:
    """A default EPI mask still to compute, in the signals pass's read of its gzipped runs
    (:func:`plan_streamed_mask`)."""

    #: Where the mask can be (x, y, z): the smoothed signals of these voxels are kept until the mask is known.
    superset: np.ndarray
    #: ``compute_multi_epi_mask``'s arguments (the user's ``mask_args``).
    args: dict[str, Any]
    #: How errors name each run (its file).
    labels: list[str]
    affines: list[np.ndarray]
    #: Where the computed mask is kept (the mask cache of :func:`~daskparcel.preprocessing.pipeline.run_mask`).
    cache: Path

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.superset.shape)


def superset_arguments(mask_args: dict[str, Any] | None) -> dict[str, Any] | None:
    """``epi_mask_from_mean``'s arguments for a run's superset (its cutoffs, no connected-component step), or
    None when ``mask_args`` resamples the mask to another grid or is not ``compute_multi_epi_mask``'s (the
    two-pass path then computes, or refuses, it)."""
    from daskparcel.preprocessing.masking import compute_multi_epi_mask

    params = inspect.signature(compute_multi_epi_mask).parameters
    args = dict(mask_args or {})
    if set(args) - set(params) - {"bolds", "affine"}:
        return None
    merged = {k: p.default for k, p in params.items() if p.default is not p.empty} | args
    if merged["target_affine"] is not None or merged["target_shape"] is not None:
        return None
    merged.pop("threshold")
    return merged | {"connected": False}


def first_block_mean(volumes: NiftiVolumes, n_volumes: int) -> np.ndarray:
    """The mean image of a run's first ``n_volumes`` volumes (only they are inflated)."""
    with contextlib.closing(volumes.stream(n_volumes)) as stream:
        _, block = next(stream)
    return block.mean(axis=3, dtype=np.float64)


def plan_streamed_mask(
    runs: Sequence[RunInput],
    affine: np.ndarray,
    mask_args: dict[str, Any] | None,
    labels: Sequence[str],
    cache: Path,
) -> StreamedMask | None:
    """The EPI mask of ``runs`` to compute in the signals pass's read, or None when it cannot be: a run is not
    an untouched ``.nii.gz``, ``mask_args`` change the grid, or the superset is empty or most of the grid.

    Reads each run's first block of volumes (one task per run)."""
    from daskparcel.preprocessing.masking.strategies import epi_mask_from_mean

    args = superset_arguments(mask_args)
    if args is None:
        return None
    gzipped = [gzipped_volumes(run) for run in runs]
    if any(v is None for v in gzipped):
        return None
    shape = runs[0].data["bold"].shape[:3]
    if any(run.data["bold"].shape[:3] != shape for run in runs):
        return None
    chunks = [int(run.data["bold"].data.chunks[3][0]) for run in runs]
    means = dask.compute(
        *[dask.delayed(first_block_mean)(v, k) for v, k in zip(gzipped, chunks, strict=True)]
    )
    superset = np.zeros(shape, bool)
    for mean in means:
        with np.errstate(invalid="ignore"):
            superset |= epi_mask_from_mean(np.asarray(mean), affine, **args)
    superset = ndimage.binary_dilation(superset, iterations=SUPERSET_DILATION)
    if not superset.any() or superset.mean() > SUPERSET_MAX_FRACTION:
        return None
    logger.debug("mask: superset of %d voxels from the runs' first blocks", int(superset.sum()))
    affines = [np.asarray(affine, dtype=float)] * len(runs)
    return StreamedMask(superset, dict(mask_args or {}), list(labels), affines, cache)


def keep_mask(path: Path, mask: np.ndarray) -> None:
    """Save a computed mask to the mask cache, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial.npy")
    np.save(partial, np.asarray(mask, dtype=bool))
    os.replace(partial, path)


def stream_superset(
    volumes: NiftiVolumes,
    store: str,
    run: str,
    superset: np.ndarray,
    sigma: np.ndarray | None,
    fast: bool,
    time_chunk: int,
    store_time: int,
    threads: int = 1,
) -> np.ndarray:
    """:func:`stream_smoothed` of the superset's voxels into ``superset/<run>`` of the scratch store, which
    also sums the volumes (float64, block by block in order): returns the run's mean image."""
    total = np.zeros(volumes.shape[:3], dtype=np.float64)

    def smooth(item: tuple[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        block = item[1]
        return block.sum(axis=3, dtype=np.float64), smooth_block(block, sigma, fast, mask=superset)

    def blocks() -> Iterator[np.ndarray]:
        for part, signals in ordered_map(smooth, volumes.stream(time_chunk), threads):
            np.add(total, part, out=total)
            yield signals

    write_blocks(blocks(), store, f"superset/{run}", store_time)
    return total / volumes.shape[3]


def copy_rows(
    scratch: str,
    run: str,
    rows: np.ndarray,
    store: str,
    time_chunk: int,
    store_time: int,
    ddof: int | None = None,
) -> int:
    """Pass 1 of a run streamed with its mask's superset: its ``rows`` of ``superset/<run>`` into
    ``smoothed/<run>``, in blocks of ``time_chunk`` volumes (as :func:`stream_smoothed` writes them, so the
    z-scoring moments are merged in the same order)."""
    with quiet_zarr():
        source = zarr.open_array(scratch, path=f"superset/{run}", mode="r", zarr_format=3)

    def blocks() -> Iterator[np.ndarray]:
        for start in range(0, source.shape[1], store_time):
            block = np.asarray(source[:, start : start + store_time])[rows]
            for t in range(0, block.shape[1], time_chunk):
                yield block[:, t : t + time_chunk]

    return write_blocks(blocks(), store, f"smoothed/{run}", store_time, ddof)


@contextlib.contextmanager
def streamed_mask_pass(
    plan: StreamedMask,
    runs: Sequence[RunInput],
    sigma: np.ndarray | None,
    fast: bool,
    time_chunk: int,
    voxel_chunk: int,
    cache_dir: Path,
) -> Iterator[tuple[np.ndarray, dict[str, tuple[str, np.ndarray]]]]:
    """Stream every run once (:func:`stream_superset`), compute the mask from the means and keep it in the
    cache; yields ``(mask, copies)``, ``copies`` mapping each run to its scratch store and the mask's rows in
    its superset (empty when the mask is not inside the superset: the runs must then be streamed again).
    The scratch store is removed when the block ends, whatever happens."""
    from daskparcel.preprocessing.masking import mask_of_means

    n_superset = int(plan.superset.sum())
    scratch = Path(tempfile.mkdtemp(prefix="streamed-", suffix=".zarr", dir=cache_dir))
    try:
        tasks = []
        threads = threads_per_stream(len(runs))
        for run in runs:
            store_time = store_time_chunk(time_chunk, run.n_time)
            with quiet_zarr():
                zarr.create_array(
                    str(scratch), name=f"superset/{run.name}", shape=(n_superset, run.n_time),
                    dtype=np.float32, chunks=(min(voxel_chunk, n_superset), store_time),
                    compressors=SIGNALS_COMPRESSORS,
                )  # fmt: skip
            volumes = gzipped_volumes(run)
            assert volumes is not None  # plan_streamed_mask took only untouched .nii.gz runs
            tasks.append(
                dask.delayed(stream_superset, pure=False)(
                    volumes,
                    str(scratch),
                    run.name,
                    plan.superset,
                    sigma,
                    fast,
                    time_chunk,
                    store_time,
                    threads,
                )
            )
        logger.info("signals: streaming %d run(s) once for the mask and the signals", len(runs))
        means = dask.compute(*tasks)
        mask = mask_of_means(means, plan.labels, plan.affines, "epi", dict(plan.args))
        keep_mask(plan.cache, mask)
        outside = int((mask & ~plan.superset).sum())
        if outside:
            logger.info(
                "mask: %d voxel(s) outside the superset of the runs' first blocks; streaming the runs "
                "again for their signals",
                outside,
            )
            yield mask, {}
            return
        rows = np.flatnonzero(mask[plan.superset])
        yield mask, {run.name: (str(scratch), rows) for run in runs}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
