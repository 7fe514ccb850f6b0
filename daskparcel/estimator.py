"""``Parcellations``: nilearn's estimator, out of core.

Code written for ``nilearn.regions.Parcellations`` ports by changing the import: same parameter names and
defaults, same fitted attributes (``labels_img_``, ``mask_img_``, ``n_elements_``), same answers. This module
holds the parameters, their validation (one declared place, run before any data is read), the orchestration
of ``fit`` and ``transform``. The work is elsewhere: inputs are resolved by :mod:`daskparcel.ingest.resolve`,
the mask and signals passes are :mod:`daskparcel.preprocessing.pipeline` (writing the signals store,
:mod:`daskparcel.store.signals`, the cache), the reduction is :mod:`daskparcel.reduction` and the methods are
registered in :data:`daskparcel.clustering.METHODS`.

``fit`` computes at named points only: the mask, the signals store, the reduction, the clustering (each cached);
``transform`` and ``inverse_transform`` return lazy xarray objects.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.exceptions import NotFittedError

from daskparcel._checks import (
    Check,
    boolean,
    check_n_clusters,
    check_params,
    fwhm,
    integer,
    mapping_or_none,
    member_of,
    one_of,
    positive_or_none,
)
from daskparcel._fit_cluster import check_k_or_threshold, cluster, k_or_none
from daskparcel._log import collect_serial, timed, verbosity
from daskparcel.atlas import label_parcels, load_atlas
from daskparcel.clustering import METHODS
from daskparcel.errors import InputError
from daskparcel.features import is_maps, maps_dataset, transform_maps
from daskparcel.geometry.fitting import (
    check_surface_params,
    fit_geometry,
    fitted_images,
    inverse_items,
    transform_grid,
)
from daskparcel.ingest.resolve import per_run, prepare_runs, repetition_time, run_confounds
from daskparcel.parcels import parcel_signals, size_scale
from daskparcel.preprocessing.masking import MASK_STRATEGIES
from daskparcel.preprocessing.pipeline import default_cache_dir, run_mask, write_signals
from daskparcel.store.signals import CleanParams, RunInput, SignalsStore

logger = logging.getLogger(__name__)

#: The check of each parameter that has one (the others are checked where they are used: imgs, mask, store).
PARAMETER_CHECKS: dict[str, Check] = {
    "method": member_of(METHODS),
    "n_parcels": k_or_none,  # None with distance_threshold (daskparcel._fit_cluster)
    "n_components": integer(1),
    "n_iter": integer(1),
    "smoothing_fwhm": fwhm,
    "standardize": one_of(False, True, None, "zscore_sample", "zscore", "psc"),
    "standardize_confounds": boolean,
    "detrend": boolean,
    "scaling": boolean,
    "low_pass": positive_or_none,
    "high_pass": positive_or_none,
    "t_r": positive_or_none,
    "mask_strategy": one_of(*MASK_STRATEGIES),
    "mask_args": mapping_or_none,
    "kmeans_method": one_of("minibatch", "lloyd"),
    "n_init": integer(1),
    "weighting": boolean,
    "distance_threshold": positive_or_none,
}


class Parcellations(TransformerMixin, BaseEstimator):
    """Learn a brain parcellation from fMRI runs, out of core (nilearn's ``Parcellations``).

    Parameters
    ----------
    method : {"kmeans", "hierarchical_kmeans", "ward", "complete", "average", "rena"}
        The clustering (the names of :data:`daskparcel.clustering.METHODS`). kmeans and hierarchical_kmeans cluster voxels on their reduced time courses;
        ward, complete and average are agglomerations constrained by the mask's 6-neighbour lattice (each
        parcel one connected region), exactly scikit-learn's; rena is recursive nearest-neighbour agglomeration,
        run blockwise.
    n_parcels : int or None, default=50
        Number of parcels: exactly this many are returned, for every method (None with ``distance_threshold``).
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
    n_init : int, default=1
        kmeans / hierarchical_kmeans: starts run as parallel tasks, the one with the best compression R^2
        of the signals kept (1: nilearn's single start).
    weighting : bool, default=True
        kmeans / hierarchical_kmeans: cluster the reduction's components weighted by the signal variance
        they carry, so that kmeans minimises what compression R^2 judges (False: nilearn's features, and
        with ``n_init=1`` nilearn's labels).
    distance_threshold : float, optional
        ward / complete / average: cut the merge tree where merges reach this linkage distance instead of at
        ``n_parcels`` (which must then be None), as scikit-learn's ``AgglomerativeClustering``.

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
    children_, distances_ : numpy.ndarray (n_merges, 2), (n_merges,)
        ward / complete / average: the merge tree as scikit-learn's (leaves numbered as ``labels_``).
    tree_ : MergeTree or None
        The merge tree of ward / complete / average, kept in the signals store: a fit with another
        ``n_parcels`` cuts it again without rebuilding, in this process or a later one.
    geometry_ : SurfaceGeometry, CiftiGeometry or None
        The meshes and vertex mask of a fit on SurfaceImages (labels_img_ is then a SurfaceImage), or the brain model of CIFTI runs (a dlabel Cifti2Image).
    atlas_ : daskparcel.atlas.Atlas or None
        The atlas of :meth:`from_labels` (label values, names); None when fitted.
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
        n_init: int = 1,
        weighting: bool = True,
        distance_threshold: float | None = None,
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
        self.n_init = n_init
        self.weighting = weighting
        self.distance_threshold = distance_threshold

    # ------------------------------------------------------------------------------------ validation
    def _validate_params(self) -> None:
        """Every parameter check, declared in :data:`PARAMETER_CHECKS`; run by ``fit`` before any data is
        read."""
        check_params(self.get_params(), PARAMETER_CHECKS)
        check_k_or_threshold(self.get_params())
        if self.scaling and self.method != "rena":
            raise InputError(
                f"scaling=True: only used by method='rena' (method={self.method!r}); pass scaling=False"
            )

    def _clean_params(self, runs: Sequence[RunInput]) -> CleanParams:
        """The smoothing and cleaning parameters of ``runs`` (with their TR when filtering needs it)."""
        filtering = self.low_pass is not None or self.high_pass is not None
        return CleanParams.of(self.get_params(), repetition_time(runs, self.t_r, needed=filtering))

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
        from daskparcel.runtime import connect, workers

        self._validate_params()
        check_surface_params(self.get_params(), imgs)
        timings: dict[str, float] = {}
        step = partial(timed, timings)
        with step("total"), collect_serial(timings):
            # the runs' headers, confounds, and each file's SHA-256 (the cache's identity)
            with step("inputs"):
                runs = prepare_runs(  # 3D maps: one run whose "time" axis is the maps
                    maps_dataset(imgs) if is_maps(imgs, 2) else imgs, confounds, sample_mask,
                    chunk_volumes=self.chunk_volumes, confounds_columns=self.confounds_columns,
                )  # fmt: skip
            geometry = fit_geometry(runs, self.get_params())  # None: volume runs
            affine = np.asarray(runs[0].data.attrs["affine"], dtype=float)
            params = self._clean_params(runs)
            cache = Path(self.store) if self.store is not None else default_cache_dir()
            since = workers.now()  # workers_: the workers of this fit, also those lost on the way
            with connect(self.client) as client, verbosity(self.verbose):
                with step("mask", logger) as notes:
                    mask = geometry.grid_mask() if geometry else run_mask(
                        runs, affine, cache, mask=self.mask, strategy=self.mask_strategy,
                        mask_args=self.mask_args,
                    )  # fmt: skip
                    notes.append(f"{int(mask.sum())} voxels")
                if self.n_parcels is not None:
                    check_n_clusters(self.n_parcels, int(mask.sum()), "n_parcels")
                logger.debug("signals: %d run(s), %s, into %s", len(runs), params, cache)
                with step("signals", logger) as notes:
                    store = write_signals(
                        runs, mask, affine, params, cache, voxel_chunk=self.voxel_chunk
                    )
                    notes.append(f"{len(runs)} run(s) in {store.path}")
                with step("reduction", logger) as notes:
                    reduce = partial(
                        reduce_runs, n_components=self.n_components, random_state=self.random_state
                    )
                    features = store.features(self.n_components, self.random_state, reduce)
                    notes.append(f"{features.shape[1]} components")
                logger.info(
                    "%s: clustering %d voxels into %s parcels",
                    self.method,
                    len(features),
                    self.n_parcels or f"distance {self.distance_threshold}",
                )
                with step("clustering", logger):
                    labels = cluster(self, features, mask, store, geometry)
                self.workers_ = workers.workers_seen(client, since)
        self._set_fitted(labels, mask, affine, features, store, runs, timings, geometry)
        return self

    def _set_fitted(self, labels: np.ndarray, mask: np.ndarray, affine: np.ndarray, features: np.ndarray, store: SignalsStore | None, runs: Sequence[RunInput], timings: dict[str, float], geometry: Any = None) -> None:  # fmt: skip
        self._set_labels(np.asarray(labels, dtype=np.int64) + 1, mask, affine, geometry=geometry)
        self.components_ = features.T
        self.store_ = store
        self.signals_store_: Path | None = None if store is None else store.path
        self.timings_ = timings
        self.runs_ = [r.name for r in runs]
        self._fitted_identities = {r.identity: r.name for r in runs}

    def _set_labels(self, values: np.ndarray, mask: np.ndarray, affine: np.ndarray, atlas: Any = None, geometry: Any = None) -> None:  # fmt: skip
        """``labels_`` (1..K of the mask's voxels), ``labels_img_`` (the atlas's values if given), ``mask_img_``,
        ``n_elements_``, ``atlas_``; no runs nor store (``fit`` sets them after)."""
        self.labels_, self.labels_img_, self.mask_img_ = fitted_images(values, mask, affine, atlas, geometry)  # fmt: skip
        self.n_elements_ = int(self.n_parcels or values.max())
        self.atlas_, self.store_, self.signals_store_, self.runs_ = atlas, None, None, []
        self._fitted_identities, self.geometry_ = {}, geometry

    @classmethod
    def from_labels(cls, labels_img: Any, mask_img: Any = None, lut: Any = None, **params: Any) -> Parcellations:  # fmt: skip
        """An estimator fitted with a given parcellation or atlas (to ``transform`` / ``inverse_transform`` runs).

        Parameters
        ----------
        labels_img : nibabel image or path
            Integer labels, 0 = background (``labels.nii.gz`` of ``daskparcel fit``, or an atlas with gaps in its
            values: :mod:`daskparcel.atlas`; runs on another grid get it resampled to theirs, with a warning).
        mask_img : nibabel image or path, optional
            The mask (default: the labelled voxels), on the labels' grid.
        lut : path or pandas.DataFrame, optional
            A BIDS look-up table (``index``, ``name``): ``transform`` gets a ``name`` coordinate on ``parcel``.
        **params
            Parameters of the estimator (smoothing and cleaning of ``transform``).
        """
        atlas = load_atlas(labels_img, mask_img, lut)
        est = cls(n_parcels=atlas.n_parcels, **params)
        est._set_labels(atlas.codes(), atlas.mask, atlas.affine, atlas)
        return est

    # ------------------------------------------------------------------------------------ transform
    def _check_fitted(self) -> None:
        if not hasattr(self, "labels_img_"):
            raise NotFittedError(
                "This Parcellations instance is not fitted yet: call fit(imgs) before transform / inverse_transform"
            )

    def _scale(self) -> np.ndarray | None:
        """ReNA's ``scaling``: the square root of each parcel's size (None when not scaling)."""
        rena = self.scaling and self.method == "rena"
        return size_scale(self.labels_.values, self.n_parcels) if rena else None

    def transform(self, imgs: Any, confounds: Any = None, *, as_features: bool | None = None) -> Any:  # fmt: skip
        """Mean signal of each parcel, lazily (nilearn's ``NiftiLabelsMasker`` with the fit's parameters).

        Each run is smoothed, masked and averaged per parcel, then the parcel signals are cleaned (detrend,
        filters, confounds, standardize), as nilearn does. Runs that were fitted are read from the signals
        store instead of the images. With ``method="rena"`` and ``scaling=True``, each parcel's signal is
        multiplied by the square root of its size, as nilearn's ``ReNA.transform`` does. 3D maps (what a
        scikit-learn ``Pipeline`` passes) are features: :func:`daskparcel.features.transform_maps`
        (``as_features=True``: the volumes of 4D images are maps, e.g. contrast maps; False: never).

        Returns
        -------
        xarray.DataArray ("time", "parcel") or a list of them (one per run, when ``imgs`` is a list)
            Lazy (dask-backed); ``np.asarray(result)`` is nilearn's (n_scans, n_parcels) array. For maps: a
            numpy array (n_maps, n_parcels).
        """
        from daskparcel.ingest.resolve import resolve_runs

        self._check_fitted()
        if as_features or (as_features is None and is_maps(imgs)):
            return transform_maps(self, imgs, confounds, scale=self._scale())
        single = not isinstance(imgs, list | tuple)
        runs = resolve_runs(imgs, chunk_volumes=self.chunk_volumes)
        confounds_list = per_run("confounds", confounds, len(runs))
        out = [
            self._transform_run(run, conf) for run, conf in zip(runs, confounds_list, strict=True)
        ]
        return out[0] if single else out

    def _transform_run(self, run: RunInput, confounds: Any) -> xr.DataArray:
        from daskparcel.preprocessing.pipeline import run_voxel_signals

        fitted = self._fitted_identities.get(run.identity)
        stored = None
        if fitted is not None and self.store_ is not None:
            stored = self.store_.run_signals("smoothed")[self.store_.runs.index(fitted)]
        codes, mask, affine, fwhm = transform_grid(self, run)
        voxels = run_voxel_signals(run, mask, affine, fwhm, stored)
        conf = (
            run_confounds(confounds, run, self.confounds_columns) if confounds is not None else None
        )
        result = parcel_signals(
            voxels, codes, self.n_elements_, self._clean_params([run]), conf,
            scale=self._scale(), run=run.name, t_r=run.t_r,
        )  # fmt: skip
        return label_parcels(result, getattr(self, "atlas_", None))

    def fit_transform(
        self, imgs: Any, y: Any = None, confounds: Any = None, **fit_params: Any
    ) -> Any:
        """``fit`` then ``transform`` of the same runs (the preprocessing is done once)."""
        self.fit(imgs, confounds=confounds, **fit_params)
        return self.transform(imgs, confounds=confounds)

    def inverse_transform(self, signals: Any) -> Any:
        """Images in which each voxel takes its parcel's signal (the "compressed representation"), lazily.

        Parameters
        ----------
        signals : xarray.DataArray ("time", "parcel"), array (n_scans, n_parcels), or a list of them
            (for an atlas, a ``parcel`` coordinate must be its label values, as ``transform`` gives)

        Returns
        -------
        xarray.DataArray ("x", "y", "z", "t") or a list of them
            Lazy, chunked in whole volumes, with the ``affine`` attribute and the ``t_r`` of the signals
            (``transform`` gives the run's; else the ``t_r`` parameter): write it with
            :func:`daskparcel.to_nifti` (streamed) or ``.to_zarr``. For surface runs: a nilearn
            ``SurfaceImage`` (vertex, time) or a list of them.
        """
        self._check_fitted()
        return inverse_items(self, signals)
