"""The mask and signals passes: runs -> the signals store (smoothed, masked, cleaned voxel signals on disk).

This is the one out-of-core transpose of the pipeline. NIfTI files and run stores give volume-major chunks
(whole volumes, a block of time points); cleaning, the SVD and clustering want voxel-major chunks (a block of
voxels, the whole time axis of a run). The transpose is a two-pass write through the store itself (its layout
is in :mod:`daskparcel.store.signals`):

1. ``smoothed/<run>`` (voxel, time), chunks ``(voxel_chunk, store_time_chunk)``: each task smooths a block of
   whole volumes (nilearn's ``smooth_img``), takes the mask's voxels and writes its time block. Memory: a block
   of volumes. A gzipped NIfTI run can only be inflated in order, so it is one task that streams the file once
   (inflating in a background thread) and does the same per block; runs go in parallel. The zarr chunks hold
   several input blocks along time (``store_time_chunk``, >= 64 volumes): every later pass reads whole runs
   of a voxel block, and a few MB chunks read ~5x faster than the input's 8-volume ones (which made 44k chunks
   at 40 subjects).
2. ``cleaned/<run>`` (voxel, time), chunks ``(voxel_chunk, whole run)``: each task reads one voxel block over
   the whole run from pass 1, cleans it (nilearn's ``signal.clean``) and writes it. Memory: a voxel block x
   the run's time points.

Pass 2 is skipped when cleaning is a per-voxel affine map known from pass 1:

- no cleaning step at all (ward's and rena's defaults): ``cleaned`` *is* ``smoothed``;
- z-scoring alone (``standardize`` ``"zscore_sample"`` / ``"zscore"``, no detrend, filter, confounds or
  censoring; the kmeans defaults of the seed): pass 1 also keeps each voxel's mean and standard deviation
  (``zscore/<run>``, (voxel, 2) float64, merged over time blocks with Chan's parallel formula), and ``cleaned``
  is ``(smoothed - mean) / std`` computed as it is read. That is nilearn's ``standardize_signal`` up to the
  float64 rounding of the mean (the float32 results agree to 1 ulp), and it saves writing and re-reading the
  whole cohort once.

No step holds more than a chunk, whatever the number of runs or voxels, on any scheduler (dask's in-memory
rechunk would hold the run; its p2p rechunk needs a distributed cluster). ``smoothed`` is kept: ``transform``
averages it per parcel and cleans the parcel signals, as nilearn's ``NiftiLabelsMasker`` does, without
re-reading the images.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr

from daskparcel import config
from daskparcel._dask import Moments, local_cores
from daskparcel.errors import InputError
from daskparcel.ingest.nifti import NiftiVolumes
from daskparcel.preprocessing.cleaning import (
    clean,
    count_zeroed_voxels,
    warn_zeroed_voxels,
)
from daskparcel.preprocessing.smoothing import smooth_block, smooth_bold, smoothing_kernel
from daskparcel.store.runs import quiet_zarr, set_store_info, store_info, store_lock
from daskparcel.store.signals import (
    SIGNALS_COMPRESSORS,
    CleanParams,
    RunInput,
    SignalsStore,
    fresh_store,
    signals_identity,
    store_time_chunk,
    zero_variance_voxels,
)

logger = logging.getLogger(__name__)

#: Part of the key of the masks kept in the cache: bump it when a strategy changes what it computes.
MASK_CACHE_VERSION = 2  # 2: one-run background masks are nilearn MultiNiftiMasker's


_DEFAULT_CACHE: Path | None = None


def default_cache_dir() -> Path:
    """The cache of stores for estimators given no ``store``: one temporary folder per process."""
    global _DEFAULT_CACHE
    if _DEFAULT_CACHE is None:
        _DEFAULT_CACHE = Path(tempfile.mkdtemp(prefix="daskparcel-cache-"))
        atexit.register(shutil.rmtree, _DEFAULT_CACHE, ignore_errors=True)
    return _DEFAULT_CACHE


def run_mask(
    runs: Sequence[RunInput],
    affine: np.ndarray,
    cache_dir: str | os.PathLike[str],
    *,
    mask: Any = None,
    strategy: str = "epi",
    mask_args: dict[str, Any] | None = None,
) -> np.ndarray:
    """The mask pass: the user's ``mask`` on the runs' grid, or the ``strategy`` mask of the runs.

    A computed mask is kept in ``cache_dir/masks/`` under a hash of the runs' identities, the strategy and its
    arguments, so refits of the same runs (another method, another K, another session) do not read them again.
    """
    from daskparcel.preprocessing.masking import compute_mask, resample_mask, warn_whole_grid

    shape = runs[0].data["bold"].shape[:3]
    if mask is not None:
        result = resample_mask(mask, affine, shape)
    else:
        key = hashlib.sha256(
            json.dumps(
                [[r.identity for r in runs], strategy, repr(mask_args), MASK_CACHE_VERSION]
            ).encode()
        ).hexdigest()[:20]
        cached = Path(cache_dir) / "masks" / f"mask-{key}.npy"
        if cached.is_file():
            logger.info("mask reused from %s", cached)
            result = np.load(cached)
        else:
            result = compute_mask(
                [r.data["bold"] for r in runs], affine, strategy, mask_args,
                niftis=[r.nifti for r in runs], names=[r.nifti or r.name for r in runs],
            )  # fmt: skip
            cached.parent.mkdir(parents=True, exist_ok=True)
            partial = cached.with_name(cached.name + ".partial.npy")
            np.save(partial, np.asarray(result, dtype=bool))
            os.replace(partial, cached)
    if not result.any():
        raise InputError("the mask has no voxel; give another mask or mask_strategy / mask_args")
    source = str(mask) if isinstance(mask, str | os.PathLike) else "mask_img"
    warn_whole_grid(result, source if mask is not None else repr(strategy))
    return np.asarray(result, dtype=bool)


def run_voxel_signals(
    run: RunInput,
    mask: np.ndarray,
    affine: np.ndarray,
    smoothing_fwhm: Any,
    stored: xr.DataArray | None = None,
) -> xr.DataArray:
    """A run's smoothed signals in the mask (voxel, time): ``stored`` (from the signals store) when given,
    else smoothed and masked lazily from its images, after checking it is on the mask's grid."""
    from daskparcel._checks import same_grid

    if not same_grid(run.data["bold"].shape[:3], run.data.attrs["affine"], mask.shape, affine):
        raise InputError(
            f"{run.name}: its grid {run.data['bold'].shape[:3]} differs from the fitted mask's "
            f"{mask.shape}; resample it to the fitted grid (nilearn.image.resample_to_img)"
        )
    if stored is not None:
        return stored
    smoothed = run_bold(run, affine, smoothing_fwhm)
    return xr.DataArray(voxel_signals(smoothed, mask), dims=("voxel", "time"))


