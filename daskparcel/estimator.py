"""``Parcellations``: nilearn's estimator, out of core.

Code written for ``nilearn.regions.Parcellations`` ports by changing the import: same parameter names and
defaults, same fitted attributes (``labels_img_``, ``mask_img_``, ``n_elements_``), same answers. What differs is
where the work happens: ``fit`` writes the preprocessed signals once to a zarr store (the cache, see
:mod:`daskparcel.preprocessing.signals`), reduces them with out-of-core randomized SVDs and clusters the voxels,
each step a dask graph run on the local default or the cluster you name; ``transform`` and
``inverse_transform`` return lazy xarray objects.

``fit`` computes at named points only: the mask (one pass over the runs), the signals store (smoothing and
masking, then cleaning: two passes written to disk), the reduction (one compute), the clustering.
"""

from __future__ import annotations

import atexit
import glob
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import nibabel as nib
import numpy as np
import xarray as xr
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.exceptions import NotFittedError

from daskparcel.errors import InputError
from daskparcel.ingest.nifti import is_nifti_path, open_nifti, run_name
from daskparcel.preprocessing.signals import CleanParams, RunInput, SignalsStore, write_signals

logger = logging.getLogger(__name__)

METHODS = ("kmeans", "hierarchical_kmeans", "ward", "complete", "average", "rena")
STANDARDIZE = (False, True, None, "zscore_sample", "zscore", "psc")

_DEFAULT_CACHE: Path | None = None
_TREES: dict[tuple[Any, ...], Any] = {}  # merge trees of this process, by what they were built from
_MASKS: dict[tuple[Any, ...], np.ndarray] = {}  # computed masks, by the runs and the strategy


def default_cache_dir() -> Path:
    """The cache of stores for estimators given no ``store``: one temporary folder per process."""
    global _DEFAULT_CACHE
    if _DEFAULT_CACHE is None:
        _DEFAULT_CACHE = Path(tempfile.mkdtemp(prefix="daskparcel-cache-"))
        atexit.register(shutil.rmtree, _DEFAULT_CACHE, ignore_errors=True)
    return _DEFAULT_CACHE


