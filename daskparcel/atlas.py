"""Any atlas for ``transform``: integer labels with gaps, a BIDS look-up table, resampling to the runs' grid.

A fitted parcellation has labels ``1..K``; an atlas (AAL, Schaefer, Harvard-Oxford, a BIDS ``*_dseg.nii.gz``)
has label values with gaps ({5, 18, 31, ...}) and names in a look-up table (a TSV with columns ``index`` and
``name``). :class:`Atlas` keeps both: the parcels are the label values present in the atlas (in the mask), in
ascending order, and ``transform`` works on their positions ``1..K`` internally, then gives the label values back
as its ``parcel`` coordinate (and the LUT's names as a ``name`` coordinate), as nilearn's ``NiftiLabelsMasker``
orders its columns. Runs on another grid than the atlas get the atlas resampled to theirs (nearest neighbour,
with a warning), as ``NiftiLabelsMasker(resampling_target="data")`` does.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import xarray as xr

from daskparcel._checks import same_grid
from daskparcel.errors import InputError

__all__ = ["Atlas", "label_images", "label_parcels", "load_atlas", "read_lut", "run_grid"]


@dataclass(frozen=True)
class Atlas:
    """An atlas on its own grid: its label values, their names and its mask.

    Attributes
    ----------
    volume : numpy.ndarray of int64, 3D
        The label values (0 = background; also 0 outside ``mask``).
    mask : numpy.ndarray of bool, 3D
        The voxels ``transform`` reads.
    affine : numpy.ndarray (4, 4)
    values : numpy.ndarray of int64 (K,)
        The parcels' label values, ascending: the ``parcel`` coordinate of ``transform``'s output.
    names : list of str or None
        The parcels' names from the look-up table (None without one).
    source : str
        The labels image given (for messages).
    """

    volume: np.ndarray
    mask: np.ndarray
    affine: np.ndarray
    values: np.ndarray
    names: list[str] | None
    source: str

    @property
    def n_parcels(self) -> int:
        return int(self.values.size)

    def codes(self, volume: np.ndarray | None = None, mask: np.ndarray | None = None) -> np.ndarray:
        """Each mask voxel's parcel position ``1..K`` (0: no parcel), in voxel (C) order of the mask."""
        volume = self.volume if volume is None else volume
        mask = self.mask if mask is None else mask
        labelled = volume[mask]
        pos = np.searchsorted(self.values, labelled)
        found = (pos < self.values.size) & (
            self.values[np.minimum(pos, self.values.size - 1)] == labelled
        )
        return np.where(found & (labelled > 0), pos + 1, 0).astype(np.int64)

    def on_grid(
        self, shape: tuple[int, ...], affine: Any, run: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(codes, mask)`` on the grid ``shape, affine`` of a run: the atlas itself when it is on that grid, else
        resampled there (nearest neighbour, labels and mask each), with a warning as nilearn gives."""
        if same_grid(self.volume.shape, self.affine, shape, affine):
            return self.codes(), self.mask
        from nilearn.image import resample_img

        def resample(data: np.ndarray) -> np.ndarray:
            try:
                img = resample_img(
                    nib.Nifti1Image(data.astype(np.int32), self.affine),
                    target_affine=np.asarray(affine, float),
                    target_shape=tuple(shape),
                    interpolation="nearest",
                    force_resample=True,
                    copy_header=True,
                )
            except ValueError:  # nilearn's BoundingBoxError: no overlap
                return np.zeros(tuple(shape), np.int64)
            return np.asarray(img.dataobj).astype(np.int64)

        volume, mask = resample(self.volume), resample(self.mask) > 0
        warnings.warn(
            f"{self.source}: its grid {self.volume.shape} differs from {run}'s {tuple(shape)}: the labels are "
            "resampled to the run's grid (nearest neighbour), as nilearn's NiftiLabelsMasker does",
            UserWarning,
            stacklevel=3,
        )
        codes = self.codes(volume, mask)
        if not codes.any():
            raise InputError(
                f"{self.source}: no label left once resampled to {run}'s grid (no overlap); give an atlas in "
                "the runs' space"
            )
        lost = np.setdiff1d(np.arange(1, self.n_parcels + 1), codes)
        if lost.size:
            warnings.warn(
                f"{self.source}: labels {self.values[lost - 1].tolist()} have no voxel once resampled to "
                f"{run}'s grid: their columns are NaN (nilearn drops them)",
                UserWarning,
                stacklevel=3,
            )
        return codes, mask


def load_atlas(labels_img: Any, mask_img: Any = None, lut: Any = None) -> Atlas:
    """Read an atlas: integer labels (gaps allowed, 0 = background), an optional mask and look-up table.

    Parameters
    ----------
    labels_img : nibabel image or path
        3D integer labels (AAL, Schaefer, a BIDS dseg image, the labels.nii.gz of ``daskparcel fit``).
    mask_img : nibabel image or path, optional
        Voxels to read (default: the labelled ones); on the labels' grid.
    lut : path or pandas.DataFrame, optional
        A BIDS look-up table (TSV with columns ``index`` and ``name``) naming the labels.

    Returns
    -------
    Atlas

    Raises
    ------
    InputError
        An unreadable or non-integer labels image, no label in the mask, a look-up table without ``index`` and
        ``name`` columns or with repeated indices.
    """
    from daskparcel.parcels import labels_from_image

    values, mask, affine = labels_from_image(labels_img, mask_img)
    volume = np.zeros(mask.shape, np.int64)
    volume[mask] = values
    present = np.unique(values[values > 0])
    source = str(labels_img) if isinstance(labels_img, str | os.PathLike) else "labels_img"
    names = read_lut(lut, present, source) if lut is not None else None
    return Atlas(volume, mask, np.asarray(affine, float), present.astype(np.int64), names, source)


def read_lut(lut: Any, values: np.ndarray, source: str = "labels_img") -> list[str]:
    """The names of label ``values`` in a BIDS look-up table (a path to a TSV, or a DataFrame).

    Labels absent from the table are named ``"unknown"`` with a warning (as nilearn does); rows for labels absent
    from the image are ignored.
    """
    name = str(lut) if isinstance(lut, str | os.PathLike) else "lut"
    if isinstance(lut, str | os.PathLike):
        path = Path(lut)
        if not path.is_file():
            raise InputError(
                f"{name}: no such look-up table; give a BIDS TSV with columns index and name"
            )
        try:
            table = pd.read_csv(path, sep="\t")
        except (ValueError, UnicodeDecodeError) as exc:
            raise InputError(
                f"{name}: not a readable TSV ({type(exc).__name__}); give a BIDS look-up table (index, name)"
            ) from exc
    elif isinstance(lut, pd.DataFrame):
        table = lut
    else:
        raise InputError(
            f"lut: a {type(lut).__name__}; give a TSV path or a pandas DataFrame (index, name)"
        )
    missing = {"index", "name"} - set(table.columns)
    if missing:
        raise InputError(
            f"{name}: has no column {sorted(missing)} (columns {list(table.columns)}); a BIDS look-up table "
            "has columns index and name"
        )
    index = pd.to_numeric(table["index"], errors="coerce")
    if index.isna().any() or (index != index.round()).any():
        raise InputError(
            f"{name}: column index has non-integer values; give the integer label values"
        )
    index = index.astype(np.int64)
    if index.duplicated().any():
        raise InputError(
            f"{name}: index {sorted(set(index[index.duplicated()].tolist()))} repeated; give one row per label"
        )
    by_index = dict(zip(index.tolist(), table["name"].astype(str).tolist(), strict=True))
    unknown = [int(v) for v in values if int(v) not in by_index]
    if unknown:
        warnings.warn(
            f"{name}: labels {unknown[:10]}{'...' if len(unknown) > 10 else ''} of {source} are not in the "
            "look-up table: named 'unknown'",
            UserWarning,
            stacklevel=3,
        )
    return [by_index.get(int(v), "unknown") for v in values]


def label_parcels(signals: xr.DataArray, atlas: Atlas | None) -> xr.DataArray:
    """``signals`` (parcels 1..K) with the atlas's label values as ``parcel`` and its names as ``name`` (unchanged
    without an atlas)."""
    if atlas is None:
        return signals
    out = signals.assign_coords(parcel=atlas.values)
    if atlas.names is not None:
        out = out.assign_coords(name=("parcel", np.asarray(atlas.names, dtype=object)))
    return out


def label_images(
    codes: np.ndarray, mask: np.ndarray, affine: np.ndarray, atlas: Atlas | None = None
) -> tuple[xr.DataArray, nib.Nifti1Image, nib.Nifti1Image]:
    """A parcellation's fitted attributes: ``labels_`` (codes 1..K of the mask voxels, with their ``i, j, k``),
    ``labels_img_`` (codes, or the atlas's own label values) and ``mask_img_``."""
    i, j, k = np.nonzero(mask)
    coords = {"i": ("voxel", i), "j": ("voxel", j), "k": ("voxel", k)}
    labels = xr.DataArray(codes.astype(np.int32), dims=("voxel",), coords=coords, name="labels")
    if atlas is None:
        volume = np.zeros(mask.shape, dtype=np.int32)
        volume[mask] = codes
    else:
        volume = atlas.volume.astype(np.int32)
    return (
        labels,
        nib.Nifti1Image(volume, affine),
        nib.Nifti1Image(mask.astype(np.int8), affine),
    )


def run_grid(est: Any, run: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(codes 1..K per mask voxel, mask, affine)`` with which a fitted ``Parcellations`` reads ``run``: its own
    labels and mask; for an atlas (``est.atlas_``), the atlas resampled to the run's grid when it differs."""
    atlas = getattr(est, "atlas_", None)
    if atlas is None:
        mask = np.asarray(est.mask_img_.dataobj, dtype=bool)
        return est.labels_.values, mask, np.asarray(est.mask_img_.affine, dtype=float)
    affine = np.asarray(run.data.attrs["affine"], dtype=float)
    codes, mask = atlas.on_grid(run.data["bold"].shape[:3], affine, run.name)
    return codes, mask, affine