def run_bold(run: RunInput, affine: np.ndarray, smoothing_fwhm: Any) -> xr.DataArray:
    """A run's bold as the signals pass takes it: smoothed (:func:`smooth_bold`, in whole volumes) for volume
    runs; a mesh run is never smoothed (refused before) and keeps its chunks (a CIFTI run's blocks of
    grayordinates: :func:`smooth_bold` would merge them into one chunk of the whole run), cast to float32 and
    cleared of NaN / inf as :func:`smooth_bold` does."""
    if run.geometry is None:
        return smooth_bold(run.data["bold"], affine, smoothing_fwhm)
    bold = run.data["bold"].transpose("x", "y", "z", "t")
    data = bold.data if isinstance(bold.data, da.Array) else da.from_array(np.asarray(bold.data))
    out = da.map_blocks(
        smooth_block, data, sigma=None, fast=False, dtype=np.float32,
        meta=np.empty((0, 0, 0, 0), dtype=np.float32), token="mesh-bold",
    )  # fmt: skip
    return xr.DataArray(out, dims=bold.dims, attrs=dict(bold.attrs))


def voxel_signals(bold: xr.DataArray, mask: np.ndarray) -> da.Array:
    """The mask's voxels of a volume-chunked run: (voxel, time), chunks (all voxels, the run's time blocks).

    A (element, 1, 1, time) pseudo-grid of a mesh run may come in blocks of elements instead (a CIFTI run:
    blocks of whole grayordinate series, :func:`daskparcel.ingest.cifti.open_cifti_run`); they stay blocks
    of voxels."""
    data = bold.transpose("x", "y", "z", "t").data
    if not isinstance(data, da.Array):
        data = da.from_array(np.asarray(data), chunks=(-1, -1, -1, 16))
    pseudo_grid = data.shape[1:3] == (1, 1)
    if any(len(c) != 1 for c in data.chunks[int(pseudo_grid) : 3]):
        raise InputError(
            "bold must be chunked in whole volumes; rechunk with .chunk(x=-1, y=-1, z=-1)"
        )
    index = np.flatnonzero(mask)
    flat = data.reshape((-1, data.shape[3]), merge_chunks=True)
    return flat[index]