class Parcellations(TransformerMixin, BaseEstimator):
    """Learn a brain parcellation from fMRI runs, out of core (nilearn's ``Parcellations``).

    Parameters
    ----------
    method : {"kmeans", "hierarchical_kmeans", "ward", "complete", "average", "rena"}
        The clustering. kmeans and hierarchical_kmeans cluster voxels on their reduced time courses;
        ward, complete and average are agglomerations constrained by the mask's 6-neighbour lattice (each
        parcel one connected region), exactly scikit-learn's; rena is recursive nearest-neighbour agglomeration,
        run blockwise.
    n_parcels : int, default=50
        Number of parcels: exactly this many are returned, for every method.
    random_state : int, default=0
        Seed of the reduction and of kmeans; the same seed gives the same labels on any scheduler.
    mask : nibabel image or path, optional
        The mask; resampled (nearest) to the data grid with a warning when its grid differs. None: computed by
        ``mask_strategy``.
    smoothing_fwhm : float, default=4.0
        FWHM (mm) of the Gaussian smoothing of each volume before masking (nilearn's ``smooth_img``).
    standardize : {False, True, "zscore_sample", "zscore", "psc"}, default=False
        Standardization of each voxel's time series (per run).
    standardize_confounds : bool, default=True
    detrend : bool, default=False
    low_pass, high_pass : float, optional
        Butterworth cut-offs (Hz); need the TR (``t_r``, or the TR in the images' headers).
    t_r : float, optional
        Repetition time (s). Default: from the images' headers when filtering needs it.
    mask_strategy : {"epi", "background", "whole-brain-template", "gm-template", "wm-template"}, default="epi"
    mask_args : dict, optional
        Keyword arguments of the mask function.
    scaling : bool, default=False
        ReNA: scale each cluster's features by the square root of its size.
    n_iter : int, default=10
        ReNA: iterations.
    verbose : int, default=0
    n_components : int, default=200
        Components kept by the reduction (nilearn's hard-wired 200).
    store : path, optional
        Folder of the cached stores (signals, reductions). Default: a temporary folder for this process.
        Give a folder to keep the cache across sessions.
    voxel_chunk : int, optional
        Voxels per chunk of the signals store (config ``daskparcel.voxel-chunk``, 8192).
    chunk_volumes : int, optional
        Volumes per chunk when reading NIfTI files (config ``daskparcel.chunk-mb``: ~32 MB).
    client : distributed.Client, address, cluster YAML path, or None
        Where graphs run (see :mod:`daskparcel.runtime`); None: the local default.
    connectivity : scipy.sparse matrix, optional
        For ward / complete / average: a voxel x voxel connectivity replacing the 6-neighbour lattice.
    kmeans_method : {"minibatch", "lloyd"}, default="minibatch"
        kmeans: nilearn's mini-batch KMeans, or full Lloyd iterations with k-means|| (for distributed runs).
    confounds_columns : list of str, optional
        Columns to take from confounds files (names or globs, e.g. ``["trans_*", "rot_*", "csf"]``).

    Attributes
    ----------
    labels_img_ : nibabel.Nifti1Image
        int32 labels, 0 = background, 1..n_parcels.
    labels_ : xarray.DataArray ("voxel",)
        The labels of the mask voxels (1..n_parcels) with their grid indices ``i, j, k``.
    mask_img_ : nibabel.Nifti1Image
    n_elements_ : int
    components_ : numpy.ndarray (n_components, n_voxels)
        The reduction's voxel loadings (what the voxels are clustered on).
    signals_store_ : pathlib.Path
        The signals store of the fitted runs (reused by ``transform`` of the same runs and by later fits).
    timings_ : dict
        Seconds spent in each step of the last fit.
    tree_ : MergeTree or None
        The merge tree of ward / complete / average (cut again for another ``n_parcels`` without rebuilding).
    """

    def __init__(
        self,
        method: str | None = None,
        n_parcels: int = 50,
        random_state: int = 0,
        mask: Any = None,
        smoothing_fwhm: float | None = 4.0,
        standardize: Any = False,
        standardize_confounds: bool = True,
        detrend: bool = False,
        low_pass: float | None = None,
        high_pass: float | None = None,
        t_r: float | None = None,
        mask_strategy: str = "epi",
        mask_args: dict[str, Any] | None = None,
        scaling: bool = False,
        n_iter: int = 10,
        verbose: int = 0,
        n_components: int = 200,
        store: str | os.PathLike[str] | None = None,
        voxel_chunk: int | None = None,
        chunk_volumes: int | None = None,
        client: Any = None,
        connectivity: Any = None,
        kmeans_method: str = "minibatch",
        confounds_columns: Sequence[str] | None = None,
    ) -> None:
        self.method = method
        self.n_parcels = n_parcels
        self.random_state = random_state
        self.mask = mask
        self.smoothing_fwhm = smoothing_fwhm
        self.standardize = standardize
        self.standardize_confounds = standardize_confounds
        self.detrend = detrend
        self.low_pass = low_pass
        self.high_pass = high_pass
        self.t_r = t_r
        self.mask_strategy = mask_strategy
        self.mask_args = mask_args
        self.scaling = scaling
        self.n_iter = n_iter
        self.verbose = verbose
        self.n_components = n_components
        self.store = store
        self.voxel_chunk = voxel_chunk
        self.chunk_volumes = chunk_volumes
        self.client = client
        self.connectivity = connectivity
        self.kmeans_method = kmeans_method
        self.confounds_columns = confounds_columns

    # ------------------------------------------------------------------------------------ validation
    def _validate_params(self) -> None:  # one declared place for every parameter check
        if self.method not in METHODS:
            raise InputError(f"method={self.method!r}: unknown; pass one of {', '.join(METHODS)}")
        _check_int("n_parcels", self.n_parcels, 1)
        _check_int("n_components", self.n_components, 1)
        _check_int("n_iter", self.n_iter, 1)
        if self.smoothing_fwhm is not None and not isinstance(self.smoothing_fwhm, str):
            if np.any(np.asarray(self.smoothing_fwhm, dtype=float) < 0):
                raise InputError(
                    f"smoothing_fwhm={self.smoothing_fwhm}: must be >= 0 (mm); pass 0 or None for no smoothing"
                )
        if self.standardize not in STANDARDIZE:
            raise InputError(
                f"standardize={self.standardize!r}: unknown; pass one of False, 'zscore_sample', 'zscore', 'psc'"
            )
        if self.kmeans_method not in ("minibatch", "lloyd"):
            raise InputError(f"kmeans_method={self.kmeans_method!r}: pass 'minibatch' or 'lloyd'")
        for name in ("low_pass", "high_pass", "t_r"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int | float) or value <= 0):
                raise InputError(f"{name}={value!r}: must be a positive number or None")

    def _clean_params(self, t_r: float | None) -> CleanParams:
        fwhm = self.smoothing_fwhm
        return CleanParams(
            smoothing_fwhm=None
            if fwhm is None
            else (fwhm if isinstance(fwhm, str) else float(fwhm)),
            detrend=bool(self.detrend),
            standardize=self.standardize,
            standardize_confounds=bool(self.standardize_confounds),
            low_pass=self.low_pass,
            high_pass=self.high_pass,
            t_r=t_r,
        )

    # ------------------------------------------------------------------------------------------ fit
    def fit(
        self, imgs: Any, y: Any = None, confounds: Any = None, sample_mask: Any = None
    ) -> Parcellations:
        """Learn the parcellation of ``imgs``.

        Parameters
        ----------
        imgs : path, glob, nibabel image, xarray Dataset, store path, BIDS folder, or a list of them
            The runs (several runs are cleaned one by one and concatenated in time, as nilearn does).
        y : None
            Ignored (scikit-learn's signature).
        confounds : array, DataFrame, TSV path, or a list of them (one per run), optional
        sample_mask : array or a list of them (one per run), optional
            Volumes to keep in each run (scrubbing): boolean masks or indices.

        Returns
        -------
        self
        """
        from daskparcel.runtime import connect

        self._validate_params()
        timings: dict[str, float] = {}
        start = time.perf_counter()
        runs = self._runs(imgs, confounds, sample_mask)
        affine = np.asarray(runs[0].data.attrs["affine"], dtype=float)
        t_r = self._t_r(runs)
        params = self._clean_params(t_r)
        with connect(self.client):
            t0 = time.perf_counter()
            mask = self._mask(runs, affine)
            timings["mask"] = time.perf_counter() - t0
            n_voxels = int(mask.sum())
            if self.n_parcels > n_voxels:
                raise InputError(
                    f"n_parcels={self.n_parcels}: larger than the {n_voxels} voxels of the mask; "
                    "ask for fewer parcels or use a larger mask"
                )
            t0 = time.perf_counter()
            store = write_signals(
                runs, mask, affine, params, self._cache_dir(), voxel_chunk=self.voxel_chunk
            )
            timings["signals"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            features = self._features(store)
            timings["reduction"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            labels = self._cluster(features, mask, store)
            timings["clustering"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - start
        self._set_fitted(labels, mask, affine, features, store, runs, timings)
        logger.info(
            "fit %s %d parcels in %.1f s %s", self.method, self.n_parcels, timings["total"], timings
        )
        return self

    def _cache_dir(self) -> Path:
        return Path(self.store) if self.store is not None else default_cache_dir()

    def _t_r(self, runs: Sequence[RunInput]) -> float | None:
        if self.t_r is not None:
            return float(self.t_r)
        if self.low_pass is None and self.high_pass is None:
            return None
        missing = [r.name for r in runs if r.t_r is None]
        if missing:
            raise InputError(
                f"{missing[0]}: low_pass/high_pass need the repetition time and its header has none; pass t_r="
            )
        values = {float(r.t_r) for r in runs if r.t_r is not None}
        if len(values) > 1:
            raise InputError(
                f"runs have different TRs {sorted(values)}; pass t_r= or fit them separately"
            )
        return float(values.pop())

    def _runs(self, imgs: Any, confounds: Any, sample_mask: Any) -> list[RunInput]:
        runs = resolve_runs(imgs, chunk_volumes=self.chunk_volumes)
        confounds_list = _per_run("confounds", confounds, len(runs))
        masks_list = _per_run("sample_mask", sample_mask, len(runs))

        ref = runs[0]
        for run, conf, smask in zip(runs, confounds_list, masks_list, strict=True):
            shape = run.data["bold"].shape[:3]
            if shape != ref.data["bold"].shape[:3] or not np.allclose(
                np.asarray(run.data.attrs["affine"]),
                np.asarray(ref.data.attrs["affine"]),
                atol=1e-4,
            ):
                raise InputError(
                    f"{run.name}: its grid {shape} differs from {ref.name}'s {ref.data['bold'].shape[:3]} "
                    "(or its affine does); resample the runs to one grid (nilearn.image.resample_to_img)"
                )
            if run.n_time < 2:
                raise InputError(
                    f"{run.nifti or run.data.attrs.get('source') or run.name}: has {run.n_time} volume; "
                    "a run needs at least 2 volumes to be cleaned and parcellated over time; drop it"
                )
            if conf is not None:
                run.confounds = self._confounds(conf, run)
            if smask is not None:
                run.sample_mask = _check_sample_mask(smask, run.n_time, run.name)
        return runs

    def _confounds(self, confounds: Any, run: RunInput) -> np.ndarray:
        """One run's confounds as an array (a file is named by its path in messages, an array by its run)."""
        from daskparcel.preprocessing.confounds import load_confounds

        source = str(confounds) if isinstance(confounds, str | os.PathLike) else f"of {run.name}"
        return load_confounds(confounds, run.n_time, columns=self.confounds_columns, source=source)

    def _mask(self, runs: Sequence[RunInput], affine: np.ndarray) -> np.ndarray:
        from daskparcel.preprocessing.masking import compute_mask, resample_mask, warn_whole_grid

        shape = runs[0].data["bold"].shape[:3]
        if self.mask is not None:
            mask = resample_mask(self.mask, affine, shape)
        else:
            key = (tuple(r.identity for r in runs), self.mask_strategy, repr(self.mask_args))
            cached = _MASKS.get(key)
            if cached is not None:
                mask = cached
            else:
                mask = compute_mask(
                    [r.data["bold"] for r in runs], affine, self.mask_strategy, self.mask_args,
                    niftis=[r.nifti for r in runs], names=[r.nifti or r.name for r in runs],
                )  # fmt: skip
                _MASKS.clear()  # keep the last one: refits of the same runs reuse it
                _MASKS[key] = mask
        if not mask.any():
            raise InputError(
                "the mask has no voxel; give another mask or mask_strategy / mask_args"
            )
        source = self.mask if isinstance(self.mask, str | os.PathLike) else "mask_img"
        warn_whole_grid(mask, str(source) if self.mask is not None else repr(self.mask_strategy))
        return np.asarray(mask, dtype=bool)

    def _features(self, store: SignalsStore) -> np.ndarray:
        """The reduction's voxel loadings, cached in the signals store (fits differing in method or
        n_parcels reuse them)."""
        import zarr

        from daskparcel.reduction import reduce_runs
        from daskparcel.store import quiet_zarr

        name = f"reduced/c{self.n_components}-r{self.random_state}"
        with quiet_zarr():
            group = zarr.open_group(str(store.path), mode="a", zarr_format=3)
            if name in group and group[name].attrs.get("complete"):
                logger.info("reduction reused from %s/%s", store.path, name)
                return np.asarray(group[name][...])  # type: ignore[index]
        # runs' components go to the store before the group step reads them back: memory stays at a chunk
        features = reduce_runs(
            store.run_signals("cleaned"),
            group.require_group(name + "-work"),
            n_components=self.n_components,
            random_state=self.random_state,
        )
        del group[name + "-work"]
        with quiet_zarr():
            array = group.create_array(
                name, shape=features.shape, dtype=np.float32, chunks=features.shape, overwrite=True
            )
            array[...] = features
            array.attrs["complete"] = True
        return features

    def _cluster(self, features: np.ndarray, mask: np.ndarray, store: SignalsStore) -> np.ndarray:
        """Labels 0..K-1 over the mask's voxels."""
        k = int(self.n_parcels)
        self.tree_ = None
        if self.method == "kmeans":
            from daskparcel.clustering.kmeans import kmeans

            return kmeans(
                features,
                k,
                method="lloyd" if self.kmeans_method == "lloyd" else "minibatch",
                random_state=self.random_state,
                n_init=3,
                refine=True,
            ).labels
        if self.method == "hierarchical_kmeans":
            from daskparcel.clustering.hierarchical_kmeans import hierarchical_kmeans

            return np.asarray(hierarchical_kmeans(features, k, random_state=self.random_state))
        if self.method == "rena":
            from daskparcel.clustering.rena import auto_block_shape, rena

            return rena(
                features, k, mask=mask, n_iter=self.n_iter, scaling=self.scaling,
                block_shape=auto_block_shape(mask),
            )  # fmt: skip
        from daskparcel.clustering.agglomerative import build_tree
        from daskparcel.clustering.connectivity import check_connectivity, grid_connectivity

        if self.connectivity is not None:
            conn = check_connectivity(self.connectivity, int(mask.sum()))
            conn_key: Any = dask.base.tokenize(conn.indptr, conn.indices)
        else:
            conn, conn_key = None, "grid"
        key = (str(store.path), self.n_components, self.random_state, self.method, conn_key)
        tree = _TREES.get(key)
        if tree is None:
            if conn is None:
                conn = grid_connectivity(mask)
            tree = build_tree(features, conn, linkage=self.method)  # type: ignore[arg-type]
            _TREES.clear()  # keep one tree: they are the size of the voxels
            _TREES[key] = tree
        else:
            logger.info("%s tree reused: cut at %d parcels", self.method, k)
        self.tree_ = tree
        return np.asarray(tree.cut(k))

    def _set_fitted(
        self,
        labels: np.ndarray,
        mask: np.ndarray,
        affine: np.ndarray,
        features: np.ndarray,
        store: SignalsStore,
        runs: Sequence[RunInput],
        timings: dict[str, float],
    ) -> None:
        labels = np.asarray(labels, dtype=np.int64)
        n = int(self.n_parcels)
        found = np.unique(labels)
        if len(found) != n or found[0] != 0 or found[-1] != n - 1:
            raise RuntimeError(
                f"{self.method} gave {len(found)} clusters instead of {n}: please report this"
            )
        volume = np.zeros(mask.shape, dtype=np.int32)
        volume[mask] = labels + 1
        i, j, k = np.nonzero(mask)
        self.labels_ = xr.DataArray(
            (labels + 1).astype(np.int32), dims=("voxel",), coords={"i": ("voxel", i), "j": ("voxel", j), "k": ("voxel", k)},
            name="labels",
        )  # fmt: skip
        self.labels_img_ = nib.Nifti1Image(volume, affine)
        self.mask_img_ = nib.Nifti1Image(mask.astype(np.int8), affine)
        self.n_elements_ = n
        self.components_ = features.T
        self.signals_store_ = store.path
        self.timings_ = timings
        self._store = store
        self._fitted_runs = [
            (r.identity, _array_key(r.confounds), _array_key(r.sample_mask)) for r in runs
        ]
        self._fitted_names = [r.name for r in runs]

    @classmethod
    def from_labels(cls, labels_img: Any, mask_img: Any = None, **params: Any) -> Parcellations:
        """An estimator fitted with a given parcellation (to ``transform`` / ``inverse_transform`` runs).

        Parameters
        ----------
        labels_img : nibabel image or path
            Integer labels 1..K, 0 = background (e.g. ``labels.nii.gz`` of ``daskparcel fit``).
        mask_img : nibabel image or path, optional
            The mask (default: the labelled voxels).
        **params
            Parameters of the estimator (smoothing and cleaning of ``transform``).
        """
        labels_img = (
            nib.load(labels_img) if isinstance(labels_img, str | os.PathLike) else labels_img
        )
        volume = np.asarray(labels_img.dataobj)
        if volume.ndim != 3 or (
            not np.issubdtype(volume.dtype, np.integer) and not np.all(volume == np.round(volume))
        ):
            raise InputError("labels_img: give a 3D image of integer labels (0 = background, 1..K)")
        volume = volume.astype(np.int64)
        if mask_img is not None:
            mask_img = nib.load(mask_img) if isinstance(mask_img, str | os.PathLike) else mask_img
            mask = np.asarray(mask_img.dataobj) > 0
        else:
            mask = volume > 0
        if mask.shape != volume.shape:
            raise InputError(
                f"mask_img: its grid {mask.shape} differs from the labels' {volume.shape}"
            )
        values = volume[mask]
        n = int(values.max()) if values.size else 0
        if n < 1 or values.min() < 0 or len(np.unique(values[values > 0])) != n:
            raise InputError(
                "labels_img: labels must be 1..K with every label present (0 = background)"
            )
        est = cls(n_parcels=n, **params)
        i, j, k = np.nonzero(mask)
        est.labels_ = xr.DataArray(
            values.astype(np.int32), dims=("voxel",), coords={"i": ("voxel", i), "j": ("voxel", j), "k": ("voxel", k)},
            name="labels",
        )  # fmt: skip
        est.labels_img_ = nib.Nifti1Image(volume.astype(np.int32), labels_img.affine)
        est.mask_img_ = nib.Nifti1Image(mask.astype(np.int8), labels_img.affine)
        est.n_elements_ = n
        est._store = None  # type: ignore[assignment]
        est._fitted_runs = []
        est._fitted_names = []
        return est

    # ------------------------------------------------------------------------------------ transform
    def _check_fitted(self) -> None:
        if not hasattr(self, "labels_img_"):
            raise NotFittedError(
                "This Parcellations instance is not fitted yet: call fit(imgs) before transform / inverse_transform"
            )

    def transform(self, imgs: Any, confounds: Any = None) -> xr.DataArray | list[xr.DataArray]:
        """Mean signal of each parcel, lazily (nilearn's ``NiftiLabelsMasker`` with the fit's parameters).

        Each run is smoothed, masked and averaged per parcel, then the parcel signals are cleaned (detrend,
        filters, confounds, standardize), as nilearn does. Runs that were fitted are read from the signals
        store instead of the images.

        Returns
        -------
        xarray.DataArray ("time", "parcel") or a list of them (one per run, when ``imgs`` is a list)
            Lazy (dask-backed); ``np.asarray(result)`` is nilearn's (n_scans, n_parcels) array.
        """
        from daskparcel.parcels import parcel_means
        from daskparcel.preprocessing.cleaning import clean
        from daskparcel.preprocessing.signals import voxel_signals
        from daskparcel.preprocessing.smoothing import smooth_bold

        self._check_fitted()
        single = not isinstance(imgs, list | tuple)
        runs = resolve_runs(imgs, chunk_volumes=self.chunk_volumes)
        confounds_list = _per_run("confounds", confounds, len(runs))
        mask = np.asarray(self.mask_img_.dataobj, dtype=bool)
        affine = self.mask_img_.affine
        labels = self.labels_.values
        stored = (
            dict(zip(self._fitted_names, self._store.run_signals("smoothed"), strict=True))
            if self._store is not None
            else {}
        )
        fitted = {
            key[0]: name for key, name in zip(self._fitted_runs, self._fitted_names, strict=True)
        }
        out = []
        for run, conf in zip(runs, confounds_list, strict=True):
            if run.data["bold"].shape[:3] != mask.shape or not np.allclose(
                np.asarray(run.data.attrs["affine"]), affine, atol=1e-4
            ):
                raise InputError(
                    f"{run.name}: its grid {run.data['bold'].shape[:3]} differs from the fitted mask's "
                    f"{mask.shape}; resample it to the fitted grid (nilearn.image.resample_to_img)"
                )
            if run.identity in fitted:
                voxels = stored[fitted[run.identity]]
            else:
                smoothed = smooth_bold(run.data["bold"], affine, self.smoothing_fwhm)
                voxels = xr.DataArray(voxel_signals(smoothed, mask), dims=("voxel", "time"))
            means = parcel_means(voxels, labels, self.n_parcels)
            params = self._clean_params(self._t_r([run]))
            conf_array = self._confounds(conf, run) if conf is not None else None
            as_voxels = (
                means.transpose("parcel", "time")
                .rename(parcel="voxel")
                .chunk({"voxel": -1, "time": -1})
            )
            cleaned = clean(
                as_voxels.drop_vars([c for c in as_voxels.coords if c != "voxel"]),
                detrend=params.detrend,
                standardize=params.standardize_value(),
                confounds=conf_array,
                standardize_confounds=params.standardize_confounds,
                low_pass=params.low_pass,
                high_pass=params.high_pass,
                t_r=params.t_r,
            )
            result = cleaned.rename(voxel="parcel").transpose("time", "parcel")
            result = result.assign_coords(parcel=np.arange(1, self.n_parcels + 1))
            result = result.assign_coords(
                run=("time", np.full(result.sizes["time"], run.name, dtype=object))
            )
            result.name = "parcel_signals"
            out.append(result)
        return out[0] if single else out

    def fit_transform(
        self, imgs: Any, y: Any = None, confounds: Any = None, **fit_params: Any
    ) -> Any:
        """``fit`` then ``transform`` of the same runs (the preprocessing is done once)."""
        return self.fit(imgs, confounds=confounds, **fit_params).transform(
            imgs, confounds=confounds
        )

    def inverse_transform(self, signals: Any) -> xr.DataArray | list[xr.DataArray]:
        """Images in which each voxel takes its parcel's signal (the "compressed representation"), lazily.

        Parameters
        ----------
        signals : xarray.DataArray ("time", "parcel"), array (n_scans, n_parcels), or a list of them

        Returns
        -------
        xarray.DataArray ("x", "y", "z", "t") or a list of them
            Lazy, chunked in whole volumes, with the ``affine`` attribute: write it with
            :func:`daskparcel.to_nifti` (streamed) or ``.to_zarr``.
        """
        from daskparcel.parcels import expand, to_volumes

        self._check_fitted()
        single = not isinstance(signals, list | tuple)
        items = [signals] if single else list(signals)
        mask = np.asarray(self.mask_img_.dataobj, dtype=bool)
        out = []
        for item in items:
            if not isinstance(item, xr.DataArray):
                array = np.asarray(item) if not isinstance(item, da.Array) else item
                if array.ndim == 1:
                    array = array[None, :]
                item = xr.DataArray(array, dims=("time", "parcel"))
            if item.sizes.get("parcel") != self.n_parcels:
                raise InputError(
                    f"signals have {item.sizes.get('parcel', item.shape[-1])} parcels, the parcellation "
                    f"has {self.n_parcels}; give the output of transform() of this estimator"
                )
            item = item.assign_coords(parcel=np.arange(1, self.n_parcels + 1))
            voxels = expand(item, self.labels_.values)
            volumes = to_volumes(voxels, mask, affine=self.mask_img_.affine)
            out.append(volumes)
        return out[0] if single else out


# ----------------------------------------------------------------------------------------- inputs
def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise InputError(f"{name}={value!r}: must be an integer >= {minimum}")


def _array_key(array: np.ndarray | None) -> str | None:
    return None if array is None else dask.base.tokenize(np.asarray(array))


def _per_run(name: str, value: Any, n_runs: int) -> list[Any]:
    if value is None:
        return [None] * n_runs
    if isinstance(value, list | tuple) and not (
        name == "sample_mask" and len(value) > 0 and np.isscalar(value[0])
    ):
        if len(value) != n_runs:
            raise InputError(
                f"{name}: a list of {len(value)} items for {n_runs} runs; give one per run (None for none)"
            )
        return list(value)
    if n_runs != 1:
        raise InputError(f"{name}: one value for {n_runs} runs; give a list with one per run")
    return [value]


def _check_sample_mask(sample_mask: Any, n_time: int, name: str) -> np.ndarray:
    array = np.asarray(sample_mask)
    if array.dtype == bool:
        if array.shape != (n_time,):
            raise InputError(
                f"sample_mask of {name}: a boolean mask of length {array.shape[0] if array.ndim else 0} for "
                f"{n_time} volumes; give one value per volume"
            )
        if not array.any():
            raise InputError(f"sample_mask of {name}: keeps no volume; keep at least a few")
        return array
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise InputError(
            f"sample_mask of {name}: give a boolean mask or integer indices of the volumes to keep"
        )
    if array.size == 0 or array.min() < 0 or array.max() >= n_time:
        raise InputError(
            f"sample_mask of {name}: indices out of range for {n_time} volumes (0..{n_time - 1}); fix the indices"
        )
    return array


def resolve_runs(imgs: Any, *, chunk_volumes: int | None = None) -> list[RunInput]:
    """Turn what a user passes as ``imgs`` into runs (lazy Datasets with an identity for the cache)."""
    from daskparcel.ingest.bids import BidsRun, find_bids_runs
    from daskparcel.store import file_sha256, open_runs, prefetch_sha256, store_info

    items = list(imgs) if isinstance(imgs, list | tuple) else [imgs]
    if not items:
        raise InputError("imgs is empty; give one or more BOLD runs")
    prefetch_sha256(
        [
            i.path if isinstance(i, BidsRun) else i
            for i in items
            if isinstance(i, str | os.PathLike | BidsRun)
        ]
    )
    runs: list[RunInput] = []
    for item in items:
        if isinstance(item, BidsRun):
            ds = open_nifti(item.path, chunk_volumes=chunk_volumes)
            runs.append(
                RunInput(
                    item.name,
                    ds,
                    "sha256:" + file_sha256(item.path),
                    item.subject,
                    t_r=item.t_r or ds.attrs.get("t_r"),
                    nifti=str(item.path),
                )
            )
        elif isinstance(item, str | os.PathLike):
            text = str(item)
            path = Path(text)
            if glob.has_magic(text):
                found = sorted(glob.glob(text))
                if not found:
                    raise InputError(
                        f"{text}: the glob matches no file; check the pattern and the folder"
                    )
                runs.extend(resolve_runs(found, chunk_volumes=chunk_volumes))
            elif path.is_dir() and store_info(path) is not None:
                info = store_info(path) or {}
                for name, ds in open_runs(path):
                    runs.append(
                        RunInput(
                            name,
                            ds,
                            f"store:{ds.attrs.get('source_sha256', '')}:{name}:{info.get('identity')}",
                            name,
                            t_r=ds.attrs.get("t_r"),
                        )
                    )
            elif path.is_dir() and any(path.glob("sub-*")):
                runs.extend(resolve_runs(find_bids_runs(path), chunk_volumes=chunk_volumes))
            elif path.is_dir():
                raise InputError(
                    f"{path}: a folder that is neither a daskparcel store nor a BIDS derivatives folder; "
                    "give NIfTI files, a store (daskparcel convert) or an fMRIPrep folder"
                )
            else:
                if path.exists() and not is_nifti_path(path):
                    raise InputError(
                        f"{path}: not a .nii or .nii.gz file name; give NIfTI BOLD runs"
                    )
                ds = open_nifti(path, chunk_volumes=chunk_volumes)
                runs.append(
                    RunInput(
                        run_name(path),
                        ds,
                        "sha256:" + file_sha256(path),
                        run_name(path),
                        t_r=ds.attrs.get("t_r"),
                        nifti=str(path),
                    )
                )
        elif isinstance(item, nib.spatialimages.SpatialImage):
            runs.append(_run_from_image(item, len(runs), chunk_volumes))
        elif isinstance(item, xr.Dataset):
            if (
                "bold" not in item
                or set(item["bold"].dims) != {"x", "y", "z", "t"}
                or "affine" not in item.attrs
            ):
                raise InputError(
                    "an xarray Dataset given as a run needs a variable bold(x, y, z, t) and an 'affine' attribute "
                    "(as daskparcel.open_nifti / open_store give)"
                )
            ds = item if isinstance(item["bold"].data, da.Array) else item.chunk({"t": 16})
            name = str(ds.attrs.get("run", f"run-{len(runs)}"))
            runs.append(
                RunInput(
                    name,
                    ds,
                    "dask:" + dask.base.tokenize(ds["bold"].data),
                    name,
                    t_r=ds.attrs.get("t_r"),
                )
            )
        else:
            raise InputError(
                f"imgs: cannot use a {type(item).__name__} as a run; give NIfTI paths, globs, nibabel images, "
                "xarray Datasets, stores or a BIDS folder"
            )
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        for index, run in enumerate(runs):
            run.name = f"{index:03d}-{run.name}"
    return runs


def _run_from_image(img: Any, index: int, chunk_volumes: int | None) -> RunInput:
    filename = img.get_filename()
    proxy = getattr(img, "dataobj", None)
    if (
        filename
        and is_nifti_path(filename)
        and hasattr(proxy, "offset")
        and os.path.exists(filename)
    ):
        ds = open_nifti(filename, chunk_volumes=chunk_volumes)
        from daskparcel.store import file_sha256

        return RunInput(
            run_name(filename),
            ds,
            "sha256:" + file_sha256(filename),
            run_name(filename),
            t_r=ds.attrs.get("t_r"),
            nifti=str(filename),
        )
    if len(img.shape) != 4:
        raise InputError(
            f"imgs[{index}]: a {len(img.shape)}D image; give 4D BOLD runs (a single volume cannot be parcellated)"
        )
    from daskparcel.ingest.nifti import header_attrs, volumes_per_chunk

    data = np.asarray(img.dataobj, dtype=np.float32)
    n = chunk_volumes or volumes_per_chunk(data.shape)
    attrs = header_attrs(img)
    ds = xr.Dataset(
        {"bold": (("x", "y", "z", "t"), da.from_array(data, chunks=(*data.shape[:3], n)))},
        attrs=attrs,
    )
    name = f"image-{index}"
    return RunInput(name, ds, "array:" + dask.base.tokenize(data), name, t_r=attrs.get("t_r"))
