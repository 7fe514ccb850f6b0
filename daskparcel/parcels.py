"""Voxels to parcels and back, lazily.

* :func:`parcel_means` is the heart of ``transform``: the mean signal of each parcel, a groupby
  reduction over the voxel axis done by `flox <https://flox.readthedocs.io>`_ (no loop over labels).
* :func:`expand` is the heart of ``inverse_transform``: each voxel takes its parcel's signal.
* :func:`to_volumes` scatters voxel signals back into the grid of a mask, as whole volumes, to write
  images.

Labels here follow the image convention: an integer array over the voxels of a mask (voxel order = C
order of the mask) with values ``1..K`` for the parcels and ``0`` for a voxel in no parcel.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Literal

import dask.array as da
import nibabel as nib
import numpy as np
import xarray as xr
from flox.xarray import xarray_reduce

from daskparcel.errors import InputError

logger = logging.getLogger(__name__)

__all__ = [
    "as_parcel_signals",
    "clean_parcel_signals",
    "expand",
    "labels_from_image",
    "parcel_means",
    "parcel_signals",
    "size_scale",
    "to_volumes",
    "to_voxel_volumes",
]

FloxMethod = Literal["map-reduce", "cohorts"]


def _time_coords(obj: xr.DataArray, dim: str = "time") -> dict[str, xr.Variable]:
    """The coordinates of ``obj`` that lie only along ``dim`` (e.g. ``run`` per time point)."""
    return {str(name): c.variable for name, c in obj.coords.items() if c.dims == (dim,)}


def check_signals(signals: object, name: str = "signals") -> xr.DataArray:
    if not isinstance(signals, xr.DataArray):
        raise InputError(
            f"{name}: expected an xarray.DataArray with dims ('voxel', 'time'), got "
            f"{type(signals).__name__}; wrap it with xr.DataArray(data, dims=('voxel', 'time'))"
        )
    if set(signals.dims) != {"voxel", "time"}:
        raise InputError(
            f"{name}: dims are {signals.dims}, expected ('voxel', 'time'); rename or transpose, "
            "e.g. signals.rename({'dim_0': 'voxel', 'dim_1': 'time'})"
        )
    return signals.transpose("voxel", "time")


def as_int_labels(labels: Any, name: str) -> np.ndarray:
    """Labels (any dims) as an int64 array; nibabel images are read."""
    if hasattr(labels, "get_fdata") and hasattr(labels, "affine"):
        labels = np.asarray(labels.dataobj)
    elif isinstance(labels, xr.DataArray):
        labels = labels.values
    values = np.asarray(labels)
    if values.size and not np.issubdtype(values.dtype, np.integer):
        if not np.issubdtype(values.dtype, np.number) or not np.all(values == np.round(values)):
            raise InputError(
                f"{name}: dtype {values.dtype} with non-integer values; labels must be integers "
                "0..K (0 = no parcel)"
            )
    values = values.astype(np.int64)
    if values.size and values.min() < 0:
        raise InputError(
            f"{name}: has negative values (min {values.min()}); labels must be 0 (no parcel) or "
            "1..K; if your labels are 0..K-1 cluster indices, pass labels + 1"
        )
    return values


def check_labels(
    labels: np.ndarray | xr.DataArray,
    n_voxels: int,
    n_parcels: int | None = None,
    name: str = "labels",
) -> tuple[np.ndarray, int]:
    """Validate voxel labels (``0`` = no parcel, ``1..K`` = parcels) and return them with ``K``.

    Parameters
    ----------
    labels : numpy array or xarray.DataArray, shape (n_voxels,)
        Integer parcel label of each voxel, in voxel order.
    n_voxels : int
        Number of voxels the labels must cover.
    n_parcels : int, optional
        Number of parcels ``K``; defaults to ``labels.max()``. Must be at least ``labels.max()``.
    name : str
        Name of the input, for error messages.

    Returns
    -------
    labels : numpy.ndarray of int64, shape (n_voxels,)
    n_parcels : int

    Raises
    ------
    InputError
        If the labels are not a 1D integer array of length ``n_voxels`` with values ``>= 0``, or if
        ``n_parcels`` is not an integer ``>= max(labels)``.
    """
    values = np.asarray(labels.values if isinstance(labels, xr.DataArray) else labels)
    if values.ndim != 1 or values.shape[0] != n_voxels:
        raise InputError(
            f"{name}: shape {values.shape}, expected ({n_voxels},), one label per voxel of the "
            "signals in voxel order; for a labels image use labels_img[mask]"
        )
    values = as_int_labels(values, name)
    max_label = int(values.max()) if values.size else 0
    if n_parcels is None:
        n_parcels = max_label
    if isinstance(n_parcels, bool) or not isinstance(n_parcels, int | np.integer) or n_parcels < 1:
        raise InputError(
            f"n_parcels={n_parcels!r}: must be an integer >= 1 (and labels must contain at least "
            "one parcel); pass n_parcels=None to use max(labels)"
        )
    if n_parcels < max_label:
        raise InputError(
            f"n_parcels={n_parcels}: smaller than the largest label {max_label} of {name}; pass "
            f"n_parcels={max_label} or more (or None to use max(labels))"
        )
    return values, int(n_parcels)


def parcel_means(
    signals: xr.DataArray,
    labels: np.ndarray | xr.DataArray,
    n_parcels: int | None = None,
    *,
    method: FloxMethod | None = None,
) -> xr.DataArray:
    """Mean signal of each parcel, lazily (a flox groupby-mean over the voxel axis).

    Parameters
    ----------
    signals : xarray.DataArray, dims ("voxel", "time")
        Voxel signals, dask-backed or numpy. Any chunking works: voxel blocks x full time (the
        signals contract; a map-reduce over the voxel chunks) or blocks of whole volumes (one
        voxel chunk; the reduction is then blockwise along time).
    labels : numpy array or xarray.DataArray, shape (n_voxels,)
        Parcel of each voxel, ``1..K``; voxels labelled ``0`` belong to no parcel and are ignored.
    n_parcels : int, optional
        Number of parcels ``K`` (default ``max(labels)``). Parcels ``1..K`` are all in the output,
        even those with no voxel.
    method : {"map-reduce", "cohorts"}, optional
        flox strategy. Default: ``"map-reduce"`` (each voxel chunk is reduced to per-parcel sums,
        then those are combined in a tree), which suits parcels spread arbitrarily over the voxel
        chunks; ``"cohorts"`` can help when each voxel chunk holds few of the parcels (flox then
        reduces groups of parcels that occur together). The choice, and whether the map-reduce
        intermediates are dense over all ``K`` parcels (``reindex``), are logged at DEBUG on this
        module's logger.

    Returns
    -------
    xarray.DataArray, dims ("time", "parcel")
        Lazy when ``signals`` is dask-backed, chunked like the time axis of ``signals`` with one
        chunk along ``parcel``. Coordinate ``parcel`` = ``1..K``; the coordinates of ``signals``
        along time (e.g. ``run``) are kept. Sums are accumulated in float64 and the result has the
        dtype of ``signals`` when it is a float type (float64 otherwise). An empty parcel (no voxel)
        has NaN at every time point: the mean of no voxel is undefined.

    Raises
    ------
    InputError
        If ``signals`` is not a ("voxel", "time") DataArray or the labels do not match it.

    Notes
    -----
    The same as ``nilearn.maskers.NiftiLabelsMasker(strategy="mean")`` on the labels image (for
    parcels that are present) and as ``sklearn.cluster.FeatureAgglomeration(pooling_func=np.mean)
    .transform`` with labels - 1.
    """
    signals = check_signals(signals)
    codes, n_parcels = check_labels(labels, signals.sizes["voxel"], n_parcels)
    out_dtype = signals.dtype if np.issubdtype(signals.dtype, np.floating) else np.dtype("float64")

    if method is None:
        method = "map-reduce"
    if method not in ("map-reduce", "cohorts"):
        raise InputError(
            f"method={method!r}: unknown flox method for parcel means; pass 'map-reduce' or "
            "'cohorts' (or None for the default)"
        )
    data = signals.data
    reindex: bool | None = None
    if isinstance(data, da.Array):
        voxel_chunks = data.chunks[0]
        # Dense intermediates (one row per parcel) are fastest, but for a chunk of fewer voxels than
        # parcels they are bigger than the chunk itself: then keep only the parcels present.
        reindex = method == "map-reduce" and min(voxel_chunks) >= n_parcels
        logger.debug(
            "parcel_means: %d parcels, %d voxels in %d chunk(s) x %d time chunk(s); flox "
            "method=%s, reindex=%s",
            n_parcels,
            signals.sizes["voxel"],
            len(voxel_chunks),
            len(data.chunks[1]),
            method,
            reindex,
        )
        if method != "map-reduce":
            reindex = None
    by = xr.DataArray(codes, dims="voxel", name="parcel")
    # flox drops voxels whose label is not in expected_groups (label 0) and gives NaN for a parcel
    # with no voxel.
    means = xarray_reduce(
        signals.drop_vars([n for n, c in signals.coords.items() if "voxel" in c.dims]),
        by,
        func="mean",
        expected_groups=np.arange(1, n_parcels + 1),
        dim="voxel",
        dtype=np.float64,
        fill_value=np.nan,
        method=method,
        reindex=reindex,
    )
    means = means.transpose("time", "parcel").astype(out_dtype)
    means.name = "parcel_signals"
    return means


def _auto_voxel_chunks(n_voxels: int, n_time: int, dtype: np.dtype) -> tuple[int, ...]:
    chunks = da.core.normalize_chunks(("auto", -1), shape=(n_voxels, n_time), dtype=dtype)
    return tuple(chunks[0])


def _take_rows(codes: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Row ``codes[i]`` of ``table`` for each ``i`` (code -1: zeros)."""
    out = np.zeros((codes.shape[0], table.shape[1]), dtype=table.dtype)
    inside = codes >= 0
    out[inside] = table[codes[inside]]
    return out


