"""nilearn's mask algorithms on mean images: EPI (``compute_epi_mask`` / ``compute_multi_epi_mask``),
background (``compute_background_mask`` / ``compute_multi_background_mask``) and the MNI templates
(``compute_brain_mask``)."""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Callable, Sequence

import nibabel as nib
import numpy as np

from daskparcel.errors import InputError
from daskparcel.preprocessing.masking._common import (
    BACKGROUND_ADVICE,
    EPI_ADVICE,
    BoldOrMean,
    as_affine,
    check_not_empty,
    check_runs,
    check_same_grid,
    describe,
    intersect,
    post_process_mask,
    resample_mean,
    run_affines,
    smooth_mean,
)
from daskparcel.preprocessing.masking.means import computed_means

logger = logging.getLogger(__name__)

TEMPLATES = {"whole-brain": "t1", "gm": "gm", "wm": "wm"}


# --------------------------------------------------------------------------------------------------
# EPI


def epi_mask_from_mean(
    mean: np.ndarray,
    affine: np.ndarray,
    *,
    lower_cutoff: float,
    upper_cutoff: float,
    connected: bool,
    opening: int | bool,
    exclude_zeros: bool,
    ensure_finite: bool,
    target_affine: np.ndarray | None,
    target_shape: Sequence[int] | None,
) -> np.ndarray:
    """``compute_epi_mask`` once the temporal mean is known (may be empty)."""
    if not 0 <= lower_cutoff <= upper_cutoff <= 1:
        raise InputError(
            f"lower_cutoff={lower_cutoff}, upper_cutoff={upper_cutoff}: need "
            "0 <= lower_cutoff <= upper_cutoff <= 1; pass e.g. lower_cutoff=0.2, upper_cutoff=0.85"
        )
    mean, _ = resample_mean(mean, affine, target_affine, target_shape)
    if opening:
        mean = smooth_mean(mean)
    if ensure_finite:
        mean = np.where(np.isfinite(mean), mean, 0)
    sorted_input = np.sort(np.ravel(mean))
    if exclude_zeros:
        sorted_input = sorted_input[sorted_input != 0]
    n = len(sorted_input)
    lower = int(np.floor(lower_cutoff * n))
    upper = min(int(np.floor(upper_cutoff * n)), n - 1)
    delta = sorted_input[lower + 1 : upper + 1] - sorted_input[lower:upper]
    if delta.size == 0:
        # nilearn fails here with an argmax of an empty sequence
        return np.zeros(mean.shape, dtype=bool)
    ia = int(delta.argmax())
    threshold = 0.5 * (sorted_input[ia + lower] + sorted_input[ia + lower + 1])
    mask = mean >= threshold
    return post_process_mask(mask, opening=opening, connected=connected)


def compute_epi_mask(
    bold_or_mean: BoldOrMean,
    affine: np.ndarray,
    *,
    lower_cutoff: float = 0.2,
    upper_cutoff: float = 0.85,
    connected: bool = True,
    opening: int | bool = 2,
    exclude_zeros: bool = False,
    ensure_finite: bool = True,
    target_affine: np.ndarray | None = None,
    target_shape: Sequence[int] | None = None,
) -> np.ndarray:
    """Brain mask of one run by nilearn's EPI heuristic (``nilearn.masking.compute_epi_mask``).

    The temporal mean is smoothed (FWHM 1 voxel, when ``opening``), its values sorted, and the
    threshold set in the widest gap between the ``lower_cutoff`` and ``upper_cutoff`` quantiles;
    the mask is then opened and reduced to its largest connected component.

    Parameters
    ----------
    bold_or_mean : xarray.DataArray (x, y, z, t), or a 3D mean image (numpy / dask / xarray)
        The run (its temporal mean is computed: one ``compute``), or its mean.
    affine : numpy.ndarray (4, 4)
        The run's affine.
    lower_cutoff, upper_cutoff, connected, opening, exclude_zeros, ensure_finite : see nilearn
    target_affine, target_shape : optional
        Resample the mean to this grid first (continuous interpolation, as nilearn).

    Returns
    -------
    numpy.ndarray of bool (x, y, z)
        The mask, on the run's grid (or the target grid).

    Raises
    ------
    InputError
        When the mask is empty (naming the run and what to try instead).
    """
    affine = as_affine(affine)
    (mean,) = computed_means([bold_or_mean])
    mask = epi_mask_from_mean(
        np.asarray(mean),
        affine,
        lower_cutoff=lower_cutoff,
        upper_cutoff=upper_cutoff,
        connected=connected,
        opening=opening,
        exclude_zeros=exclude_zeros,
        ensure_finite=ensure_finite,
        target_affine=target_affine,
        target_shape=target_shape,
    )
    return check_not_empty(mask, describe(bold_or_mean), "EPI", EPI_ADVICE)


