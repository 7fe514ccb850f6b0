"""``Parcellations``: nilearn's estimator, out of core.

Code written for ``nilearn.regions.Parcellations`` ports by changing the import: same parameter names and
defaults, same fitted attributes (``labels_img_``, ``mask_img_``, ``n_elements_``), same answers. This module
holds the parameters, their validation (one declared place, run before any data is read), the orchestration
of ``fit`` and ``transform``. The work is elsewhere: inputs are resolved by :mod:`daskparcel.ingest.resolve`,
the mask and signals passes are :mod:`daskparcel.preprocessing.pipeline` (writing the signals store,
:mod:`daskparcel.store.signals`, the cache), the reduction is :mod:`daskparcel.reduction` and the methods are
registered in :data:`daskparcel.clustering.METHODS`.

``fit`` computes at named points only: the mask (one pass over the runs), the signals store (one pass, a second
only when cleaning is more than z-scoring), the reduction (cached in the signals store), the clustering (trees
of the agglomerative methods cached there too); ``transform`` and ``inverse_transform`` return lazy xarray
objects.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import nibabel as nib
import numpy as np
import xarray as xr
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.exceptions import NotFittedError

from daskparcel._checks import check_int, same_grid
from daskparcel.clustering import METHODS, ClusterJob
from daskparcel.errors import InputError
from daskparcel.ingest.resolve import per_run, prepare_runs, repetition_time, run_confounds
from daskparcel.preprocessing.pipeline import default_cache_dir, run_mask, write_signals
from daskparcel.store.signals import CleanParams, RunInput, SignalsStore

logger = logging.getLogger(__name__)

STANDARDIZE = (False, True, None, "zscore_sample", "zscore", "psc")
KMEANS_METHODS = ("minibatch", "lloyd")


class Parcellations(TransformerMixin, BaseEstimator):
    """Learn a brain parcellation from fMRI runs, out of core (nilearn's ``Parcellations``).

    Parameters
    ----------
    method : {"kmeans", "hierarchical_kmeans", "ward", "complete", "average", "rena"}
        The clustering (the names of :data:`daskparcel.clustering.METHODS`). kmeans and hierarchical_kmeans cluster voxels on their reduced time courses;
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
        ReNA: ``transform`` multiplies each parcel's signal by the square root of its size and
        ``inverse_transform`` divides by it (nilearn's ``ReNA``; nilearn's ``Parcellations`` ignores it).
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
    store_ : SignalsStore or None
        That store, opened: ``store_.signals("cleaned")`` / ``("smoothed")`` are the fitted voxel signals
        (voxel, time) as lazy xarray (None for :meth:`from_labels`).
    runs_ : list of str
        The names of the fitted runs.
    timings_ : dict
        Seconds spent in each step of the last fit.
    tree_ : MergeTree or None
        The merge tree of ward / complete / average, kept in the signals store: a fit with another
        ``n_parcels`` cuts it again without rebuilding, in this process or a later one.
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
    def _validate_params(self) -> None:
        """Every parameter check, in one place; run by ``fit`` before any data is read."""
        if self.method not in METHODS:
            raise InputError(f"method={self.method!r}: unknown; pass one of {', '.join(METHODS)}")
        check_int("n_parcels", self.n_parcels, 1)
        check_int("n_components", self.n_components, 1)
        check_int("n_iter", self.n_iter, 1)
        fwhm = self.smoothing_fwhm
        if fwhm is not None and not (isinstance(fwhm, str) and fwhm == "fast"):
            try:
                items = fwhm if isinstance(fwhm, list | tuple) else [fwhm]
                values = np.asarray([0.0 if v is None else v for v in items], dtype=float)
            except (TypeError, ValueError):
                raise InputError(
                    f"smoothing_fwhm={fwhm!r}: not a number; pass the FWHM in mm (e.g. 4.0), 0 or None"
                ) from None
            if values.size not in (1, 3) or not np.all(np.isfinite(values)):
                raise InputError(
                    f"smoothing_fwhm={fwhm!r}: pass one FWHM in mm or one per axis (3 values)"
                )
            if np.any(values < 0):
                raise InputError(
                    f"smoothing_fwhm={fwhm}: must be >= 0 (mm); pass 0 or None for no smoothing"
                )
        if self.standardize not in STANDARDIZE:
            raise InputError(
                f"standardize={self.standardize!r}: unknown; pass one of False, 'zscore_sample', 'zscore', 'psc'"
            )
        if self.kmeans_method not in KMEANS_METHODS:
            raise InputError(f"kmeans_method={self.kmeans_method!r}: pass 'minibatch' or 'lloyd'")
        for name in ("low_pass", "high_pass", "t_r"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or value <= 0
            ):
                raise InputError(f"{name}={value!r}: must be a positive number or None")
        for name in ("detrend", "standardize_confounds", "scaling"):
            if not isinstance(getattr(self, name), bool | np.bool_):
                raise InputError(f"{name}={getattr(self, name)!r}: must be True or False")
        if self.mask_args is not None and not isinstance(self.mask_args, dict):
            raise InputError(f"mask_args={self.mask_args!r}: must be a dict of keyword arguments")
        if self.scaling and self.method != "rena":
            raise InputError(
                f"scaling=True: only used by method='rena' (method={self.method!r}); pass scaling=False"
            )

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

    def _t_r(self, runs: Sequence[RunInput]) -> float | None:
        filtering = self.low_pass is not None or self.high_pass is not None
        return repetition_time(runs, self.t_r, needed=filtering)

    def _cache_dir(self) -> Path:
        return Path(self.store) if self.store is not None else default_cache_dir()

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
        from daskparcel.reduction import reduce_runs
        from daskparcel.runtime import connect

        self._validate_params()
        timings: dict[str, float] = {}
        start = time.perf_counter()
        runs = prepare_runs(
            imgs, confounds, sample_mask, chunk_volumes=self.chunk_volumes,
            confounds_columns=self.confounds_columns,
        )  # fmt: skip
        affine = np.asarray(runs[0].data.attrs["affine"], dtype=float)
        params = self._clean_params(self._t_r(runs))
        with connect(self.client):
            t0 = time.perf_counter()
            mask = run_mask(
                runs, affine, self._cache_dir(), mask=self.mask, strategy=self.mask_strategy,
                mask_args=self.mask_args,
            )  # fmt: skip
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
            reduce = partial(
                reduce_runs, n_components=self.n_components, random_state=self.random_state
            )
            features = store.features(self.n_components, self.random_state, reduce)
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

    def _cluster(self, features: np.ndarray, mask: np.ndarray, store: SignalsStore) -> np.ndarray:
        """Labels 0..K-1 over the mask's voxels, by the registered method (a tree is kept in the store)."""
        from daskparcel.clustering.agglomerative import MergeTree

        method = METHODS[str(self.method)]
        options = {name: getattr(self, name) for name in method.options}
        job = ClusterJob(
            features, int(self.n_parcels), mask, int(self.random_state), options, self.connectivity
        )
        self.tree_ = None
        if method.tree is None:
            assert method.labels is not None
            return method.labels(job)
        name = (
            store.features_group(self.n_components, self.random_state).replace("reduced/", "trees/")
            + f"-{method.name}"
        )
        if self.connectivity is not None:
            conn = self.connectivity
            name += "-" + dask.base.tokenize(
                getattr(conn, "indptr", conn), getattr(conn, "indices", None)
            )
        cached = store.cached_arrays(name)
        if cached is not None:
            logger.info(
                "%s tree reused from %s/%s: cut at %d parcels",
                method.name,
                store.path,
                name,
                job.n_clusters,
            )
            tree = MergeTree.from_arrays(*cached)
        else:
            tree = method.tree(job)
            arrays, attrs = tree.to_arrays()
            store.write_arrays(name, arrays, **attrs)
        self.tree_ = tree
        return np.asarray(tree.cut(job.n_clusters))

    def _set_fitted(
        self,
        labels: np.ndarray,
        mask: np.ndarray,
        affine: np.ndarray,
        features: np.ndarray,
        store: SignalsStore | None,
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
        self.store_ = store
        self.signals_store_ = None if store is None else store.path
        self.timings_ = timings
        self.runs_ = [r.name for r in runs]
        self._fitted_identities = {r.identity: r.name for r in runs}

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
        est.store_ = None
        est.signals_store_ = None
        est.runs_ = []
        est._fitted_identities = {}
        return est

    # ------------------------------------------------------------------------------------ transform
    def _check_fitted(self) -> None:
        if not hasattr(self, "labels_img_"):
            raise NotFittedError(
                "This Parcellations instance is not fitted yet: call fit(imgs) before transform / inverse_transform"
            )

    def _scale(self) -> np.ndarray | None:
        """ReNA's ``scaling``: the square root of each parcel's size (None when not scaling)."""
        if not (self.scaling and self.method == "rena"):
            return None
        sizes = np.bincount(self.labels_.values, minlength=self.n_parcels + 1)[1:]
        return np.sqrt(sizes.astype(np.float64))

    def transform(self, imgs: Any, confounds: Any = None) -> xr.DataArray | list[xr.DataArray]:
        """Mean signal of each parcel, lazily (nilearn's ``NiftiLabelsMasker`` with the fit's parameters).

        Each run is smoothed, masked and averaged per parcel, then the parcel signals are cleaned (detrend,
        filters, confounds, standardize), as nilearn does. Runs that were fitted are read from the signals
        store instead of the images. With ``method="rena"`` and ``scaling=True``, each parcel's signal is
        multiplied by the square root of its size, as nilearn's ``ReNA.transform`` does.

        Returns
        -------
        xarray.DataArray ("time", "parcel") or a list of them (one per run, when ``imgs`` is a list)
            Lazy (dask-backed); ``np.asarray(result)`` is nilearn's (n_scans, n_parcels) array.
        """
        from daskparcel.ingest.resolve import resolve_runs

        self._check_fitted()
        single = not isinstance(imgs, list | tuple)
        runs = resolve_runs(imgs, chunk_volumes=self.chunk_volumes)
        confounds_list = per_run("confounds", confounds, len(runs))
        out = [
            self._transform_run(run, conf) for run, conf in zip(runs, confounds_list, strict=True)
        ]
        return out[0] if single else out

    def _transform_run(self, run: RunInput, confounds: Any) -> xr.DataArray:
        from daskparcel.parcels import parcel_means
        from daskparcel.preprocessing.cleaning import clean
        from daskparcel.preprocessing.pipeline import voxel_signals
        from daskparcel.preprocessing.smoothing import smooth_bold

        mask = np.asarray(self.mask_img_.dataobj, dtype=bool)
        affine = self.mask_img_.affine
        if not same_grid(run.data["bold"].shape[:3], run.data.attrs["affine"], mask.shape, affine):
            raise InputError(
                f"{run.name}: its grid {run.data['bold'].shape[:3]} differs from the fitted mask's "
                f"{mask.shape}; resample it to the fitted grid (nilearn.image.resample_to_img)"
            )
        fitted = self._fitted_identities.get(run.identity)
        if fitted is not None and self.store_ is not None:
            voxels = self.store_.run_signals("smoothed")[self.store_.runs.index(fitted)]
        else:
            smoothed = smooth_bold(run.data["bold"], affine, self.smoothing_fwhm)
            voxels = xr.DataArray(voxel_signals(smoothed, mask), dims=("voxel", "time"))
        means = parcel_means(voxels, self.labels_.values, self.n_parcels)
        params = self._clean_params(self._t_r([run]))
        conf = (
            run_confounds(confounds, run, self.confounds_columns) if confounds is not None else None
        )
        as_voxels = (
            means.transpose("parcel", "time")
            .rename(parcel="voxel")
            .chunk({"voxel": -1, "time": -1})
        )
        cleaned = clean(
            as_voxels.drop_vars([c for c in as_voxels.coords if c != "voxel"]),
            detrend=params.detrend,
            standardize=params.standardize_value(),
            confounds=conf,
            standardize_confounds=params.standardize_confounds,
            low_pass=params.low_pass,
            high_pass=params.high_pass,
            t_r=params.t_r,
        )
        result = cleaned.rename(voxel="parcel").transpose("time", "parcel")
        scale = self._scale()
        if scale is not None:
            result = result * xr.DataArray(scale.astype(np.float32), dims="parcel")
        result = result.assign_coords(
            parcel=np.arange(1, self.n_parcels + 1),
            run=("time", np.full(result.sizes["time"], run.name, dtype=object)),
        )
        result.name = "parcel_signals"
        return result

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
            scale = self._scale()
            if scale is not None:
                item = item / xr.DataArray(scale.astype(np.float32), dims="parcel")
            voxels = expand(item, self.labels_.values)
            volumes = to_volumes(voxels, mask, affine=self.mask_img_.affine)
            out.append(volumes)
        return out[0] if single else out
