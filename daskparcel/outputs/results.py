"""What a fit leaves in its output folder, written by one function for the CLI, the demo and job files.

``DIR/``
    ``labels.nii.gz``          int32 labels, 0 = background, 1..K
    ``mask.nii.gz``            the mask
    ``mean.nii.gz``            temporal mean of the smoothed data in the mask (the background of the figures)
    ``compressed_mean.nii.gz`` the same mean after compression (each voxel its parcel's mean)
    ``r2.nii.gz``              per-voxel compression R^2
    ``parcel_signals.zarr``    parcel signals (time, parcel) of every run, with ``run`` / ``subject`` coordinates
    ``parcels.tsv``            each parcel's size, centroid (mm) and mean R^2
    ``fit.json``               parameters, versions, data description, timings, quality figures (schema below)
    ``report.html``            the report (:mod:`daskparcel.outputs.report`)

The folder is also a BIDS derivative dataset (:mod:`daskparcel.outputs.bids`): ``dataset_description.json``, the
atlas (``atlas-<label>_description.json``, ``atlas-<label>_dseg.tsv`` / ``.json`` and
``sub-*/anat/*_atlas-<label>_dseg.nii.gz``), each run's parcel time series (``*_stat-mean_timeseries.tsv``) and,
when asked, its connectomes (``*_stat-<kind>_relmat.tsv``, :mod:`daskparcel.outputs.connectomes`), with the files
above listed in ``.bidsignore``; ``fit.json`` records them under ``"bids"``.

``fit.json``: ``{"schema": 1, "daskparcel_version", "versions": {package: version}, "created",
"inputs": [str], "input_files": [{"path", "sha256", "bytes"}], "command": {"argv", "cwd", "job"},
"parameters": {...}, "data": {"shape", "voxel_size", "t_r", "t_r_source", "n_runs", "runs": [names],
"n_volumes": [per run], "voxels_in_mask"}, "timings": {"inputs", "mask", "signals", "reduction", "clustering", "total"
(the fit), "transform", "outputs"} (seconds), "metrics": {"compression_r2", "n_parcels", "sizes": {"cv", "largest",
"smallest", "median", "singletons"}, "contiguity", "disconnected_parcels", "nan_r2_voxels"}, "files": {name:
relative path}}``. ``parcels.tsv``: one row per parcel (:mod:`daskparcel.outputs.parcel_table`).

Everything is written to ``DIR.partial`` first and moved into place at the end: a failed fit leaves nothing in
``DIR`` (and an existing ``DIR`` from an earlier fit is only replaced by a complete new one).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, cast

import dask
import nibabel as nib
import numpy as np
import xarray as xr

from daskparcel import __version__
from daskparcel.errors import InputError
from daskparcel.estimator import Parcellations
from daskparcel.outputs.parcel_table import parcel_table, write_parcel_table
from daskparcel.outputs.record import (
    FILES,
    FitRecord,
    command_record,
    describe_input_files,
    quality_metrics,
    runtime_record,
)
from daskparcel.store.runs import replace_dir

logger = logging.getLogger(__name__)

PACKAGES = (
    "daskparcel",
    "dask",
    "distributed",
    "xarray",
    "zarr",
    "numpy",
    "scipy",
    "scikit-learn",
    "nibabel",
    "nilearn",
    "flox",
)


def versions() -> dict[str, str]:
    """Versions of the packages that shape a result."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def check_out_dir(out: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Refuse an output folder that is a file, or that holds a result, unless ``overwrite``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(
            f"{out}: the output path is a file; give a folder path for --out (it is created)"
        )
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError(
            f"{out}: the output folder is not empty; pass --overwrite to replace it, or choose another --out"
        )
    if not out.parent.exists():
        raise InputError(f"{out}: its parent folder {out.parent} does not exist; create it first")
    return out