def compute_multi_epi_mask(
    bolds: Sequence[BoldOrMean],
    affine: np.ndarray | Sequence[np.ndarray],
    *,
    threshold: float = 0.5,
    lower_cutoff: float = 0.2,
    upper_cutoff: float = 0.85,
    connected: bool = True,
    opening: int | bool = 2,
    exclude_zeros: bool = False,
    ensure_finite: bool = True,
    target_affine: np.ndarray | None = None,
    target_shape: Sequence[int] | None = None,
) -> np.ndarray:
    """Common mask of several runs (``nilearn.masking.compute_multi_epi_mask``).

    One EPI mask per run, then the voxels in more than ``threshold`` of the run masks, reduced to
    the largest connected component when ``connected``. All the temporal means are computed in one
    ``dask.compute`` call.

    Parameters
    ----------
    bolds : list of xarray.DataArray (x, y, z, t) or 3D mean images
    affine : numpy.ndarray (4, 4), or one per run
        The runs must share one grid (same shape and affine) unless ``target_affine`` is given.
    threshold : float, default=0.5
        1 keeps the intersection of the run masks, 0 their union.
    other parameters : as :func:`compute_epi_mask`

    Returns
    -------
    numpy.ndarray of bool (x, y, z)
    """
    return multi_mask(
        bolds,
        affine,
        "EPI",
        EPI_ADVICE,
        functools.partial(
            epi_mask_from_mean,
            lower_cutoff=lower_cutoff,
            upper_cutoff=upper_cutoff,
            connected=connected,
            opening=opening,
            exclude_zeros=exclude_zeros,
            ensure_finite=ensure_finite,
            target_affine=target_affine,
            target_shape=target_shape,
        ),
        threshold=threshold,
        connected=connected,
        same_grid=target_affine is None,
    )


def multi_mask(
    bolds: Sequence[BoldOrMean],
    affine: np.ndarray | Sequence[np.ndarray],
    kind: str,
    advice: str,
    mask_from_mean: Callable[[np.ndarray, np.ndarray], np.ndarray],
    *,
    threshold: float,
    connected: bool,
    same_grid: bool,
) -> np.ndarray:
    """One mask per run from its temporal mean (all means in one compute), then nilearn's intersection."""
    runs = check_runs(bolds, f"compute_multi_{kind.lower()}_mask")
    affines = run_affines(runs, affine)
    if same_grid:
        check_same_grid(runs, affines)
    means = computed_means(runs)
    masks = []
    for i, (mean, aff) in enumerate(zip(means, affines, strict=True)):
        m = mask_from_mean(np.asarray(mean), aff)
        if not m.any() and len(runs) > 1:
            warnings.warn(
                f"{describe(runs[i], i)}: its {kind} mask is empty. {advice}",
                UserWarning,
                stacklevel=3,
            )
        masks.append(m)
    mask = intersect(masks, threshold=threshold, connected=connected)
    if len(runs) == 1:
        return check_not_empty(mask, describe(runs[0]), kind, advice)
    names = ", ".join(describe(b, i) for i, b in enumerate(runs))
    extra = " Or lower threshold." if kind == "EPI" else ""
    return check_not_empty(mask, names, f"multi-run {kind}", advice + extra)


# --------------------------------------------------------------------------------------------------
# background


def border_data(data: np.ndarray, border_size: int) -> np.ndarray:
    return np.concatenate(
        [
            data[:border_size, :, :].ravel(),
            data[-border_size:, :, :].ravel(),
            data[:, :border_size, :].ravel(),
            data[:, -border_size:, :].ravel(),
            data[:, :, :border_size].ravel(),
            data[:, :, -border_size:].ravel(),
        ]
    )


def background_mask_from_mean(
    mean: np.ndarray,
    affine: np.ndarray,
    *,
    border_size: int,
    connected: bool,
    opening: int | bool,
    target_affine: np.ndarray | None,
    target_shape: Sequence[int] | None,
) -> np.ndarray:
    if int(border_size) < 1:
        raise InputError(f"border_size={border_size}: must be an integer >= 1; pass e.g. 2")
    mean, _ = resample_mean(mean, affine, target_affine, target_shape)
    border = border_data(mean, int(border_size))
    if np.isnan(border).any():
        # NaNs as background (SPM writes NaN outside the brain)
        mask = np.logical_not(np.isnan(mean))
    else:
        mask = mean != np.median(border)
    return post_process_mask(mask, opening=opening, connected=connected)


