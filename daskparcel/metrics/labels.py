"""Quality figures of the labels alone: parcel sizes, contiguity, agreement of two parcellations."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from daskparcel.errors import InputError
from daskparcel.parcels import as_int_labels, check_labels, check_signals

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# parcel sizes
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParcelSizes:
    """Sizes of the parcels of a parcellation.

    Attributes
    ----------
    sizes : numpy.ndarray of int, shape (K,)
        Number of voxels of parcel ``k`` at index ``k - 1``.
    cv : float
        Coefficient of variation of the sizes: population standard deviation / mean (0 when all
        parcels have the same size), over all ``K`` parcels.
    largest : int
        Size of the largest parcel.
    largest_label : int
        Label of the largest parcel (the smallest such label on ties).
    n_singletons : int
        Number of parcels of exactly one voxel.
    n_empty : int
        Number of parcels ``1..K`` with no voxel.
    """

    sizes: np.ndarray
    cv: float
    largest: int
    largest_label: int
    n_singletons: int
    n_empty: int

    @property
    def n_parcels(self) -> int:
        """Number of parcels ``K``."""
        return int(self.sizes.shape[0])

    def histogram(
        self, bins: int | np.ndarray = 20, *, log: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Histogram of the non-empty parcel sizes.

        Parameters
        ----------
        bins : int or array
            Number of bins, or the bin edges.
        log : bool, default True
            With an integer ``bins``: log-spaced edges from 1 to the largest size (sizes span
            orders of magnitude for kmeans-type parcellations); else linear edges.

        Returns
        -------
        counts, edges : numpy.ndarray
            As :func:`numpy.histogram`.
        """
        sizes = self.sizes[self.sizes > 0]
        if isinstance(bins, int | np.integer) and log:
            top = max(int(sizes.max()) if sizes.size else 1, 2)
            bins = np.logspace(0, np.log10(top), int(bins) + 1)
            bins[-1] = top  # exact upper edge, so the largest parcel is counted
        counts, edges = np.histogram(sizes, bins=bins)
        return counts, edges


def parcel_sizes(labels: Any, n_parcels: int | None = None) -> ParcelSizes:
    """Sizes of the parcels, and summaries of their balance.

    Parameters
    ----------
    labels : array-like or nibabel image
        Labels ``1..K`` (``0`` = background) of voxels (1D) or of a labels image (3D).
    n_parcels : int, optional
        ``K``, default ``max(labels)``; parcels up to ``K`` without a voxel count as empty.

    Returns
    -------
    ParcelSizes

    Raises
    ------
    InputError
        If the labels are not non-negative integers, contain no parcel, or exceed ``n_parcels``.
    """
    values = as_int_labels(labels, "labels").ravel()
    _, k = check_labels(values, values.shape[0], n_parcels)
    sizes = np.bincount(values, minlength=k + 1)[1:]
    mean = sizes.mean()
    return ParcelSizes(
        sizes=sizes,
        cv=float(sizes.std() / mean) if mean > 0 else float("nan"),
        largest=int(sizes.max()),
        largest_label=int(np.argmax(sizes)) + 1,
        n_singletons=int(np.sum(sizes == 1)),
        n_empty=int(np.sum(sizes == 0)),
    )


# --------------------------------------------------------------------------------------------------
# spatial contiguity
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Contiguity:
    """Spatial contiguity of a parcellation (6-connectivity, as ``grid_to_graph``).

    Attributes
    ----------
    fraction : float
        Fraction of the non-empty parcels that are one connected region.
    disconnected : numpy.ndarray of int
        Labels of the parcels made of several regions, sorted.
    n_components : numpy.ndarray of int, shape (K,)
        Number of connected regions of parcel ``k`` at index ``k - 1`` (0 for an empty parcel).
    """

    fraction: float
    disconnected: np.ndarray
    n_components: np.ndarray

    def __float__(self) -> float:
        return self.fraction


def contiguity(labels: Any, mask: np.ndarray | None = None) -> Contiguity:
    """Fraction of parcels that are one connected region of the grid (6-connectivity).

    Two voxels are neighbours when they share a face, as in
    ``sklearn.feature_extraction.image.grid_to_graph``. All parcels are handled at once: the
    neighbour pairs with the same label form a graph whose connected components are counted per
    label (no loop over labels).

    Parameters
    ----------
    labels : array-like or nibabel image
        A 3D labels volume (``0`` = background, ``1..K`` parcels), or, with ``mask``, the 1D labels
        of the mask's voxels in voxel order.
    mask : numpy.ndarray of bool, 3D, optional
        The mask of 1D ``labels``.

    Returns
    -------
    Contiguity
        ``float(result)`` is the fraction; ``result.disconnected`` lists the split parcels.

    Raises
    ------
    InputError
        If the labels are not a 3D volume (or 1D with a matching mask) of non-negative integers.
    """
    from scipy.sparse import coo_array
    from scipy.sparse.csgraph import connected_components

    values = as_int_labels(labels, "labels")
    if mask is not None:
        mask = np.asarray(mask).astype(bool)
        if mask.ndim != 3 or values.ndim != 1 or values.shape[0] != int(mask.sum()):
            raise InputError(
                f"labels: shape {values.shape} with a mask of shape {mask.shape} and "
                f"{int(mask.sum())} voxels; with a 3D mask pass 1D labels, one per mask voxel"
            )
        volume = np.zeros(mask.shape, dtype=np.int64)
        volume[mask] = values
    else:
        if values.ndim != 3:
            raise InputError(
                f"labels: has {values.ndim} dimensions; pass a 3D labels volume, or 1D labels "
                "with mask=<3D bool array>"
            )
        volume = values
    k = int(volume.max()) if volume.size else 0
    if k < 1:
        raise InputError("labels: contains no parcel (all 0); pass labels with values 1..K")
    index = np.arange(volume.size).reshape(volume.shape)
    rows, cols = [], []
    for axis in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        a, b = volume[tuple(lo)], volume[tuple(hi)]
        same = (a == b) & (a > 0)
        rows.append(index[tuple(lo)][same])
        cols.append(index[tuple(hi)][same])
    fg = np.flatnonzero(volume.ravel() > 0)
    compact = np.full(volume.size, -1, dtype=np.int64)
    compact[fg] = np.arange(fg.size)
    r = compact[np.concatenate(rows)]
    c = compact[np.concatenate(cols)]
    graph = coo_array((np.ones(r.size, dtype=np.int8), (r, c)), shape=(fg.size, fg.size))
    _, component = connected_components(graph, directed=False)
    fg_labels = volume.ravel()[fg]
    # each component lies inside one parcel: count distinct components per label
    first = np.unique(component, return_index=True)[1]
    n_components = np.bincount(fg_labels[first], minlength=k + 1)[1:]
    present = n_components > 0
    disconnected = np.flatnonzero(n_components > 1) + 1
    fraction = float(np.sum(n_components == 1) / np.sum(present))
    return Contiguity(fraction=fraction, disconnected=disconnected, n_components=n_components)


