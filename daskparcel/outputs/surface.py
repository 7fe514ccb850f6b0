"""The fit folder of a surface fit (``Parcellations`` fitted on ``SurfaceImage`` s).

``DIR/``
    ``atlas-<L>_hemi-L_dseg.label.gii``  the labels of the left hemisphere's vertices (int32, 0 = out of the
                                         mask), with the look-up table as the GIfTI label table
    ``atlas-<L>_hemi-R_dseg.label.gii``  the same, right hemisphere
    ``atlas-<L>_dseg.tsv``               the look-up table: index, name, color, size (vertices), hemisphere
    ``r2_hemi-L.shape.gii`` / ``_hemi-R``  per-vertex compression R^2
    ``mesh_hemi-L.surf.gii`` / ``_hemi-R``  the meshes of the runs (what the figures are drawn on)
    ``parcel_signals.zarr``              parcel signals (time, parcel) of every run, as for volumes
    ``fit.json``                         parameters, versions, data, timings, quality figures (as for volumes;
                                         ``data`` holds ``mesh`` and ``vertices_in_mask``; contiguity is on the mesh)
    ``report.html``                      the report, its figures drawn on the meshes (nilearn's ``plot_surf_roi``
                                         and ``plot_surf_stat_map``, lateral and medial views)
    ``dataset_description.json``         a BIDS derivative description

``sub-<label>/func/sub-<label>_..._atlas-<L>_stat-mean_timeseries.tsv`` and, with ``connectomes``,
``..._stat-<kind>_relmat.tsv`` per run and ``atlas-<L>_stat-<kind>_relmat.tsv`` for the group: as for volumes
(:func:`daskparcel.outputs.bids.write_run_tables`).

``<L>`` is the atlas label (e.g. ``ward100``). Written to ``DIR.partial`` and moved into place at the end.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, NamedTuple

import dask
import nibabel as nib
import numpy as np
import pandas as pd
import xarray as xr

from daskparcel.outputs.bids import (
    atlas_label,
    parcel_colors,
    parcel_names,
    write_dataset_description,
)
from daskparcel.outputs.record import FitRecord, quality_metrics

logger = logging.getLogger(__name__)

__all__ = [
    "MeshFitSignals",
    "label_gifti",
    "mesh_contiguity",
    "mesh_fit_record",
    "mesh_fit_signals",
    "mesh_run_tables",
    "shape_gifti",
    "surface_figures",
    "surface_files",
    "surface_look_up_table",
    "write_mesh_outputs",
]

HEMI = {"left": "L", "right": "R"}


def surface_look_up_table(geometry: Any, codes: np.ndarray, n_parcels: int) -> pd.DataFrame:
    """The look-up table of a surface parcellation: one row per label (0 = the unlabelled vertices first) with
    its name, colour, size in vertices and hemisphere (``L``, ``R``)."""
    counts = np.bincount(codes, minlength=n_parcels + 1)
    part_of = np.repeat(np.arange(len(geometry.parts)), geometry.n_vertices)[geometry.mask]
    first = np.full(n_parcels + 1, -1)
    first[codes[::-1]] = part_of[::-1]  # the hemisphere of each parcel (parcels never span two)
    present = np.arange(1, n_parcels + 1)
    return pd.DataFrame(
        {
            "index": np.arange(n_parcels + 1),
            "name": ["Background", *parcel_names(present)],
            "color": ["#000000", *parcel_colors(n_parcels)],
            "size": [int(len(geometry.mask) - geometry.n_elements), *counts[1:].tolist()],
            "hemisphere": ["n/a", *(HEMI[geometry.parts[p]] for p in first[1:])],
        }
    )


def mesh_contiguity(geometry: Any, codes: np.ndarray) -> tuple[float, list[int]]:
    """The fraction of parcels that are one connected region of the mesh, and the others."""
    from scipy.sparse.csgraph import connected_components

    graph = geometry.connectivity()
    broken = []
    parcels = np.unique(codes)
    for value in parcels:
        ids = np.flatnonzero(codes == value)
        if connected_components(graph[ids][:, ids], directed=False)[0] != 1:
            broken.append(int(value))
    return 1 - len(broken) / len(parcels), broken


def label_gifti(values: np.ndarray, table: pd.DataFrame) -> nib.gifti.GiftiImage:
    """A GIfTI label image of per-vertex ``values`` with the look-up ``table`` (index, name, color)."""
    labels = nib.gifti.GiftiLabelTable()
    for index, name, color in zip(table["index"], table["name"], table["color"], strict=True):
        rgb = [int(color[i : i + 2], 16) / 255 for i in (1, 3, 5)]
        label = nib.gifti.GiftiLabel(
            key=int(index), red=rgb[0], green=rgb[1], blue=rgb[2], alpha=1.0 if index else 0.0
        )
        setattr(label, "label", str(name))  # noqa: B010 (an attribute nibabel's class does not declare)
        labels.labels.append(label)
    image = nib.gifti.GiftiImage(labeltable=labels)
    image.add_gifti_data_array(
        nib.gifti.GiftiDataArray(
            values.astype(np.int32), intent="NIFTI_INTENT_LABEL", datatype="NIFTI_TYPE_INT32"
        )
    )
    return image


def shape_gifti(values: np.ndarray) -> nib.gifti.GiftiImage:
    """A GIfTI shape image (float32) of per-vertex ``values``."""
    image = nib.gifti.GiftiImage()
    image.add_gifti_data_array(
        nib.gifti.GiftiDataArray(
            values.astype(np.float32), intent="NIFTI_INTENT_NONE", datatype="NIFTI_TYPE_FLOAT32"
        )
    )
    return image


def _mesh_gifti(geometry: Any, part: str) -> nib.gifti.GiftiImage:
    i = geometry.parts.index(part)
    image = nib.gifti.GiftiImage()
    for data, intent in ((geometry.coordinates[i], "NIFTI_INTENT_POINTSET"), (geometry.faces[i], "NIFTI_INTENT_TRIANGLE")):  # fmt: skip
        dtype = "NIFTI_TYPE_FLOAT32" if intent.endswith("POINTSET") else "NIFTI_TYPE_INT32"
        array = data.astype(np.float32 if intent.endswith("POINTSET") else np.int32)
        image.add_gifti_data_array(nib.gifti.GiftiDataArray(array, intent=intent, datatype=dtype))
    return image


def surface_figures(figures: Any) -> str:
    """The report's figures of a surface fit folder (called by :class:`daskparcel.outputs.figures.Figures`):
    the parcels and the per-vertex compression R^2 on each hemisphere's mesh, lateral and medial views."""
    from daskparcel.outputs.plotting import label_colormap

    folder, files = figures.folder, figures.files
    hemis = [h for h in ("L", "R") if f"labels_{h}" in files]
    if not hemis:  # a CIFTI fit without meshes: nothing to draw the parcels on
        from daskparcel.outputs._html import note

        logger.info(
            "report: no mesh in %s (CIFTI runs given without meshes): no brain figure", folder
        )
        return note(
            "No brain figure: the runs came without meshes (pass them with daskparcel.cifti_run)."
        )
    n_parcels = int(figures.doc.get("metrics", {}).get("n_parcels", 1))
    method = str(figures.doc.get("parameters", {}).get("method", ""))

    def draw(key: str, roi: bool) -> Any:
        import matplotlib.pyplot as plt
        from nilearn.plotting import plot_surf_roi, plot_surf_stat_map
        from nilearn.surface import load_surf_data

        fig, axes = plt.subplots(
            1, 2 * len(hemis), subplot_kw={"projection": "3d"}, figsize=(5 * len(hemis), 3.2)
        )
        for h, hemi in enumerate(hemis):
            mesh = str(folder / files[f"mesh_{hemi}"])
            values = load_surf_data(str(folder / files[f"{key}_{hemi}"]))
            side = "left" if hemi == "L" else "right"
            for v, view in enumerate(("lateral", "medial")):
                ax = axes[2 * h + v]
                if roi:
                    plot_surf_roi(
                        mesh, values, hemi=side, view=view, axes=ax, figure=fig, colorbar=False,
                        cmap=label_colormap(n_parcels), vmin=1, vmax=max(n_parcels, 2),
                    )  # fmt: skip
                else:
                    plot_surf_stat_map(
                        mesh, np.clip(values, 0, 1), hemi=side, view=view, axes=ax, figure=fig,
                        colorbar=v == 1 and h == len(hemis) - 1, cmap="inferno", vmin=0, vmax=1,
                    )  # fmt: skip
                ax.set_title(f"{hemi} {view}", fontsize=9)
        return fig

    return "\n".join(
        [
            figures._figure(
                "Parcels on the mesh", (), lambda: draw("labels", True),
                "Each parcel one colour, on the mesh the runs were sampled on (lateral and medial views of "
                "each hemisphere).", f"{method} parcels on the cortical surface",
            ),
            figures._figure(
                "Compression R\u00b2 per vertex", (), lambda: draw("r2", False),
                "The fraction of each vertex's signal variance explained by its parcel's mean (negative "
                "values shown as 0).", "map of the per-vertex compression R squared on the surface",
            ),
        ]
    )  # fmt: skip


