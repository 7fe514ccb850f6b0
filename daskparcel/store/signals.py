"""The signals store: the pipeline's central artefact and its cache (layout, identity, lazy access).

A signals store holds the preprocessed (smoothed, masked, cleaned) voxel signals of a set of runs, voxel-major,
so that cleaning, the SVD and clustering read a block of voxels over whole runs. It is written by the signals
pass (:func:`daskparcel.preprocessing.pipeline.write_signals`) and read by everything after it.

Layout (a zarr v3 group, ``CACHE/signals-<identity>.zarr``; :data:`LAYOUT` is its version)::

    zarr.json                attrs["daskparcel"] = {kind: "signals", complete, identity, runs, subjects,
                                                    affine, params, n_zeroed}
    mask                     (x, y, z) uint8, the mask the voxels come from (voxel order = np.nonzero order)
    smoothed/<run>           (voxel, time) float32, chunks (voxel_chunk, >= 64 volumes): smoothed and masked
    zscore/<run>             (voxel, 2) float64: each voxel's mean and standard deviation over the run, kept
                             when cleaning is z-scoring alone (then cleaned = (smoothed - mean) / std on read)
    cleaned/<run>            (voxel, time) float32, chunks (voxel_chunk, whole run): only when cleaning does
                             more than z-scoring (detrend, filters, confounds, censoring, psc)
    reduced/c<k>-r<seed>     (voxel, k) float32: the reduction's features, attrs {complete: true}, uncompressed
                             in chunks of 8192 voxels
    reduced/c<k>-r<seed>-scatter  scatter (k, k) float64: the signals' scatter along the features, which the
                             kmeans family weighs them by (left by the reduction, or from a read of the signals)
    reduced/c<k>-r<seed>-work  scratch of a reduction in progress (per-run components, the group range)
    trees/c<k>-r<seed>-<linkage>[-<graph>]  a merge tree of those features (children, distances, ...)

When cleaning is nothing at all, ``cleaned`` is ``smoothed``. The identity (folder name) hashes everything that
shapes the signals: each run's checksum-based identity, confounds, sample mask and TR, the mask, the smoothing
and cleaning parameters, the chunking and :data:`LAYOUT`; so asking again with the same inputs reuses the
store, changing any of them makes a new one, and a layout change rebuilds old caches. A store is only reused
once marked ``complete``; writers hold the store lock of :mod:`daskparcel.store.runs`.

Layout versions: 2, no ``cleaned/`` when cleaning is the identity; 3, ``smoothed/`` time chunks of >= 64
volumes and z-scoring alone applied on read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr
from zarr.codecs import BloscCodec

from daskparcel.preprocessing.cleaning import zscore_divisor
from daskparcel.store.runs import quiet_zarr, set_store_info

logger = logging.getLogger(__name__)

#: Version of the layout above; part of every store's identity.
LAYOUT = 3

#: The codec of the signals arrays (``smoothed/``, ``cleaned/``): LZ4 after a bit shuffle, which groups the
#: float32 values' sign, exponent and high mantissa bits. Against zarr's default (zstd level 0) on one 2 mm run
#: of 300 volumes: 192 vs 236 MB (0.80 vs 0.85 of the raw size on a real scan), written in 0.28 vs 0.48 s and
#: read in 0.11 vs 0.21 s; every pass of a fit reads the signals again.
SIGNALS_COMPRESSORS = (BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle"),)

#: Rows of the chunks of the arrays kept by :meth:`SignalsStore.derived` (the reduction's features).
DERIVED_ROWS = 8192


@dataclass(frozen=True)
class CleanParams:
    """The parameters that shape the signals (nilearn's names and defaults of ``Parcellations``)."""

    smoothing_fwhm: float | str | tuple[float | None, ...] | None = 4.0
    detrend: bool = False
    standardize: Any = False
    standardize_confounds: bool = True
    low_pass: float | None = None
    high_pass: float | None = None
    t_r: float | None = None

    @classmethod
    def of(cls, params: dict[str, Any], t_r: float | None) -> CleanParams:
        """The parameters among an estimator's ``get_params()`` that shape the signals, with the TR."""
        fwhm = params["smoothing_fwhm"]
        if isinstance(fwhm, list | tuple):
            fwhm = tuple(fwhm)
        elif fwhm is not None and not isinstance(fwhm, str):
            fwhm = float(fwhm)
        return cls(
            smoothing_fwhm=fwhm,
            detrend=bool(params["detrend"]),
            standardize=params["standardize"],
            standardize_confounds=bool(params["standardize_confounds"]),
            low_pass=params["low_pass"],
            high_pass=params["high_pass"],
            t_r=t_r,
        )

    def standardize_value(self) -> Any:
        # nilearn >= 0.13: True means "zscore_sample", False means None
        if self.standardize is True:
            return "zscore_sample"
        if self.standardize is False:
            return None
        return self.standardize


@dataclass
class RunInput:
    """One run to preprocess: its Dataset (bold(x, y, z, t)), names, and its identity (what its data are)."""

    name: str
    data: xr.Dataset
    identity: str
    subject: str = ""
    confounds: np.ndarray | None = None
    sample_mask: np.ndarray | None = None
    t_r: float | None = None
    #: The NIfTI file that ``data["bold"]`` reads, untouched (as :func:`open_nifti` made it); when it is gzipped,
    #: the smoothing pass reads it in one sequential stream instead of block by block.
    nifti: str | None = None
    #: The run's geometry when it is not a voxel grid (a :class:`~daskparcel.geometry.surface.SurfaceGeometry`:
    #: ``bold`` is then its vertices as a (vertex, 1, 1, time) pseudo-grid); None for volumes.
    geometry: Any = None

    @property
    def n_time(self) -> int:
        return int(self.data["bold"].shape[3])


@dataclass
class SignalsStore:
    """A written signals store: lazy access to its arrays."""

    path: Path
    runs: list[str]
    subjects: list[str]
    mask: np.ndarray
    affine: np.ndarray
    params: CleanParams
    n_zeroed: int = 0
    #: No cleaning step applies (no detrend, standardize, filter, confounds or censoring): ``cleaned`` is
    #: ``smoothed`` and is not written twice.
    cleaned_is_smoothed: bool = False
    #: Cleaning is z-scoring alone ("zscore_sample" or "zscore"): ``cleaned`` is ``smoothed`` standardized
    #: on read with the per-voxel moments of ``zscore/<run>``.
    zscore_on_read: str | None = None

    @property
    def n_voxels(self) -> int:
        return int(self.mask.sum())

    @property
    def cleaned_is_stored(self) -> bool:
        """Whether ``cleaned/`` arrays were written apart (else ``cleaned`` is read from ``smoothed/``)."""
        return not self.cleaned_is_smoothed and self.zscore_on_read is None

    def _array(self, kind: str, run: str) -> da.Array:
        if kind == "cleaned" and self.zscore_on_read is not None:
            smoothed = self._array("smoothed", run)
            with quiet_zarr():
                moments = zarr.open_array(
                    str(self.path), path=f"zscore/{run}", mode="r", zarr_format=3
                )
            voxel_chunks = (smoothed.chunks[0], (2,))
            stats = da.from_zarr(
                moments, chunks=voxel_chunks, name=f"zscore-{run}-{self.path.name}"
            )
            return da.blockwise(
                zscore_block, "ij", smoothed, "ij", stats, "ik", concatenate=True, dtype=np.float32,
                name=f"cleaned-{run}-{self.path.name}",
            )  # fmt: skip
        if kind == "cleaned" and self.cleaned_is_smoothed:
            kind = "smoothed"
        with quiet_zarr():
            array = zarr.open_array(str(self.path), path=f"{kind}/{run}", mode="r", zarr_format=3)
        chunks = array.chunks if kind == "cleaned" else (array.chunks[0], array.shape[1])
        return da.from_zarr(array, chunks=chunks, name=f"{kind}-{run}-{self.path.name}")

    def run_signals(self, kind: str = "cleaned") -> list[xr.DataArray]:
        """Per-run signals (voxel, time): ``cleaned`` (for the fit) or ``smoothed`` (for transform)."""
        out = []
        for run, subject in zip(self.runs, self.subjects, strict=True):
            data = self._array(kind, run)
            out.append(
                xr.DataArray(
                    data,
                    dims=("voxel", "time"),
                    coords={
                        "run": ("time", np.full(data.shape[1], run, dtype=object)),
                        "subject": ("time", np.full(data.shape[1], subject, dtype=object)),
                    },
                    name=kind,
                )
            )
        return out

    def signals(self, kind: str = "cleaned") -> xr.DataArray:
        """All runs concatenated along time (voxel, time), with ``run`` and ``subject`` coordinates on time and
        the voxel's grid indices ``i, j, k``; chunked by voxel blocks x one run."""
        runs = self.run_signals(kind)
        out = xr.concat(runs, dim="time") if len(runs) > 1 else runs[0]
        i, j, k = np.nonzero(self.mask)
        return out.assign_coords(i=("voxel", i), j=("voxel", j), k=("voxel", k))

    # ------------------------------------------------------------------------- the features cache
    @staticmethod
    def features_group(n_components: int, random_state: int) -> str:
        """The group of the reduction's features for these parameters: ``reduced/c<k>-r<seed>``."""
        return f"reduced/c{int(n_components)}-r{int(random_state)}"

    def features(
        self,
        n_components: int,
        random_state: int,
        reduce: Callable[[list[xr.DataArray], zarr.Group], np.ndarray],
    ) -> np.ndarray:
        """The reduction's (voxel, component) features of the cleaned runs, kept in ``reduced/c<k>-r<seed>``
        (fits that differ only in method or n_parcels reuse them); see :meth:`reduced`."""
        name = self.features_group(n_components, random_state)
        return self.reduced(name, lambda: self.run_signals("cleaned"), reduce)

    def reduced(
        self,
        name: str,
        runs: Callable[[], list[xr.DataArray]],
        reduce: Callable[[list[xr.DataArray], zarr.Group], np.ndarray],
    ) -> np.ndarray:
        """Features read from ``name`` when a complete copy is there, else computed by ``reduce(runs(),
        scratch group)`` and written. ``reduce`` may keep per-run results in the scratch group
        (``<name>-work``), which is removed once the features are written; a ``scatter`` it leaves there
        (:func:`daskparcel.reduction.reduce_runs`) is kept as ``<name>-scatter`` for the weighting."""

        def compute() -> np.ndarray:
            with quiet_zarr():
                root = zarr.open_group(str(self.path), mode="a", zarr_format=3)
                if name + "-scatter" in root:  # another reduction's (e.g. before a setting changed)
                    del root[name + "-scatter"]
                work = root.require_group(name + "-work")
                features = reduce(runs(), work)
                if "scatter" in work:
                    scatter = np.asarray(work["scatter"][...])  # type: ignore[index]
                    self.write_arrays(name + "-scatter", {"scatter": scatter})
                del root[name + "-work"]
            return features

        return self.derived(name, compute)

    def derived(self, name: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """An array derived from the store's content (e.g. weighted features), read from ``name`` when a
        complete copy is there, else ``compute()``-d and kept there."""
        with quiet_zarr():
            group = zarr.open_group(str(self.path), mode="a", zarr_format=3)
            if name in group and group[name].attrs.get("complete"):
                logger.info("%s reused from %s", name, self.path)
                return np.asarray(group[name][...])  # type: ignore[index]
        values = np.asarray(compute(), dtype=np.float32)
        # uncompressed, in row windows: features do not compress (zstd kept 93 % of 2 mm x 200 components),
        # and one compressed chunk took 0.3-0.8 s to write and to read back, 8192-row windows 0.03-0.15 s
        chunks = (max(1, min(DERIVED_ROWS, len(values))), *values.shape[1:]) if values.ndim else ()
        with quiet_zarr():
            array = group.create_array(
                name, shape=values.shape, dtype=np.float32, chunks=chunks, compressors=None,
                overwrite=True,
            )  # fmt: skip
            array[...] = values
            array.attrs["complete"] = True
        return values

    # ------------------------------------------------------------------- other cached results
    def cached_arrays(self, name: str) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        """The arrays and attributes of the complete group ``name`` (e.g. a merge tree), or None."""
        with quiet_zarr():
            root = zarr.open_group(str(self.path), mode="a", zarr_format=3)
            if name not in root or not root[name].attrs.get("complete"):
                return None
            group = root[name]
            assert isinstance(group, zarr.Group)
            arrays = {key: np.asarray(value[...]) for key, value in group.arrays()}
            return arrays, dict(group.attrs)

    def write_arrays(self, name: str, arrays: dict[str, np.ndarray], **attrs: Any) -> None:
        """Keep ``arrays`` as the group ``name`` of the store, marked complete once all are written."""
        with quiet_zarr():
            group = zarr.open_group(str(self.path), mode="a", zarr_format=3).require_group(name)
            group.attrs["complete"] = False
            for key, value in arrays.items():
                group.create_array(key, data=np.ascontiguousarray(value), overwrite=True)
            group.attrs.update({**attrs, "complete": True})


def signals_identity(
    runs: Sequence[RunInput],
    mask: np.ndarray,
    params: CleanParams,
    voxel_chunk: int,
    time_chunk: int,
) -> str:
    """A hash of everything that shapes the signals store (used as its folder name)."""
    digest = hashlib.sha256()
    doc = {
        "runs": [
            {
                "name": r.name,
                "identity": r.identity,
                "confounds": _array_hash(r.confounds),
                "sample_mask": _array_hash(r.sample_mask),
                "t_r": r.t_r,
            }
            for r in runs
        ],
        "mask": _array_hash(mask.astype(bool)),
        "params": asdict(params),
        "chunks": [voxel_chunk, time_chunk],
        "layout": LAYOUT,
    }
    digest.update(json.dumps(doc, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:20]


def _array_hash(array: np.ndarray | None) -> str | None:
    if array is None:
        return None
    array = np.ascontiguousarray(array)
    return hashlib.sha256(
        array.tobytes() + str(array.shape).encode() + array.dtype.str.encode()
    ).hexdigest()


def store_time_chunk(time_chunk: int, n_time: int, min_volumes: int = 64) -> int:
    """Volumes per zarr chunk of ``smoothed/``: a multiple of the input's ``time_chunk`` of at least
    ``min_volumes``, at most the run (so every write is of whole chunks, and a voxel block of a run is a few
    chunks)."""
    blocks = -(-min_volumes // time_chunk)
    return max(1, min(n_time, blocks * time_chunk))


def zscore_block(block: np.ndarray, moments: np.ndarray) -> np.ndarray:
    """Standardize a (voxel, time) block with its voxels' (mean, std), as nilearn's ``standardize_signal``:
    float64, a standard deviation below float64 eps counts as 1; float32 out."""
    x = block.astype(np.float64)
    x -= moments[:, :1]
    x /= zscore_divisor(moments[:, 1:])
    return x.astype(np.float32)


def zero_variance_voxels(path: Path, runs: Sequence[str]) -> int:
    """The most voxels of zero variance in a run (their z-scored signals are all 0, as ``clean`` makes them)."""
    most = 0
    with quiet_zarr():
        for run in runs:
            moments = zarr.open_array(str(path), path=f"zscore/{run}", mode="r", zarr_format=3)
            most = max(most, int(np.count_nonzero(moments[:, 1] == 0)))
    return most


def fresh_store(
    path: Path,
    key: str,
    names: list[str],
    subjects: list[str],
    mask: np.ndarray,
    affine: np.ndarray,
    params: CleanParams,
) -> None:
    """Empty ``path`` (but its lock) and write the header of a new signals store: the mask and its
    ``daskparcel`` attribute, marked incomplete."""
    for child in path.iterdir():
        if not child.name.startswith(".daskparcel"):
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    with quiet_zarr():
        root = zarr.open_group(str(path), mode="a", zarr_format=3)
        root.create_array("mask", data=mask.astype(np.uint8), chunks=mask.shape)
    set_store_info(
        path,
        kind="signals",
        complete=False,
        identity=key,
        runs=names,
        subjects=subjects,
        affine=np.asarray(affine, float).tolist(),
        params=asdict(params),
    )