def expand(
    parcel_signals: xr.DataArray,
    labels: np.ndarray | xr.DataArray,
    *,
    voxel_chunks: int | tuple[int, ...] | None = None,
) -> xr.DataArray:
    """Each voxel takes its parcel's signal (the inverse of :func:`parcel_means`), lazily.

    Parameters
    ----------
    parcel_signals : xarray.DataArray, dims ("time", "parcel")
        One signal per parcel ``1..K`` (as returned by :func:`parcel_means`).
    labels : numpy array or xarray.DataArray, shape (n_voxels,)
        Parcel of each voxel, ``1..K`` with ``K = max(labels)``. A voxel labelled ``0`` gets zeros.
    voxel_chunks : int or tuple of int, optional
        Chunks of the output along ``voxel``; default: dask's automatic chunk size with the full
        time axis in each chunk.

    Returns
    -------
    xarray.DataArray, dims ("voxel", "time")
        Dask-backed, chunked by voxel blocks x full time (the signals contract); the coordinates of
        ``parcel_signals`` along time are kept. Built by indexing, one task per voxel block, each
        reading the whole (small) ``time x parcel`` table.

    Raises
    ------
    InputError
        If ``parcel_signals`` is not a ("time", "parcel") DataArray, or if its number of parcels is
        not ``max(labels)``.

    Notes
    -----
    The same as ``sklearn.cluster.FeatureAgglomeration.inverse_transform`` with labels - 1.
    """
    if not isinstance(parcel_signals, xr.DataArray) or set(parcel_signals.dims) != {
        "time",
        "parcel",
    }:
        got = parcel_signals.dims if isinstance(parcel_signals, xr.DataArray) else None
        raise InputError(
            f"parcel_signals: expected an xarray.DataArray with dims ('time', 'parcel'), got "
            f"{type(parcel_signals).__name__} with dims {got}; pass the output of parcel_means"
        )
    parcel_signals = parcel_signals.transpose("time", "parcel")
    n_parcels = parcel_signals.sizes["parcel"]
    labels_np = np.asarray(labels.values if isinstance(labels, xr.DataArray) else labels)
    if labels_np.ndim != 1:
        raise InputError(
            f"labels: shape {labels_np.shape}, expected one label per voxel (1D); for a labels "
            "image use labels_img[mask]"
        )
    codes, k = check_labels(labels_np, labels_np.shape[0])
    if k != n_parcels:
        raise InputError(
            f"parcel_signals: has {n_parcels} parcels but max(labels) = {k}; the parcel signals "
            "must come from the same labels (parcel_means(signals, labels) gives one column per "
            "parcel 1..max(labels))"
        )
    if "parcel" in parcel_signals.coords:
        expected = np.arange(1, n_parcels + 1)
        if not np.array_equal(np.asarray(parcel_signals["parcel"].values), expected):
            raise InputError(
                "parcel_signals: the 'parcel' coordinate is not 1..K in order; sort it with "
                "parcel_signals.sortby('parcel') or pass the output of parcel_means"
            )
    n_voxels, n_time = codes.shape[0], parcel_signals.sizes["time"]
    dtype = parcel_signals.dtype
    if voxel_chunks is None:
        voxel_chunks = _auto_voxel_chunks(n_voxels, n_time, dtype)
    codes_da = da.from_array(codes - 1, chunks=(voxel_chunks,), name=False)
    table = da.asarray(parcel_signals.data).T.rechunk((-1, -1))  # (parcel, time), one chunk
    out = da.blockwise(
        _take_rows,
        "vt",
        codes_da,
        "v",
        table,
        "pt",
        concatenate=True,
        dtype=dtype,
        meta=np.empty((0, 0), dtype=dtype),
    )
    logger.debug(
        "expand: %d parcels -> %d voxels in %d chunk(s)", n_parcels, n_voxels, out.numblocks[0]
    )
    return xr.DataArray(
        out, dims=("voxel", "time"), coords=_time_coords(parcel_signals), name="signals"
    )