def write_signals(
    runs: Sequence[RunInput],
    mask: np.ndarray,
    affine: np.ndarray,
    params: CleanParams,
    cache_dir: str | os.PathLike[str],
    *,
    voxel_chunk: int | None = None,
) -> SignalsStore:
    """Write (or reuse) the signals store of ``runs`` under ``cache_dir``.

    Parameters
    ----------
    runs : list of RunInput
        The runs, all on the mask's grid.
    mask : numpy.ndarray of bool (x, y, z)
    affine : numpy.ndarray (4, 4)
    params : CleanParams
        Smoothing and cleaning parameters (per run: each run is cleaned on its own, as nilearn does).
    cache_dir : path
        Folder of the stores; the store is ``cache_dir/signals-<hash>.zarr``.
    voxel_chunk : int, optional
        Voxels per chunk (config ``daskparcel.voxel-chunk``, 8192).

    Returns
    -------
    SignalsStore
    """
    if not runs:
        raise InputError("no run to preprocess; give at least one BOLD run")
    n_voxels = int(mask.sum())
    if n_voxels == 0:
        raise InputError("the mask has no voxel; use another mask or mask strategy")
    for run in runs:
        if run.data["bold"].shape[:3] != mask.shape:
            raise InputError(
                f"{run.name}: its grid {run.data['bold'].shape[:3]} differs from the mask's {mask.shape}; "
                "resample the run or give a mask on its grid"
            )
    voxel_chunk = int(voxel_chunk or config.get("voxel-chunk"))
    voxel_chunk = max(1, min(voxel_chunk, n_voxels))
    time_chunk = int(runs[0].data["bold"].data.chunks[3][0])
    key = signals_identity(runs, mask, params, voxel_chunk, time_chunk)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"signals-{key}.zarr"
    names = [r.name for r in runs]
    subjects = [r.subject or r.name for r in runs]
    result = SignalsStore(
        path, names, subjects, mask.astype(bool), np.asarray(affine, float), params
    )
    result.cleaned_is_smoothed = _cleaning_is_identity(runs, params)
    result.zscore_on_read = _zscore_alone(runs, params)
    info = store_info(path)
    if info is not None and info.get("complete") and info.get("identity") == key:
        logger.info("signals store %s is up to date: reused", path)
        result.n_zeroed = int(info.get("n_zeroed", 0))
        return result
    ddof = {"zscore_sample": 1, "zscore": 0}.get(result.zscore_on_read or "")
    # validate the cleaning parameters on every run before anything is written
    cleaned_graphs = []
    with store_lock(path):
        fresh_store(path, key, names, subjects, mask, affine, params)
        smoothed_targets, sources, streams = [], [], []
        sigma, fast = smoothing_kernel(params.smoothing_fwhm, affine)
        gzipped = {run.name: _gzipped_volumes(run) for run in runs}
        threads = _threads_per_stream(sum(v is not None for v in gzipped.values()))
        for run in runs:
            shape = (n_voxels, run.n_time)
            store_time = store_time_chunk(time_chunk, run.n_time)
            with quiet_zarr():
                target = zarr.create_array(
                    str(path), name=f"smoothed/{run.name}", shape=shape, dtype=np.float32,
                    chunks=(voxel_chunk, store_time), dimension_names=("voxel", "time"), overwrite=True,
                    compressors=SIGNALS_COMPRESSORS,
                )  # fmt: skip
                if ddof is not None:
                    moments = zarr.create_array(
                        str(path), name=f"zscore/{run.name}", shape=(n_voxels, 2), dtype=np.float64,
                        chunks=(voxel_chunk, 2), dimension_names=("voxel", "moment"), overwrite=True,
                    )  # fmt: skip
            volumes = gzipped[run.name]
            if volumes is not None:
                streams.append(
                    dask.delayed(_stream_smoothed, pure=False)(
                        volumes,
                        str(path),
                        run.name,
                        mask.astype(bool),
                        sigma,
                        fast,
                        time_chunk,
                        store_time,
                        ddof,
                        threads,
                    )
                )
                continue
            smoothed = run_bold(run, affine, params.smoothing_fwhm)
            source = voxel_signals(smoothed, mask).rechunk({0: voxel_chunk, 1: store_time})
            sources.append(source)
            smoothed_targets.append(target)
            if ddof is not None:
                sources.append(_voxel_moments(source, ddof))
                smoothed_targets.append(moments)
        logger.info(
            "signals: smoothing and masking %d run(s) into %s (%d streamed from .nii.gz)",
            len(runs),
            path,
            len(streams),
        )
        blockwise = da.store(sources, smoothed_targets, lock=False, compute=False)  # type: ignore[arg-type]
        dask.compute(blockwise, *streams)
        if result.cleaned_is_smoothed or result.zscore_on_read is not None:
            total_zeroed = 0
            if result.zscore_on_read is not None:
                logger.info(
                    "signals: cleaning is z-scoring alone; it is applied when the signals are read"
                )
                total_zeroed = zero_variance_voxels(path, names)
                warn_zeroed_voxels(total_zeroed, n_voxels, source="signals")
            else:
                logger.info(
                    "signals: no cleaning step applies; the smoothed signals are the cleaned ones"
                )
            set_store_info(path, complete=True, n_zeroed=total_zeroed)
            result.n_zeroed = total_zeroed
            return result

        store = SignalsStore(
            path, names, subjects, mask.astype(bool), np.asarray(affine, float), params
        )
        cleaned_targets, zeroed = [], []
        for run, smoothed_run in zip(runs, store.run_signals("smoothed"), strict=True):
            cleaned = clean(
                smoothed_run.chunk({"voxel": voxel_chunk, "time": -1}),
                detrend=params.detrend,
                standardize=params.standardize_value(),
                confounds=run.confounds,
                standardize_confounds=params.standardize_confounds,
                low_pass=params.low_pass,
                high_pass=params.high_pass,
                t_r=run.t_r if run.t_r is not None else params.t_r,
                sample_mask=run.sample_mask,
            )
            with quiet_zarr():
                target = zarr.create_array(
                    str(path), name=f"cleaned/{run.name}", shape=cleaned.shape, dtype=np.float32,
                    chunks=(voxel_chunk, cleaned.shape[1]), dimension_names=("voxel", "time"),
                    overwrite=True, compressors=SIGNALS_COMPRESSORS,
                )  # fmt: skip
            cleaned_graphs.append(cleaned.data.astype(np.float32))
            cleaned_targets.append(target)
            zeroed.append(count_zeroed_voxels(cleaned))
        logger.info("signals: cleaning %d run(s)", len(runs))
        stored = da.store(cleaned_graphs, cleaned_targets, lock=False, compute=False)  # type: ignore[arg-type]
        _, *n_zeroed = dask.compute(stored, *zeroed)
        total_zeroed = int(max(n_zeroed)) if n_zeroed else 0
        if params.standardize_value() is not None:
            warn_zeroed_voxels(total_zeroed, n_voxels, source="signals")
        set_store_info(path, complete=True, n_zeroed=total_zeroed)
    result.n_zeroed = total_zeroed
    return result