def _per_part(geometry: Any, values: np.ndarray, fill: float) -> dict[str, np.ndarray]:
    full = np.full(len(geometry.mask), fill, dtype=values.dtype)
    full[geometry.mask] = values
    bounds = np.cumsum([0, *geometry.n_vertices])
    return {p: full[bounds[i] : bounds[i + 1]] for i, p in enumerate(geometry.parts)}


class MeshFitSignals(NamedTuple):
    """What the fit folders of surface and CIFTI fits compute alike (:func:`mesh_fit_signals`)."""

    codes: np.ndarray  # parcel 1..K of each element
    items: list[Any]  # the runs given
    r2: float  # compression R^2
    r2_map: np.ndarray  # per element
    homogeneity: float
    t0: float  # when the folder's outputs began
    #: each run's parcel signals, as transform gave them (their names and lengths)
    run_signals: list[Any]


def mesh_run_tables(
    est: Any, done: MeshFitSignals, partial: Path, connectomes: list[str] | None
) -> dict[str, Any]:
    """Each run's parcel time series and connectomes as BIDS tables, read back from ``parcel_signals.zarr``
    (:func:`daskparcel.outputs.bids.write_run_tables`, as for volumes); fit.json's ``bids`` entry."""
    from daskparcel.outputs.bids import read_run_signals, write_run_tables

    names = [str(s["run"].values[0]) for s in done.run_signals]
    runs = read_run_signals(partial / "parcel_signals.zarr", done.run_signals)
    label = atlas_label(str(est.method), int(est.n_parcels))
    parcels = parcel_names(np.arange(1, int(est.n_parcels) + 1))
    kinds = list(connectomes or [])
    tables = write_run_tables(partial, runs, names, label=label, names=parcels, kinds=kinds)
    return {**tables, "connectomes": kinds}