def json_parameters(est: Parcellations) -> dict[str, Any]:
    """The estimator's parameters as JSON values (images and clients by their description)."""
    params: dict[str, Any] = {}
    for key, value in est.get_params().items():
        if value is None or isinstance(value, bool | int | float | str):
            params[key] = value
        elif isinstance(value, list | tuple) and all(
            isinstance(v, str | int | float) for v in value
        ):
            params[key] = list(value)
        elif isinstance(value, dict):
            params[key] = {
                str(k): v if isinstance(v, bool | int | float | str) else repr(v)
                for k, v in value.items()
            }
        elif isinstance(value, os.PathLike):
            params[key] = str(value)
        else:
            params[key] = type(value).__name__
    return params


def fit_record(
    est: Parcellations,
    *,
    inputs: list[str],
    data: dict[str, Any],
    timings: dict[str, float],
    metrics: dict[str, Any],
    input_items: Iterable[Any],
    argv: Sequence[str] | None,
    job: str | os.PathLike[str] | None,
    files: dict[str, str] | None = None,
) -> FitRecord:
    """The record of a fit folder of any kind (voxels, surface, CIFTI): ``data`` and ``metrics`` are the kind's
    own, to which the runs and their lengths are added; the rest is the estimator's (parameters, runtime) and
    the command's (``argv``, ``job``, the files behind ``input_items``)."""
    store = est.store_
    assert store is not None  # the writers refuse an estimator without one first
    return FitRecord(
        daskparcel_version=__version__,
        versions=versions(),
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        inputs=inputs,
        parameters=json_parameters(est),
        data={
            **data,
            "n_runs": len(store.runs),
            "runs": list(store.runs),
            "n_volumes": [int(r.sizes["time"]) for r in store.run_signals("cleaned")],
        },
        timings={k: round(float(v), 3) for k, v in timings.items()},
        metrics=metrics,
        command=command_record(argv, job),
        runtime=runtime_record(est),
        input_files=describe_input_files(input_items),
        files=dict(FILES) if files is None else files,
    )