def _cleaning_is_identity(runs: Sequence[RunInput], params: CleanParams) -> bool:
    """Whether ``clean`` would return its input (smoothed signals are finite and float32 already)."""
    return (
        not params.detrend
        and params.standardize_value() is None
        and params.low_pass is None
        and params.high_pass is None
        and all(r.confounds is None and r.sample_mask is None for r in runs)
    )


def _zscore_alone(runs: Sequence[RunInput], params: CleanParams) -> str | None:
    """The standardization ("zscore_sample" or "zscore") when it is the only cleaning step, else None."""
    standardize = params.standardize_value()
    if standardize not in ("zscore_sample", "zscore") or any(r.n_time < 2 for r in runs):
        return None
    alone = _cleaning_is_identity(runs, replace(params, standardize=False))
    return str(standardize) if alone else None


def _voxel_moments(signals: da.Array, ddof: int) -> da.Array:
    """(voxel, 2) float64: each voxel's mean and standard deviation over time (dask's pairwise moments)."""
    x = signals.astype(np.float64)
    return da.stack([x.mean(axis=1), x.std(axis=1, ddof=ddof)], axis=1).rechunk({1: 2})


def _gzipped_volumes(run: RunInput) -> NiftiVolumes | None:
    """The run's gzipped NIfTI file, when its ``bold`` is that file's volumes untouched (else None)."""
    if run.nifti is None:
        return None
    volumes = NiftiVolumes(run.nifti)
    if not volumes.gzipped or volumes.shape != tuple(run.data["bold"].shape):
        return None
    return volumes


