"""Brain masks of BOLD runs: EPI, background and template strategies (nilearn's algorithms).

References (nilearn 0.14.1): :func:`nilearn.masking.compute_epi_mask`, ``compute_multi_epi_mask``,
``compute_background_mask``, ``compute_multi_background_mask``, ``compute_brain_mask``, and
``nilearn.image.image.compute_mean`` for the mean image. The only pass over the data is the temporal
mean of each run; every run's mean is computed in one ``dask.compute`` call (:func:`mean_images`). A
gzipped NIfTI run is one task that inflates the file once, in order (as the signals pass reads it); other
runs (run stores, ``.nii``, Datasets) are a streaming tree reduction over their volume blocks.
The rest (histogram threshold, morphology, connected components) works on small 3D arrays in memory,
with the same scipy calls and in the same order as nilearn, so the masks are equal voxel for voxel.

The mean is accumulated in float64. For integer-valued data (what NIfTI files of raw BOLD hold, even
once read as float32) that is exactly nilearn's mean; for other float32 data nilearn accumulates in
float32, so the means differ in the last bits, which cannot move a voxel across the EPI threshold
(the midpoint of the widest gap of the sorted means) except in a near-tie of two gaps.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dask
import numpy as np
import xarray as xr

from daskparcel.errors import InputError
from daskparcel.preprocessing.masking._common import (
    check_runs,
    check_same_grid,
    describe,
    run_affines,
    spatial_shape,
)
from daskparcel.preprocessing.masking.given import resample_mask, warn_whole_grid
from daskparcel.preprocessing.masking.means import mean_images, temporal_mean
from daskparcel.preprocessing.masking.strategies import (
    compute_background_mask,
    compute_epi_mask,
    compute_multi_background_mask,
    compute_multi_epi_mask,
    compute_template_mask,
)

logger = logging.getLogger(__name__)

__all__ = [
    "MASK_STRATEGIES",
    "compute_background_mask",
    "compute_epi_mask",
    "compute_mask",
    "compute_multi_background_mask",
    "compute_multi_epi_mask",
    "compute_template_mask",
    "mean_images",
    "resample_mask",
    "temporal_mean",
    "warn_whole_grid",
]

MASK_STRATEGIES = ("epi", "background", "whole-brain-template", "gm-template", "wm-template")


def check_mean_image(mean: np.ndarray, source: str) -> None:
    """Refuse a run whose mean image holds nothing to mask: no finite voxel, or one value everywhere."""
    finite = np.isfinite(mean)
    if not finite.any():
        raise InputError(
            f"{source}: every voxel is NaN or infinite (its mean over time has no finite value); "
            "there is nothing to mask or parcellate: check the file, or export it again"
        )
    if finite.all() and mean.size and np.all(mean == mean.flat[0]):
        what = "an all-zero image" if mean.flat[0] == 0 else "a constant image"
        raise InputError(
            f"{source}: {what} (its mean over time is {float(mean.flat[0]):g} at all "
            f"{mean.size:,} voxels): no mask strategy can find a brain in it; check the file"
        )


def compute_mask(
    bolds: Sequence[xr.DataArray],
    affine: np.ndarray | Sequence[np.ndarray],
    strategy: str = "epi",
    mask_args: dict[str, Any] | None = None,
    *,
    niftis: Sequence[str | Path | None] | None = None,
    names: Sequence[str] | None = None,
) -> np.ndarray:
    """Mask of one or several runs by a named strategy, as nilearn's ``MultiNiftiMasker`` computes it.

    nilearn's ``Parcellations`` masks its runs with a ``MultiNiftiMasker``, which calls the multi-run
    function of the strategy also for a single run: ``compute_multi_background_mask`` opens (2) and
    keeps the largest component by default, where ``compute_background_mask`` does neither. The
    multi-run function is used here too, so one run gets the mask nilearn's ``Parcellations`` uses.

    Parameters
    ----------
    bolds : list of xarray.DataArray (x, y, z, t)
    affine : numpy.ndarray (4, 4), or one per run
    strategy : {"epi", "background", "whole-brain-template", "gm-template", "wm-template"}
    mask_args : dict, optional
        Keyword arguments of the function the strategy calls.
    niftis : list of path or None, optional
        The NIfTI file each run reads untouched (or None): a gzipped one is inflated once, in one
        task, for its mean image (:func:`mean_images`).
    names : list of str, optional
        How messages name each run (its file); by default its attributes' ``source``, or its index.

    Returns
    -------
    numpy.ndarray of bool (x, y, z)

    Raises
    ------
    InputError
        Unknown strategy or arguments, a run with no finite value or a constant (e.g. all-zero) mean
        image, or an empty mask; each names the run's file.
    """
    runs = check_runs(bolds, "compute_mask")
    args = dict(mask_args or {})
    if strategy not in MASK_STRATEGIES:
        raise InputError(
            f"mask strategy {strategy!r}: unknown; pass one of {list(MASK_STRATEGIES)}"
        )
    if names is not None and len(names) != len(runs):
        raise InputError(f"names: {len(names)} names for {len(runs)} runs; pass one per run")
    affines = run_affines(runs, affine)
    func: Any
    if strategy.endswith("-template"):
        check_same_grid(runs, affines)
        func = compute_template_mask
        call_args: tuple[Any, ...] = (affines[0], spatial_shape(runs[0]))
        args.setdefault("template", strategy[: -len("-template")])
    else:
        labels = (
            [str(n) for n in names]
            if names is not None
            else [describe(b, i if len(runs) > 1 else None) for i, b in enumerate(runs)]
        )
        means = dask.compute(*mean_images(runs, niftis))
        for mean, label in zip(means, labels, strict=True):
            check_mean_image(np.asarray(mean), label)
        mean_runs = [
            xr.DataArray(np.asarray(m), dims=("x", "y", "z"), attrs={"daskparcel_label": label})
            for m, label in zip(means, labels, strict=True)
        ]
        func = compute_multi_epi_mask if strategy == "epi" else compute_multi_background_mask
        call_args = (mean_runs, affines)
    logger.debug("compute_mask: strategy=%s -> %s(%s)", strategy, func.__name__, args)
    try:
        return func(*call_args, **args)
    except TypeError as exc:
        if "unexpected keyword" in str(exc) or "got multiple values" in str(exc):
            raise InputError(
                f"mask_args={args}: not accepted by {func.__name__} for strategy {strategy!r} "
                f"({exc}); pass only its keyword arguments"
            ) from None
        raise