def write_fit_outputs(
    est: Parcellations,
    imgs: Any,
    out: str | os.PathLike[str],
    *,
    confounds: Any = None,
    inputs: list[str] | None = None,
    overwrite: bool = False,
    report: bool = True,
    connectomes: Sequence[str] | str | None = None,
    argv: Sequence[str] | None = None,
    job: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Write the outputs of the fitted ``est`` on ``imgs`` to ``out`` (see the module docstring).

    The parcel signals of every run are computed with ``transform`` (from the signals store for fitted runs)
    and written to ``parcel_signals.zarr``; quality figures are computed over the signals store in two streaming
    passes (the per-voxel R^2 map needs the parcel means first). The BIDS atlas, each run's parcel time series
    and the ``connectomes`` asked for (kinds of :func:`daskparcel.connectome`) are written as BIDS tables.
    ``argv`` (default: this process's ``sys.argv``) and ``job`` (a job file) are recorded as the ``command``
    behind the fit; the input files are recorded with their sha256, and ``parcels.tsv`` lists each parcel's
    size, centroid and R^2.

    Returns
    -------
    dict
        The content of ``fit.json``.
    """
    from daskparcel.metrics import compression_r2, contiguity, homogeneity, parcel_sizes, r2_map
    from daskparcel.outputs.connectomes import check_kinds
    from daskparcel.parcels import parcel_means

    out = check_out_dir(out, overwrite=overwrite)
    est._check_fitted()
    store = est.store_
    if store is None:
        raise InputError(
            "est: has no signals store (made by from_labels); fit it on runs before writing a fit folder"
        )
    kinds = check_kinds(connectomes, name="connectomes")
    if (
        getattr(est, "geometry_", None) is not None
    ):  # surface / CIFTI runs: GIfTI or dlabel labels, meshes
        from daskparcel.outputs.surface import write_mesh_outputs

        return write_mesh_outputs(est, imgs, out, confounds=confounds, inputs=inputs, argv=argv, job=job, connectomes=kinds, report=report)  # fmt: skip
    with partial_folder(out) as partial:
        t0 = time.perf_counter()
        mask = np.asarray(est.mask_img_.dataobj).astype(bool)
        affine = est.mask_img_.affine
        labels = est.labels_.values
        signals = store.signals("cleaned")
        smoothed = store.signals("smoothed")
        parcel_signals = cast(
            list[xr.DataArray],
            est.transform(imgs if isinstance(imgs, list | tuple) else [imgs], confounds=confounds),
        )
        combined = (
            xr.concat(parcel_signals, dim="time") if len(parcel_signals) > 1 else parcel_signals[0]
        )
        mean_voxels = smoothed.mean("time")
        t_transform = time.perf_counter()
        write = combined.to_dataset(name="parcel_signals").to_zarr(
            partial / FILES["parcel_signals"],
            mode="w",
            zarr_format=3,
            consolidated=False,
            compute=False,
        )
        means = parcel_means(signals, labels, est.n_elements_)
        mean_v, means_v, _ = dask.compute(mean_voxels.data, means, write)
        # the R^2 figures need the parcel means of the signals first: given them (a small time x
        # parcel table), they are a second streaming read; in the same compute as the means, dask
        # would hold every block of the signals until the means exist
        r2_value, r2_v, homogeneity_value = dask.compute(
            compression_r2(signals, labels, parcel_signals=means_v, compute=False),
            r2_map(signals, labels, parcel_signals=means_v, compute=False),
            homogeneity(signals, labels, n_parcels=est.n_elements_, compute=False),
        )
        r2_v = r2_v.values
        timings = dict(est.timings_)
        timings["transform"] = time.perf_counter() - t_transform
        mean_v = np.asarray(mean_v, dtype=np.float32)
        sums = np.bincount(labels, weights=mean_v, minlength=est.n_elements_ + 1)
        counts = np.bincount(labels, minlength=est.n_elements_ + 1)
        compressed = (sums / np.maximum(counts, 1))[labels].astype(np.float32)

        def volume(values: np.ndarray, dtype: Any = np.float32) -> nib.Nifti1Image:
            vol = np.zeros(mask.shape, dtype=dtype)
            vol[mask] = values
            img = nib.Nifti1Image(vol, affine)
            img.header.set_xyzt_units("mm", "sec")  # the units of every image of the folder
            return img

        nib.save(volume(labels, np.int32), partial / FILES["labels"])
        nib.save(volume(np.ones(int(mask.sum())), np.uint8), partial / FILES["mask"])
        nib.save(volume(mean_v), partial / FILES["mean"])
        nib.save(volume(compressed), partial / FILES["compressed_mean"])
        nib.save(volume(np.nan_to_num(np.asarray(r2_v, dtype=np.float32))), partial / FILES["r2"])
        table = parcel_table(labels, mask, affine, np.asarray(r2_v, dtype=np.float64))
        write_parcel_table(table, partial / FILES["parcels"])
        sizes = parcel_sizes(labels, est.n_elements_)
        contig = contiguity(np.asarray(est.labels_img_.dataobj))
        timings["outputs"] = time.perf_counter() - t0
        record = fit_record(
            est,
            inputs=inputs if inputs is not None else _describe_inputs(imgs),
            data={
                "shape": list(mask.shape),
                "voxel_size": [float(v) for v in np.sqrt((affine[:3, :3] ** 2).sum(axis=0))],
                **_repetition_time(store.params.t_r, parcel_signals),
                "voxels_in_mask": int(mask.sum()),
            },
            timings=timings,
            metrics={
                **quality_metrics(
                    r2_value,
                    homogeneity_value,
                    est.n_elements_,
                    sizes,
                    contig.fraction,
                    contig.disconnected,
                ),
                "nan_r2_voxels": int(table["nan_r2_voxels"].sum()),
            },
            input_items=[*(imgs if isinstance(imgs, list | tuple) else [imgs]), *_mask_file(est)],
            argv=argv,
            job=job,
        )
        doc = record.to_dict()
        record.bids = _write_bids(est, inputs or imgs, doc, partial, parcel_signals, kinds)
        publish(record, partial, out, report)
    return record.to_dict()


@contextlib.contextmanager
def partial_folder(out: Path) -> Iterator[Path]:
    """A fresh ``<out>.partial`` folder for a fit folder's files, removed if the block fails (a successful
    block ends with :func:`publish`, which moves it into place): a failed run leaves nothing."""
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def publish(record: FitRecord, partial: Path, out: Path, report: bool) -> None:
    """Write ``fit.json`` (and the report that reads it) into the partial folder, then swap it in as ``out``."""
    record.write(partial)
    if report:
        from daskparcel.outputs.report import write_report

        write_report(partial)
    replace_dir(partial, out)


def _mask_file(est: Parcellations) -> list[Any]:
    """The mask file the estimator was given (an input too), as a list of zero or one path."""
    return [est.mask] if isinstance(est.mask, str | os.PathLike) else []


def _repetition_time(fit_t_r: float | None, parcel_signals: list[xr.DataArray]) -> dict[str, Any]:
    """``t_r`` (seconds) and ``t_r_source`` of the data description: the TR the fit cleaned with, else the runs'
    (from their headers, carried by ``transform``'s output), None when unknown or when the runs differ."""
    if fit_t_r is not None:
        return {"t_r": float(fit_t_r), "t_r_source": "used by the fit's temporal filtering"}
    values = [s.attrs.get("t_r") for s in parcel_signals]
    known = sorted({float(f"{float(v):.6g}") for v in values if v is not None})  # float32 headers
    if len(known) == 1 and None not in values:
        return {"t_r": known[0], "t_r_source": "the runs' headers"}
    if len(known) > 1:
        return {
            "t_r": None,
            "t_r_source": f"the runs differ: {', '.join(f'{v:g} s' for v in known)}",
        }
    return {"t_r": None, "t_r_source": "not in the runs' headers (pass t_r to record it)"}


def _describe_inputs(imgs: Any) -> list[str]:
    items = list(imgs) if isinstance(imgs, list | tuple) else [imgs]
    return [str(i) if isinstance(i, str | os.PathLike) else type(i).__name__ for i in items]


def _write_bids(
    est: Parcellations,
    imgs: Any,
    doc: dict[str, Any],
    folder: Path,
    parcel_signals: list[xr.DataArray],
    kinds: list[str],
) -> dict[str, Any]:
    """The BIDS atlas and per-run tables of a fit folder (parcel signals read back from the written zarr).

    ``imgs`` are the inputs as given (paths or BIDS runs name the ``space-`` and the ``Sources``).
    """
    from daskparcel.outputs.bids import (
        common_space,
        read_run_signals,
        write_bids_atlas,
        write_run_tables,
    )

    names = [str(s["run"].values[0]) for s in parcel_signals]
    runs = read_run_signals(folder / FILES["parcel_signals"], parcel_signals)
    items = list(imgs) if isinstance(imgs, list | tuple) else [imgs]
    space = common_space(items)
    sources = [
        str(getattr(i, "path", i))
        for i in items
        if isinstance(i, str | os.PathLike) or hasattr(i, "path")
    ]
    atlas = write_bids_atlas(
        folder,
        est.labels_img_,
        method=str(est.method),
        parameters=doc["parameters"],
        run_names=names,
        sources=sources or doc["inputs"],
        space=space,
    )
    tables = write_run_tables(
        folder,
        runs,
        names,
        label=atlas["atlas"],
        names=atlas.pop("names"),
        kinds=kinds,
        space=space,
    )
    return {**atlas, **tables, "connectomes": kinds}
