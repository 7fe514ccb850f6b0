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
from daskparcel.store.signals import RunInput, store_time_chunk

logger = logging.getLogger(__name__)

#: Voxels the first block's EPI mask is dilated by to make the superset of the run's mask.
SUPERSET_DILATION = 2
#: No superset is taken when it would hold more than this share of the grid (the scratch store would then
#: cost about what the second inflate saves).
SUPERSET_MAX_FRACTION = 0.5
#: Bytes a zarr write or copy handles at once: under glibc's largest mmap threshold (32 MiB), so buffers are
#: reused from the heap; larger ones are mapped, faulted and unmapped every time, and with several threads
#: that kernel time was a quarter of the streaming passes' CPU.
PIECE_BYTES = 16 << 20


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


def row_pieces(n_rows: int, chunk_rows: int, row_bytes: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of row ranges of whole chunks (``chunk_rows`` rows each) of about
    :data:`PIECE_BYTES` at most, covering ``n_rows`` rows of ``row_bytes`` bytes."""
    step = chunk_rows * max(1, PIECE_BYTES // max(1, chunk_rows * row_bytes))
    for start in range(0, n_rows, step):
        yield start, min(n_rows, start + step)


def write_blocks(
    blocks: Iterable[np.ndarray],
    store: str,
    path: str,
    store_time: int,
    moments: Moments | None = None,
) -> int:
    """Write (voxel, time) blocks, in time order, to the array ``path`` of ``store`` by whole zarr chunks of
    ``store_time`` volumes (in :func:`row_pieces`), adding each block to ``moments`` when given. Returns the
    volumes written."""
    with quiet_zarr():
        target = zarr.open_array(store, path=path, mode="r+", zarr_format=3)
    pending: list[np.ndarray] = []
    written = n = 0
    for block in blocks:
        if moments is not None:
            moments.add(block)
        pending.append(block)
        n += block.shape[1]
        if n - written >= store_time or n == target.shape[1]:
            row_bytes = (n - written) * target.dtype.itemsize
            for r0, r1 in row_pieces(target.shape[0], target.chunks[0], row_bytes):
                parts = [p[r0:r1] for p in pending]
                target[r0:r1, written:n] = parts[0] if len(parts) == 1 else np.concatenate(parts, 1)
            pending, written = [], n
    return n


def write_moments(store: str, run: str, moments: np.ndarray) -> None:
    """Each voxel's (mean, standard deviation) of a run, to ``zscore/<run>``."""
    with quiet_zarr():
        stats = zarr.open_array(store, path=f"zscore/{run}", mode="r+", zarr_format=3)
    stats[:] = moments


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
    ``time_chunk`` volumes, and write them to ``smoothed/<run>`` (:func:`write_blocks`); with ``ddof``, also
    each voxel's mean and standard deviation to ``zscore/<run>``, merged block by block.

    One thread inflates (inside ``volumes.stream``) while ``threads`` threads smooth blocks, at most
    ``threads + 1`` blocks in flight; results are taken in order, so the values do not depend on ``threads``."""

    def smooth(item: tuple[int, np.ndarray]) -> np.ndarray:
        return smooth_block(item[1], sigma, fast, mask=mask)

    moments = Moments() if ddof is not None else None
    blocks = ordered_map(smooth, volumes.stream(time_chunk), threads)
    n = write_blocks(blocks, store, f"smoothed/{run}", store_time, moments)
    if moments is not None:
        write_moments(store, run, moments.result(ddof or 0))
    return n


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


def first_block_mask(
    volumes: NiftiVolumes, n_volumes: int, affine: np.ndarray, args: dict[str, Any]
) -> np.ndarray:
    """The EPI mask (``epi_mask_from_mean`` with ``args``) of the mean of a run's first ``n_volumes``
    volumes; only they are inflated."""
    from daskparcel.preprocessing.masking.strategies import epi_mask_from_mean

    with contextlib.closing(volumes.stream(n_volumes)) as stream:
        _, block = next(stream)
    with np.errstate(invalid="ignore"):
        return epi_mask_from_mean(block.mean(axis=3, dtype=np.float64), affine, **args)


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
    masks = dask.compute(
        *[
            dask.delayed(first_block_mask)(v, k, affine, args)
            for v, k in zip(gzipped, chunks, strict=True)
        ]
    )
    superset = np.logical_or.reduce(masks)
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
    ddof: int | None = None,
    threads: int = 1,
) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`stream_smoothed` of the superset's voxels into ``superset/<run>`` of the scratch store, which
    also sums the volumes (float64, block by block in order). Returns the run's mean image and, with
    ``ddof``, its superset voxels' (mean, standard deviation): each voxel's are computed from its own values
    only, so the mask's rows of them are what :func:`stream_smoothed` gives."""
    total = np.zeros(volumes.shape[:3], dtype=np.float64)

    def smooth(item: tuple[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        block = item[1]
        return block.sum(axis=3, dtype=np.float64), smooth_block(block, sigma, fast, mask=superset)

    def blocks() -> Iterator[np.ndarray]:
        for part, signals in ordered_map(smooth, volumes.stream(time_chunk), threads):
            np.add(total, part, out=total)
            yield signals

    moments = Moments() if ddof is not None else None
    write_blocks(blocks(), store, f"superset/{run}", store_time, moments)
    stats = moments.result(ddof or 0) if moments is not None else None
    return total / volumes.shape[3], stats


def copy_rows(
    scratch: str,
    run: str,
    rows: np.ndarray,
    store: str,
    store_time: int,
    moments: np.ndarray | None = None,
) -> int:
    """Pass 1 of a run streamed with its mask's superset (:func:`stream_superset`): its ``rows`` of
    ``superset/<run>`` into ``smoothed/<run>``, by zarr chunks of ``store_time`` volumes, and their z-scoring
    ``moments`` (when given) to ``zscore/<run>``."""
    with quiet_zarr():
        source = zarr.open_array(scratch, path=f"superset/{run}", mode="r", zarr_format=3)
        target = zarr.open_array(store, path=f"smoothed/{run}", mode="r+", zarr_format=3)
    n = source.shape[1]
    for start in range(0, n, store_time):
        stop = min(n, start + store_time)
        row_bytes = (stop - start) * source.dtype.itemsize
        for r0, r1 in row_pieces(len(rows), target.chunks[0], row_bytes):
            low, high = int(rows[r0]), int(rows[r1 - 1]) + 1
            piece = np.asarray(source[low:high, start:stop])
            target[r0:r1, start:stop] = piece[rows[r0:r1] - low]
    if moments is not None:
        write_moments(store, run, moments)
    return n


@dataclass
class Copy:
    """A run's smoothed signals in the scratch store: the mask's ``rows`` of its superset, and their
    z-scoring ``moments`` (or None)."""

    scratch: str
    rows: np.ndarray
    moments: np.ndarray | None


@contextlib.contextmanager
def streamed_mask_pass(
    plan: StreamedMask,
    runs: Sequence[RunInput],
    sigma: np.ndarray | None,
    fast: bool,
    time_chunk: int,
    voxel_chunk: int,
    cache_dir: Path,
    ddof: int | None = None,
) -> Iterator[tuple[np.ndarray, dict[str, Copy]]]:
    """Stream every run once (:func:`stream_superset`), compute the mask from the means and keep it in the
    cache; yields ``(mask, copies)``, ``copies`` mapping each run to what :func:`copy_rows` takes (empty when
    the mask is not inside the superset: the runs must then be streamed again).
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
                    compressors=None,  # read once, soon: compressing costs more than it saves
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
                    ddof,
                    threads,
                )
            )
        logger.info("signals: streaming %d run(s) once for the mask and the signals", len(runs))
        streamed = dask.compute(*tasks)
        means = [mean for mean, _ in streamed]
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
        yield (
            mask,
            {
                run.name: Copy(str(scratch), rows, None if stats is None else stats[rows])
                for run, (_, stats) in zip(runs, streamed, strict=True)
            },
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
