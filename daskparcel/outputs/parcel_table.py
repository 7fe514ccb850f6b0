"""The per-parcel table of a fit folder (``parcels.tsv``): each parcel's size, centroid in mm and R^2.

Written by :func:`daskparcel.outputs.results.write_fit_outputs` from the labels, the mask's affine and the
per-voxel compression R^2; the report shows it and reads it back with :func:`read_parcel_table`.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np

__all__ = ["COLUMNS", "parcel_rows", "parcel_table", "read_parcel_table", "write_parcel_table"]

#: The columns of ``parcels.tsv``, in order.
COLUMNS = ("index", "voxels", "x_mm", "y_mm", "z_mm", "mean_r2", "nan_r2_voxels")


def parcel_table(
    labels: np.ndarray, mask: np.ndarray, affine: np.ndarray, r2: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Each parcel's size, centroid (world coordinates, mm) and mean per-voxel R^2.

    Parameters
    ----------
    labels : numpy.ndarray of int, shape (n_voxels,)
        The parcel (1..K) of each voxel of ``mask``, in the mask's C order.
    mask : numpy.ndarray of bool, 3D
        The mask the voxels come from.
    affine : numpy.ndarray, shape (4, 4)
        Voxel indices to mm.
    r2 : numpy.ndarray, shape (n_voxels,), optional
        Per-voxel compression R^2 (NaN where a voxel's variance is 0); default: NaN R^2 columns.

    Returns
    -------
    dict of str to numpy.ndarray
        One array of K values per name of :data:`COLUMNS`; ``mean_r2`` is the mean over the parcel's voxels
        with a finite R^2 (NaN when none has), ``nan_r2_voxels`` counts the others.
    """
    labels = np.asarray(labels, dtype=np.int64)
    ijk = np.stack(np.nonzero(np.asarray(mask, dtype=bool)), axis=1).astype(np.float64)
    return parcel_rows(labels, ijk, r2, affine=affine)


def parcel_rows(
    labels: np.ndarray,
    points: np.ndarray,
    r2: np.ndarray | None = None,
    *,
    affine: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The columns of :data:`COLUMNS` from each element's parcel (1..K, K the largest), its position
    (``points``: (n, 3), in mm, or voxel indices mapped through ``affine`` once averaged; NaN rows give a NaN
    centroid) and its R^2 (NaN: not counted in ``mean_r2``, counted in ``nan_r2_voxels``)."""
    labels = np.asarray(labels, dtype=np.int64)
    n = int(labels.max()) if labels.size else 0
    counts = np.bincount(labels, minlength=n + 1)[1:]
    sums = np.stack(
        [np.bincount(labels, weights=points[:, a], minlength=n + 1)[1:] for a in range(3)]
    )
    xyz = sums / np.maximum(counts, 1)
    if affine is not None:
        xyz = np.asarray(affine, dtype=np.float64)[:3, :3] @ xyz + np.asarray(affine)[:3, 3:4]
    values = np.full(labels.shape, np.nan) if r2 is None else np.asarray(r2, dtype=np.float64)
    finite = np.isfinite(values)
    n_finite = np.bincount(labels[finite], minlength=n + 1)[1:]
    r2_sums = np.bincount(labels[finite], weights=values[finite], minlength=n + 1)[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_r2 = np.where(n_finite > 0, r2_sums / np.maximum(n_finite, 1), np.nan)
    return {
        "index": np.arange(1, n + 1),
        "voxels": counts,
        "x_mm": xyz[0],
        "y_mm": xyz[1],
        "z_mm": xyz[2],
        "mean_r2": mean_r2,
        "nan_r2_voxels": counts - n_finite,
    }


def write_parcel_table(table: dict[str, np.ndarray], path: str | os.PathLike[str]) -> Path:
    """Write ``table`` (:func:`parcel_table`) as a tab-separated file with a header row; NaN as ``n/a``."""
    path = Path(path)
    rows = zip(*(table[c] for c in COLUMNS), strict=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(COLUMNS)
        for index, voxels, x, y, z, r2, nan_voxels in rows:
            writer.writerow(
                [int(index), int(voxels), f"{x:.2f}", f"{y:.2f}", f"{z:.2f}",
                 "n/a" if math.isnan(r2) else f"{r2:.4f}", int(nan_voxels)]
            )  # fmt: skip
    return path


def read_parcel_table(path: str | os.PathLike[str]) -> list[dict[str, float]] | None:
    """The rows of a ``parcels.tsv`` (``n/a`` read as NaN), or None when the file is absent or unreadable."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle, delimiter="\t")
            if tuple(reader.fieldnames or ()) != COLUMNS:
                return None
            return [
                {k: math.nan if v == "n/a" else float(v) for k, v in row.items()} for row in reader
            ]
    except (OSError, ValueError, UnicodeDecodeError):
        return None
