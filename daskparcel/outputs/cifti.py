"""The fit folder of a CIFTI fit (``Parcellations`` fitted on ``.dtseries.nii`` runs).

``DIR/``
    ``atlas-<L>_dseg.dlabel.nii``        the labels of the grayordinates (a CIFTI-2 dlabel on the runs' brain
                                         model, the look-up table as its label axis)
    ``atlas-<L>_dseg.tsv``               the look-up table: index, name, color, size (grayordinates), structure
    ``r2.dscalar.nii``                   per-grayordinate compression R^2
    ``parcels.tsv``                      each parcel's size, centroid (mm) and mean R^2, as for volumes
    ``atlas-<L>_hemi-L_dseg.label.gii``, ``r2_hemi-L.shape.gii``, ``mesh_hemi-L.surf.gii`` (and ``_hemi-R``)
                                         the cortex's labels, R^2 and mesh, when the runs came with meshes: the
                                         report draws them as for a surface fit
    ``parcel_signals.zarr``              parcel signals (time, parcel) of every run, as for volumes
    ``fit.json``                         as for surfaces; ``data`` holds ``brain_model``, ``structures`` and
                                         ``grayordinates``; contiguity is on the geometry's graph (None without
                                         meshes)
    ``report.html``                      the report (the cortex drawn on the meshes when there are; without them
                                         no brain figure, and a logged line says so)
    ``dataset_description.json``         a BIDS derivative description

``sub-<label>/func/..._atlas-<L>_stat-mean_timeseries.tsv`` and, with ``connectomes``, the per-run and group
``relmat.tsv`` tables: as for surfaces and volumes.

``<L>`` is the atlas label (e.g. ``ward100``). Written to ``DIR.partial`` and moved into place at the end.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from daskparcel.geometry.cifti import HEMISPHERES
from daskparcel.outputs.bids import (
    atlas_label,
    parcel_colors,
    parcel_names,
    write_dataset_description,
)
from daskparcel.outputs.parcel_table import parcel_rows
from daskparcel.outputs.record import (
    quality_metrics,
)

logger = logging.getLogger(__name__)

__all__ = ["cifti_files", "cifti_look_up_table", "cifti_parcel_table"]


def cifti_look_up_table(geometry: Any, codes: np.ndarray, n_parcels: int) -> pd.DataFrame:
    """The look-up table of a CIFTI parcellation: one row per label (0 first, no grayordinate) with its name,
    colour, size in grayordinates and structure (e.g. ``CIFTI_STRUCTURE_THALAMUS_LEFT``)."""
    counts = np.bincount(codes, minlength=n_parcels + 1)
    names = [name for name, _, _ in geometry.structures]
    first = np.full(n_parcels + 1, -1)
    first[codes[::-1]] = geometry.structure_of()[::-1]  # parcels never span two structures
    return pd.DataFrame(
        {
            "index": np.arange(n_parcels + 1),
            "name": ["Background", *parcel_names(np.arange(1, n_parcels + 1))],
            "color": ["#000000", *parcel_colors(n_parcels)],
            "size": [0, *counts[1:].tolist()],
            "structure": ["n/a", *(names[s] if s >= 0 else "n/a" for s in first[1:])],
        }
    )


def cifti_parcel_table(geometry: Any, codes: np.ndarray, r2: np.ndarray) -> dict[str, np.ndarray]:
    """``parcels.tsv``'s columns (:data:`daskparcel.outputs.parcel_table.COLUMNS`) for grayordinates: each
    parcel's size, centroid in mm (voxels through the brain model's affine, vertices at their mesh coordinates;
    NaN for a cortical parcel without a mesh) and mean R^2."""
    xyz = np.full((geometry.n_elements, 3), np.nan)
    for name, span, sub in geometry.structures:
        if sub.volume_mask.any():
            ijk = np.c_[sub.voxel, np.ones(len(sub))]
            xyz[span] = (np.asarray(geometry.axis.affine) @ ijk.T)[:3].T
        elif (mesh := geometry.mesh_of(name)) is not None:
            xyz[span] = mesh[0][sub.vertex]
    return parcel_rows(codes, xyz, r2)


def _cortex_files(
    geometry: Any, codes: np.ndarray, r2: np.ndarray, table: pd.DataFrame, label: str, folder: Path
) -> dict[str, str]:
    """The GIfTI labels, R^2 and mesh of each cortical structure with a mesh (what the report draws)."""
    from daskparcel.outputs.surface import label_gifti, shape_gifti

    files: dict[str, str] = {}
    for part, structure in HEMISPHERES.items():
        mesh = geometry.mesh_of(structure)
        if mesh is None:
            continue
        span, sub = next((s, b) for n, s, b in geometry.structures if n == structure)
        hemi = part[0].upper()
        n = int(geometry.axis.nvertices[structure])
        for key, values, fill in (("labels", codes, 0), ("r2", r2, 0.0)):
            full = np.full(n, fill, dtype=np.int32 if key == "labels" else np.float32)
            full[sub.vertex] = values[span]
            files[f"{key}_{hemi}"] = (
                f"atlas-{label}_hemi-{hemi}_dseg.label.gii"
                if key == "labels"
                else f"r2_hemi-{hemi}.shape.gii"
            )
            image = label_gifti(full, table) if key == "labels" else shape_gifti(full)
            nib.save(image, folder / files[f"{key}_{hemi}"])
        surf = nib.gifti.GiftiImage()
        for data, intent, dtype in (
            (mesh[0].astype(np.float32), "NIFTI_INTENT_POINTSET", "NIFTI_TYPE_FLOAT32"),
            (mesh[1].astype(np.int32), "NIFTI_INTENT_TRIANGLE", "NIFTI_TYPE_INT32"),
        ):
            surf.add_gifti_data_array(nib.gifti.GiftiDataArray(data, intent=intent, datatype=dtype))
        files[f"mesh_{hemi}"] = f"mesh_hemi-{hemi}.surf.gii"
        nib.save(surf, folder / files[f"mesh_{hemi}"])
    return files


def cifti_files(
    est: Any, done: Any, partial: Path
) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
    """A CIFTI fit folder's own files (the layout of the module docstring), and fit.json's ``data`` and
    ``metrics`` (written by :func:`daskparcel.outputs.surface.write_mesh_outputs`)."""
    from daskparcel.metrics import parcel_sizes
    from daskparcel.outputs.parcel_table import write_parcel_table
    from daskparcel.outputs.surface import mesh_contiguity

    geometry, codes = est.geometry_, done.codes
    k = int(est.n_parcels)
    label = atlas_label(str(est.method), k)
    table = cifti_look_up_table(geometry, codes, k)
    write_dataset_description(partial, f"daskparcel {est.method} CIFTI parcellation")
    files = {
        "labels": f"atlas-{label}_dseg.dlabel.nii",
        "lut": f"atlas-{label}_dseg.tsv",
        "r2": "r2.dscalar.nii",
        "parcel_signals": "parcel_signals.zarr",
    }
    table.to_csv(partial / files["lut"], sep="\t", index=False)
    colors, names = list(table["color"][1:]), list(table["name"][1:])
    nib.save(geometry.labels_image(codes, names, colors), partial / files["labels"])
    write_parcel_table(cifti_parcel_table(geometry, codes, done.r2_map), partial / "parcels.tsv")
    files["parcels"] = "parcels.tsv"
    r2_values = np.nan_to_num(done.r2_map.astype(np.float32))
    nib.save(geometry.surface_image(r2_values), partial / files["r2"])
    files.update(_cortex_files(geometry, codes, r2_values, table, label, partial))
    sizes = parcel_sizes(codes, est.n_parcels)
    if geometry.missing_meshes():
        fraction, broken = float("nan"), list[int]()
    else:
        fraction, broken = mesh_contiguity(geometry, codes)
    metrics = quality_metrics(done.r2, done.homogeneity, k, sizes, fraction, broken)
    if not np.isfinite(fraction):
        metrics["contiguity"] = None  # no neighbours for the cortex without its meshes
    data = {
        "mesh": geometry.describe(),
        "brain_model": geometry.describe(),
        "structures": [name for name, _, _ in geometry.structures],
        "grayordinates": geometry.n_elements,
    }
    return files, data, metrics
