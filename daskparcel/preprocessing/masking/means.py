"""The mask pass's only read of the data: the temporal mean image of each run. A gzipped NIfTI run is one
task that inflates its file once, in order (as the signals pass reads it); other runs are a streaming tree
reduction over their volume blocks; every run's mean is computed in one ``dask.compute``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import dask
import dask.array as da
import numpy as np

from daskparcel.errors import InputError
from daskparcel.ingest.nifti import NiftiVolumes, volumes_per_chunk
from daskparcel.preprocessing.masking._common import BoldOrMean, spatial_data

logger = logging.getLogger(__name__)


def temporal_mean(bold: BoldOrMean) -> da.Array:
    """Mean over time of a run, as a lazy dask array (x, y, z) of float64.

    A streaming tree reduction over the run's volume blocks: each task holds one block, accumulates
    in float64 and passes a 3D partial sum on. A 3D input is returned as is (as a float64 dask array).
    """
    data = spatial_data(bold)
    if data.ndim == 3:
        return da.asarray(data).astype(np.float64)
    if data.ndim != 4:
        raise InputError(
            f"image with {data.ndim} dimensions: a mask needs a 4D run (x, y, z, t) or a 3D mean image"
        )
    data = da.asarray(data)
    if data.shape[3] == 0:
        raise InputError("run with 0 time points: cannot compute its mean; check the input file")
    return da.mean(data, axis=3, dtype=np.float64)


def computed_means(bolds: Sequence[BoldOrMean]) -> list[np.ndarray]:
    """The temporal mean of each run in memory (float64): a 3D mean image in memory as it is (sent to no
    scheduler: a distributed cluster got the 2 mm means of 4 runs, 28 MB, only to send them back), the others
    computed together in one ``dask.compute`` (:func:`temporal_mean`)."""
    held = [spatial_data(b) for b in bolds]
    lazy = {
        i: temporal_mean(b)
        for i, (b, data) in enumerate(zip(bolds, held, strict=True))
        if not (isinstance(data, np.ndarray) and data.ndim == 3)
    }
    done = dict(zip(lazy, dask.compute(*lazy.values()), strict=True))
    return [
        np.asarray(done[i]) if i in done else np.asarray(data, dtype=np.float64)
        for i, data in enumerate(held)
    ]


def streamed_mean(volumes: NiftiVolumes, volumes_per_block: int) -> np.ndarray:
    """Temporal mean of a gzipped NIfTI run in one sequential read: a float64 running sum of its volumes.

    Values are read as :meth:`NiftiVolumes.__getitem__` reads them (nibabel's float32 scaling); for
    integer-valued data the sum is exact, so the mean is the one nilearn's ``compute_mean`` gives.
    """
    total = np.zeros(volumes.shape[:3], dtype=np.float64)
    for _, block in volumes.stream(volumes_per_block):
        total += block.sum(axis=3, dtype=np.float64)
    total /= volumes.shape[3]
    return total


def gzipped_nifti(bold: BoldOrMean, nifti: str | Path | None) -> NiftiVolumes | None:
    """The NIfTI file ``bold`` reads untouched, when it is gzipped (read in one stream), else None."""
    if nifti is None:
        return None
    volumes = NiftiVolumes(nifti)
    if not volumes.gzipped or volumes.shape != tuple(spatial_data(bold).shape):
        return None
    return volumes


def mean_images(
    bolds: Sequence[BoldOrMean], niftis: Sequence[str | Path | None] | None = None
) -> list[da.Array]:
    """The temporal mean of each run, as lazy float64 dask arrays (x, y, z); compute them together.

    Parameters
    ----------
    bolds : list of xarray.DataArray (x, y, z, t) or 3D mean images
        The runs.
    niftis : list of path or None, optional
        For each run, the NIfTI file its ``bold`` reads untouched (``RunInput.nifti``), or None. A
        gzipped file is then read by one task that inflates it once, in order, summing its volumes
        in float64 (runs are read in parallel, one task each): a blockwise read of a ``.nii.gz``
        inflates the file again from a seek point for every block. Other runs are reduced blockwise
        (:func:`temporal_mean`).

    Returns
    -------
    list of dask.array.Array (x, y, z) of float64
        One lazy mean per run; nothing is read until they are computed.
    """
    runs = list(bolds)
    paths = list(niftis) if niftis is not None else [None] * len(runs)
    if len(paths) != len(runs):
        raise InputError(
            f"niftis: {len(paths)} paths for {len(runs)} runs; pass one path (or None) per run"
        )
    means = []
    for bold, nifti in zip(runs, paths, strict=True):
        volumes = gzipped_nifti(bold, nifti)
        if volumes is None:
            means.append(temporal_mean(bold))
            continue
        task = dask.delayed(streamed_mean, pure=True)(volumes, volumes_per_chunk(volumes.shape))
        means.append(da.from_delayed(task, shape=volumes.shape[:3], dtype=np.float64))
    return means