def _scatter(block: np.ndarray, mask: np.ndarray, fill: float) -> np.ndarray:
    """(n_voxels, t) -> (x, y, z, t): voxel values into the mask's grid, ``fill`` outside."""
    out = np.full((*mask.shape, block.shape[1]), fill, dtype=block.dtype)
    out[mask] = block
    return out


def to_volumes(
    signals: xr.DataArray,
    mask: np.ndarray,
    *,
    time_chunks: int | None = None,
    affine: np.ndarray | None = None,
    t_r: float | None = None,
) -> xr.DataArray:
    """Scatter voxel signals back into the grid of ``mask``, as whole volumes, lazily.

    Parameters
    ----------
    signals : xarray.DataArray, dims ("voxel", "time")
        One row per voxel of ``mask`` in voxel order (C order of the mask).
    mask : numpy.ndarray of bool, 3D
        The mask the voxels come from.
    time_chunks : int, optional
        Number of volumes per output chunk; default: dask's automatic chunk size.
    affine : numpy.ndarray, shape (4, 4), optional
        Stored as the ``affine`` attribute (nested list), as in a run.
    t_r : float, optional
        The repetition time in seconds, stored as the ``t_r`` attribute (what :func:`daskparcel.to_nifti`
        writes as the header's time step); default: the ``t_r`` attribute of ``signals``, if any.

    Returns
    -------
    xarray.DataArray, dims ("x", "y", "z", "t")
        Dask-backed, chunked in whole volumes (``x, y, z`` one chunk each), 0 outside the mask,
        with the dtype of ``signals``; coordinates of ``signals`` along time are kept along ``t``.
        This is the voxel-to-volume transpose: each output chunk reads its time block of every
        voxel chunk.

    Raises
    ------
    InputError
        If ``mask`` is not 3D or its number of voxels differs from the signals'.

    Notes
    -----
    The same as ``nilearn.masking.unmask(signals.T, mask_img)`` (which puts time last).
    """
    signals = check_signals(signals)
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise InputError(f"mask: has {mask.ndim} dimensions, expected a 3D boolean array")
    mask = mask.astype(bool)
    n_voxels, n_time = signals.sizes["voxel"], signals.sizes["time"]
    if int(mask.sum()) != n_voxels:
        raise InputError(
            f"mask: has {int(mask.sum())} voxels but signals has {n_voxels}; pass the mask the "
            "signals were extracted with"
        )
    data = da.asarray(signals.data)
    if time_chunks is None:
        time_chunks = da.core.normalize_chunks(
            (*mask.shape, "auto"), shape=(*mask.shape, n_time), dtype=data.dtype
        )[3][0]
    data = data.rechunk((-1, time_chunks))
    x, y, z = mask.shape
    out = da.blockwise(
        _scatter,
        "xyzt",
        data,
        "vt",
        new_axes={"x": x, "y": y, "z": z},
        concatenate=True,
        dtype=data.dtype,
        meta=np.empty((0, 0, 0, 0), dtype=data.dtype),
        mask=mask,
        fill=0,
    )
    coords = {name: (("t",), var.values) for name, var in _time_coords(signals).items()}
    attrs: dict[str, Any] = {}
    if affine is not None:
        attrs["affine"] = np.asarray(affine, dtype=float).tolist()
    t_r = signals.attrs.get("t_r") if t_r is None else t_r
    if t_r is not None:
        attrs["t_r"] = float(t_r)
    return xr.DataArray(out, dims=("x", "y", "z", "t"), coords=coords, attrs=attrs, name="bold")