# --------------------------------------------------------------------------------------------------
# agreement between parcellations
# --------------------------------------------------------------------------------------------------


def adjusted_rand(a: Any, b: Any, mask: np.ndarray | None = None) -> float:
    """Adjusted Rand index between two parcellations, over the voxels both label.

    This is the reproducibility measure of Thirion et al. 2014 when ``a`` and ``b`` are fitted on
    two halves of a cohort (or of a run's time series, see :func:`split_half_reproducibility`), and
    the accuracy measure when ``b`` is the planted parcellation of a synthetic dataset. Label
    values need not match between ``a`` and ``b`` (the index is invariant to relabelling).

    Parameters
    ----------
    a, b : array-like or nibabel image
        Labels of the same voxels (same shape): labels images (3D) or 1D voxel labels;
        ``0`` = background.
    mask : numpy.ndarray of bool, optional
        Voxels to compare; default: the voxels labelled ``>= 1`` in both ``a`` and ``b``.

    Returns
    -------
    float
        ``sklearn.metrics.adjusted_rand_score`` over those voxels: 1 for identical partitions,
        about 0 for independent ones.

    Raises
    ------
    InputError
        If the shapes differ or no voxel is compared.
    """
    from sklearn.metrics import adjusted_rand_score

    va, vb = as_int_labels(a, "a"), as_int_labels(b, "b")
    if va.shape != vb.shape:
        raise InputError(
            f"a, b: shapes {va.shape} and {vb.shape} differ; both parcellations must label the "
            "same voxels (resample one labels image onto the other's grid with nearest neighbour)"
        )
    if mask is None:
        keep = (va > 0) & (vb > 0)
    else:
        keep = np.asarray(mask).astype(bool)
        if keep.shape != va.shape:
            raise InputError(f"mask: shape {keep.shape}, expected {va.shape} like the labels")
    if not keep.any():
        raise InputError("a, b: no voxel is labelled in both parcellations (or in mask)")
    return float(adjusted_rand_score(va[keep], vb[keep]))


def split_half_reproducibility(
    fit_fn: Callable[[xr.DataArray], np.ndarray],
    signals: xr.DataArray,
    split: str = "time",
) -> float:
    """Split-half reproducibility: ARI between the parcellations of two halves of the data.

    Parameters
    ----------
    fit_fn : callable
        ``fit_fn(signals_half) -> labels`` (one integer label per voxel, in voxel order: cluster
        indices ``0..K-1`` as clustering functions return, or ``1..K``), e.g. a wrapper around a
        clustering of ``signals_half``. Every voxel is compared.
    signals : xarray.DataArray, dims ("voxel", "time")
        Voxel signals of one run or of runs concatenated along time.
    split : str, default "time"
        ``"time"``: first half of the time points against the second half; or the name of a
        coordinate along time (e.g. ``"run"``, ``"subject"``): its values, in order of first
        appearance, are dealt alternately to the two halves (Thirion et al. 2014 split a cohort's
        subjects in two groups).

    Returns
    -------
    float
        :func:`adjusted_rand` of the two labelings (over the voxels both label).

    Raises
    ------
    InputError
        If ``split`` is neither ``"time"`` nor a coordinate along time with at least two values.
    """
    signals = check_signals(signals)
    if split == "time":
        n = signals.sizes["time"]
        if n < 2:
            raise InputError("signals: fewer than 2 time points; cannot split them in halves")
        first = np.arange(n) < n // 2
    else:
        if split not in signals.coords or signals[split].dims != ("time",):
            raise InputError(
                f"split={split!r}: not 'time' nor a coordinate of signals along time; pass "
                f"split='time' or one of {[c for c in signals.coords if signals[c].dims == ('time',)]}"
            )
        groups = np.asarray(signals[split].values)
        _, order = np.unique(groups, return_index=True)
        values = groups[np.sort(order)]
        if values.size < 2:
            raise InputError(
                f"split={split!r}: signals has a single {split} ({values[0]!r}); pass split='time'"
            )
        first = np.isin(groups, values[0::2])
    idx = np.arange(signals.sizes["time"])
    labels_a = fit_fn(signals.isel(time=idx[first]))
    labels_b = fit_fn(signals.isel(time=idx[~first]))
    score = adjusted_rand(np.asarray(labels_a) + 1, np.asarray(labels_b) + 1)
    logger.debug("split_half_reproducibility(split=%s): ARI = %.4f", split, score)
    return score