def _threads_per_stream(n_streams: int) -> int:
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


def _ordered_map(fn: Callable[[Any], Any], items: Iterable[Any], threads: int) -> Iterator[Any]:
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


def _stream_smoothed(
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
    ``time_chunk`` volumes, and write them to ``smoothed/<run>`` by whole zarr chunks of ``store_time`` volumes
    (with ``ddof``, also each voxel's mean and standard deviation to ``zscore/<run>``).

    One thread inflates (inside ``volumes.stream``) while ``threads`` threads smooth blocks, at most
    ``threads + 1`` blocks in flight; results are taken in order, so the values do not depend on ``threads``."""
    with quiet_zarr():
        target = zarr.open_array(store, path=f"smoothed/{run}", mode="r+", zarr_format=3)
    moments = Moments(axis=1) if ddof is not None else None
    pending: list[np.ndarray] = []
    written = 0
    n = 0

    def smooth(item: tuple[int, np.ndarray]) -> np.ndarray:
        return smooth_block(item[1], sigma, fast, mask=mask)

    for signals in _ordered_map(smooth, volumes.stream(time_chunk), threads):
        if moments is not None:
            moments.add(signals)
        pending.append(signals)
        n += signals.shape[1]
        if n - written >= store_time or n == target.shape[1]:
            target[:, written:n] = np.concatenate(pending, axis=1)
            pending, written = [], n
    if moments is not None:
        with quiet_zarr():
            stats = zarr.open_array(store, path=f"zscore/{run}", mode="r+", zarr_format=3)
        assert moments.mean is not None
        stats[:] = np.stack([moments.mean, np.sqrt(moments.variance(ddof or 0))], axis=1)
    return n