def mesh_fit_signals(est: Any, imgs: Any, partial: Path, confounds: Any) -> MeshFitSignals:
    """Every run's parcel signals written to ``partial/parcel_signals.zarr``, and the fit's compression R^2,
    its map and homogeneity in one pass over the signals store (surface and CIFTI fit folders)."""
    from daskparcel.metrics import compression_r2, homogeneity, r2_map
    from daskparcel.parcels import parcel_means

    t0 = time.perf_counter()
    codes = np.asarray(est.labels_.values)
    signals = est.store_.signals("cleaned")
    items = list(imgs) if isinstance(imgs, list | tuple) else [imgs]
    runs_signals = est.transform(items, confounds=confounds)
    combined = xr.concat(runs_signals, dim="time") if len(runs_signals) > 1 else runs_signals[0]
    combined.to_dataset(name="parcel_signals").to_zarr(
        partial / "parcel_signals.zarr", mode="w", zarr_format=3, consolidated=False
    )
    (means,) = dask.compute(parcel_means(signals, codes, est.n_parcels))
    r2_value, r2_v, homogeneity_value = dask.compute(
        compression_r2(signals, codes, parcel_signals=means, compute=False),
        r2_map(signals, codes, parcel_signals=means, compute=False),
        homogeneity(signals, codes, n_parcels=est.n_parcels, compute=False),
    )
    return MeshFitSignals(
        codes, items, float(r2_value), np.asarray(r2_v), float(homogeneity_value), t0, runs_signals
    )


def _input_name(item: Any) -> str:
    if isinstance(item, str | os.PathLike):
        return str(item)
    path = getattr(item, "path", None)  # a CIFTI run
    return str(path) if path else type(item).__name__  # a SurfaceImage