def compute_background_mask(
    bold_or_mean: BoldOrMean,
    affine: np.ndarray,
    *,
    border_size: int = 2,
    connected: bool = False,
    opening: int | bool = False,
    target_affine: np.ndarray | None = None,
    target_shape: Sequence[int] | None = None,
) -> np.ndarray:
    """Mask of the voxels whose mean differs from the background (``compute_background_mask``).

    The background value is the median of the mean image over a border of ``border_size`` voxels
    (or NaN when the border holds NaNs). Defaults are nilearn's (no opening, not connected).

    Returns
    -------
    numpy.ndarray of bool (x, y, z)
    """
    affine = as_affine(affine)
    (mean,) = computed_means([bold_or_mean])
    mask = background_mask_from_mean(
        np.asarray(mean),
        affine,
        border_size=border_size,
        connected=connected,
        opening=opening,
        target_affine=target_affine,
        target_shape=target_shape,
    )
    return check_not_empty(mask, describe(bold_or_mean), "background", BACKGROUND_ADVICE)


def compute_multi_background_mask(
    bolds: Sequence[BoldOrMean],
    affine: np.ndarray | Sequence[np.ndarray],
    *,
    threshold: float = 0.5,
    border_size: int = 2,
    connected: bool = True,
    opening: int | bool = 2,
    target_affine: np.ndarray | None = None,
    target_shape: Sequence[int] | None = None,
) -> np.ndarray:
    """Common background mask of several runs (``compute_multi_background_mask``); one compute.

    Returns
    -------
    numpy.ndarray of bool (x, y, z)
    """
    return multi_mask(
        bolds,
        affine,
        "background",
        BACKGROUND_ADVICE,
        functools.partial(
            background_mask_from_mean,
            border_size=border_size,
            connected=connected,
            opening=opening,
            target_affine=target_affine,
            target_shape=target_shape,
        ),
        threshold=threshold,
        connected=connected,
        same_grid=target_affine is None,
    )


# --------------------------------------------------------------------------------------------------
# template


def load_template(template: str) -> nib.Nifti1Image:
    from nilearn import datasets

    loaders = {
        "whole-brain": datasets.load_mni152_template,
        "gm": datasets.load_mni152_gm_template,
        "wm": datasets.load_mni152_wm_template,
    }
    if template not in loaders:
        raise InputError(f"template={template!r}: unknown; pass one of {sorted(loaders)}")
    # shipped inside the nilearn package: no download
    return loaders[template](resolution=1)


def compute_template_mask(
    affine: np.ndarray,
    shape: Sequence[int],
    *,
    template: str = "whole-brain",
    threshold: float = 0.5,
    connected: bool = True,
    opening: int | bool = 2,
) -> np.ndarray:
    """MNI152 template mask on the data grid (``nilearn.masking.compute_brain_mask``).

    The 1 mm MNI152 template shipped with nilearn (whole-brain, grey or white matter) is resampled
    to the grid (continuous interpolation), thresholded at ``threshold`` and post-processed as the
    other masks. Only meaningful for data in MNI space.

    Returns
    -------
    numpy.ndarray of bool, of shape ``shape[:3]``
    """
    from nilearn.image import resample_to_img

    affine = as_affine(affine)
    shape3 = tuple(int(s) for s in tuple(shape)[:3])
    if len(shape3) != 3 or min(shape3) < 1:
        raise InputError(f"shape={tuple(shape)}: need the grid's (x, y, z) sizes, each >= 1")
    tmpl = load_template(template)
    target = nib.Nifti1Image(np.zeros(shape3, dtype=np.int8), affine)
    try:
        resampled = resample_to_img(tmpl, target, force_resample=True, copy_header=True)
    except ValueError:  # nilearn's BoundingBoxError: the template is outside the grid
        mask = np.zeros(shape3, dtype=bool)
    else:
        mask = np.asarray(resampled.get_fdata()) >= threshold
        mask = post_process_mask(mask, opening=opening, connected=connected)
    if not mask.any():
        raise InputError(
            f"the {template} template mask is empty on the grid of shape {shape3} and affine\n"
            f"{affine}:\nlower the threshold (threshold={threshold}) or check that the data are in "
            "MNI space and cover the brain; or pass mask strategy 'epi' or 'background'"
        )
    return mask