def labels_from_image(
    labels_img: Any, mask_img: Any = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A labels image's values in its mask: ``(label value per mask voxel, mask, affine)``.

    ``labels_img`` holds integer labels >= 0 (0 = background; values may have gaps, as an atlas's do:
    :mod:`daskparcel.atlas` maps them to parcels); ``mask_img`` (default: the labelled voxels) is on its grid.
    """
    name = str(labels_img) if isinstance(labels_img, str | os.PathLike) else "labels_img"
    if isinstance(labels_img, str | os.PathLike):
        try:
            labels_img = nib.load(labels_img)
            volume = np.asarray(labels_img.dataobj)
        except Exception as exc:  # empty, truncated, not an image: nibabel's errors vary
            raise InputError(
                f"{name}: not a readable NIfTI labels image ({type(exc).__name__}); give the "
                "labels.nii.gz of `daskparcel fit` or an integer atlas"
            ) from exc
    else:
        volume = np.asarray(labels_img.dataobj)
    if volume.ndim != 3 or (
        not np.issubdtype(volume.dtype, np.integer) and not np.all(volume == np.round(volume))
    ):
        raise InputError(
            f"{name}: a {volume.ndim}D {volume.dtype} image; give a 3D image of integer labels "
            "(0 = background, 1..K)"
        )
    volume = volume.astype(np.int64)
    if volume.min() < 0:
        raise InputError(
            f"{name}: negative labels (down to {volume.min()}); give labels 0 = background, 1..K"
        )
    if mask_img is not None:
        mask_img = nib.load(mask_img) if isinstance(mask_img, str | os.PathLike) else mask_img
        mask = np.asarray(mask_img.dataobj) > 0
    else:
        mask = volume > 0
    if mask.shape != volume.shape:
        raise InputError(f"mask_img: its grid {mask.shape} differs from the labels' {volume.shape}")
    values = volume[mask]
    if not (values > 0).any():
        raise InputError(
            f"{name}: no label > 0 in the mask; give an atlas with labels (0 = background) and a mask "
            "that overlaps them"
        )
    return values, mask, np.asarray(labels_img.affine, dtype=float)


def clean_parcel_signals(means: xr.DataArray, params: Any, confounds: Any = None) -> xr.DataArray:
    """Clean parcel mean signals (parcel, time) as nilearn's ``NiftiLabelsMasker`` does after averaging:
    detrend, filters, confounds and standardization of ``params`` (a ``CleanParams``); (time, parcel) out."""
    from daskparcel.preprocessing.cleaning import clean

    as_voxels = (
        means.transpose("parcel", "time").rename(parcel="voxel").chunk({"voxel": -1, "time": -1})
    )
    cleaned = clean(
        as_voxels.drop_vars([c for c in as_voxels.coords if c != "voxel"]),
        detrend=params.detrend,
        standardize=params.standardize_value(),
        confounds=confounds,
        standardize_confounds=params.standardize_confounds,
        low_pass=params.low_pass,
        high_pass=params.high_pass,
        t_r=params.t_r,
    )
    return cleaned.rename(voxel="parcel").transpose("time", "parcel")


def as_parcel_signals(
    signals: Any, n_parcels: int, values: np.ndarray | None = None
) -> xr.DataArray:
    """Parcel signals (an xarray ("time", "parcel"), or an array (n_scans, n_parcels) / (n_parcels,)) as a
    DataArray ("time", "parcel") with parcel coordinates 1..K, checked against the parcellation's K.

    ``values`` are an atlas's label values: a DataArray's ``parcel`` coordinate must be them, in that order.
    """
    if isinstance(signals, xr.DataArray) and values is not None and "parcel" in signals.coords:
        given = np.asarray(signals["parcel"].values)
        if given.shape != values.shape or not np.array_equal(given, values):
            raise InputError(
                f"signals: parcel coordinate {given[:5].tolist()}... is not the atlas's labels "
                f"{values[:5].tolist()}...; give the output of transform() of this estimator"
            )
    if not isinstance(signals, xr.DataArray):
        array = signals if isinstance(signals, da.Array) else np.asarray(signals)
        if array.ndim == 1:
            array = array[None, :]
        signals = xr.DataArray(array, dims=("time", "parcel"))
    if signals.sizes.get("parcel") != n_parcels:
        raise InputError(
            f"signals have {signals.sizes.get('parcel', signals.shape[-1])} parcels, the parcellation "
            f"has {n_parcels}; give the output of transform() of this estimator"
        )
    return signals.drop_vars("name", errors="ignore").assign_coords(
        parcel=np.arange(1, n_parcels + 1)
    )


def size_scale(labels: np.ndarray, n_parcels: int) -> np.ndarray:
    """The square root of each parcel's size (ReNA's ``scaling``), for labels 1..K."""
    sizes = np.bincount(labels, minlength=n_parcels + 1)[1:]
    return np.sqrt(sizes.astype(np.float64))


def to_voxel_volumes(
    signals: Any,
    labels: np.ndarray,
    n_parcels: int,
    mask_img: Any,
    scale: np.ndarray | None = None,
    values: np.ndarray | None = None,
    *,
    t_r: float | None = None,
) -> xr.DataArray:
    """``inverse_transform`` of one item: parcel signals (checked by :func:`as_parcel_signals`) divided by
    ``scale``, expanded to the voxels of ``labels`` (1..``n_parcels``) and scattered as volumes on
    ``mask_img``'s grid, with the signals' TR (their ``t_r`` attribute, as ``transform`` gives it) or ``t_r``."""
    mask = np.asarray(mask_img.dataobj, dtype=bool)
    item = as_parcel_signals(signals, n_parcels, values)
    t_r = item.attrs.get("t_r", t_r)
    if scale is not None:
        item = item / xr.DataArray(scale.astype(np.float32), dims="parcel")
    return to_volumes(expand(item, labels), mask, affine=mask_img.affine, t_r=t_r)


def parcel_signals(
    voxels: xr.DataArray,
    labels: np.ndarray,
    n_parcels: int,
    params: Any,
    confounds: Any = None,
    *,
    scale: np.ndarray | None = None,
    run: str = "",
    t_r: float | None = None,
) -> xr.DataArray:
    """``transform`` of one run: parcel means of its smoothed voxel signals (voxel, time), cleaned as nilearn's
    ``NiftiLabelsMasker`` cleans them (``params``: a ``CleanParams``), times ``scale`` per parcel if given.

    Returns a lazy ("time", "parcel") DataArray named ``parcel_signals``, parcels 1..K, ``run`` on time, and the
    run's repetition time (``params.t_r`` when set, else ``t_r``) as its ``t_r`` attribute when known.
    """
    result = clean_parcel_signals(parcel_means(voxels, labels, n_parcels), params, confounds)
    if scale is not None:
        result = result * xr.DataArray(scale.astype(np.float32), dims="parcel")
    result = result.assign_coords(
        parcel=np.arange(1, n_parcels + 1),
        run=("time", np.full(result.sizes["time"], run, dtype=object)),
    )
    result.name = "parcel_signals"
    t_r = params.t_r if getattr(params, "t_r", None) is not None else t_r
    if t_r is not None:
        result.attrs["t_r"] = float(t_r)
    return result