def mesh_fit_record(
    est: Any,
    done: MeshFitSignals,
    *,
    data: dict[str, Any],
    metrics: dict[str, Any],
    files: dict[str, str],
    inputs: list[str] | None,
    argv: Any,
    job: Any,
    report: bool,
) -> FitRecord:
    """fit.json of a surface or CIFTI fit folder: ``data`` and ``metrics`` are the kind's own; the rest is
    the estimator's (parameters, timings, runs, runtime) and the command's."""
    from daskparcel.outputs.results import fit_record

    return fit_record(
        est,
        inputs=inputs or [_input_name(i) for i in done.items],
        data={**data, "t_r": est.store_.params.t_r},
        timings={**est.timings_, "outputs": time.perf_counter() - done.t0},
        metrics=metrics,
        input_items=done.items,
        argv=argv,
        job=job,
        files={**files, "fit": "fit.json", **({"report": "report.html"} if report else {})},
    )


def write_mesh_outputs(
    est: Any,
    imgs: Any,
    out: Path,
    *,
    confounds: Any = None,
    inputs: list[str] | None = None,
    argv: Any = None,
    job: Any = None,
    connectomes: list[str] | None = None,
    report: bool = True,
) -> dict[str, Any]:
    """Write the fit folder of a surface or CIFTI fit and return ``fit.json``: the parcel signals, quality
    figures, record and report they share, and the files of their kind (:func:`surface_files`,
    :func:`daskparcel.outputs.cifti.cifti_files`).

    ``out`` is checked by the caller (:func:`daskparcel.outputs.results.write_fit_outputs`).
    """
    from daskparcel.outputs.cifti import cifti_files
    from daskparcel.outputs.results import partial_folder, publish

    cifti = est.geometry_.kind == "cifti"
    with partial_folder(out) as partial:
        done = mesh_fit_signals(est, imgs, partial, confounds)
        files, data, metrics = (cifti_files if cifti else surface_files)(est, done, partial)
        record = mesh_fit_record(
            est, done, data=data, metrics=metrics, files=files, inputs=inputs, argv=argv, job=job,
            report=report,
        )  # fmt: skip
        record.bids = mesh_run_tables(est, done, partial, connectomes)
        publish(record, partial, out, report)
    return record.to_dict()


def surface_files(
    est: Any, done: MeshFitSignals, partial: Path
) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
    """A surface fit folder's own files (the layout of the module docstring), and fit.json's ``data`` and
    ``metrics``."""
    from daskparcel.metrics import parcel_sizes

    geometry, codes = est.geometry_, done.codes
    label = atlas_label(str(est.method), int(est.n_parcels))
    table = surface_look_up_table(geometry, codes, int(est.n_parcels))
    write_dataset_description(partial, f"daskparcel {est.method} surface parcellation")
    table.to_csv(partial / f"atlas-{label}_dseg.tsv", sep="\t", index=False)
    files = {"lut": f"atlas-{label}_dseg.tsv", "parcel_signals": "parcel_signals.zarr"}
    r2_parts = _per_part(geometry, np.nan_to_num(done.r2_map.astype(np.float32)), 0.0)
    for part, values in _per_part(geometry, codes.astype(np.int32), 0).items():
        hemi = HEMI[part]
        files[f"labels_{hemi}"] = f"atlas-{label}_hemi-{hemi}_dseg.label.gii"
        nib.save(label_gifti(values, table), partial / files[f"labels_{hemi}"])
        files[f"r2_{hemi}"] = f"r2_hemi-{hemi}.shape.gii"
        nib.save(shape_gifti(r2_parts[part]), partial / files[f"r2_{hemi}"])
        files[f"mesh_{hemi}"] = f"mesh_hemi-{hemi}.surf.gii"
        nib.save(_mesh_gifti(geometry, part), partial / files[f"mesh_{hemi}"])
    sizes = parcel_sizes(codes, est.n_parcels)
    fraction, broken = mesh_contiguity(geometry, codes)
    metrics = quality_metrics(done.r2, done.homogeneity, est.n_parcels, sizes, fraction, broken)
    return files, {"mesh": geometry.describe(), "vertices_in_mask": geometry.n_elements}, metrics
