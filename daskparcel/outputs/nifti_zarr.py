"""Runs as NIfTI-Zarr (``.nii.zarr``): an OME-Zarr 0.5 image (zarr v3) with the NIfTI header kept.

daskparcel's run stores keep ``bold(x, y, z, t)`` in blocks of whole volumes with the NIfTI header in the
attributes; NIfTI-Zarr keeps the array as ``0`` with axes ``(t, z, y, x)`` (C order of a Fortran-ordered NIfTI),
OME ``multiscales`` metadata and the binary header as a ``nifti`` array. The two layouts cannot be one store
without giving xarray (and every daskparcel reader) another axis order, so a run is exported:
:func:`to_nifti_zarr` streams it block by block (memory: one dask block of volumes), and :func:`open_nifti_zarr`
opens a NIfTI-Zarr image as a daskparcel run (a lazy ``bold(x, y, z, t)`` Dataset that ``fit`` and
``transform`` take). The metadata are written by the ``nifti-zarr`` package's own functions
(``write_ome_metadata``, ``write_nifti_header``), so ``niizarr.zarr2nii`` reads the export back.

Data are float32, as daskparcel reads every run (scaling applied): the exported header says float32 with no
scaling; its dims, voxel sizes, units, qform/sform and the rest are the source's.
"""

from __future__ import annotations

import base64
import logging
import os
import shutil
from pathlib import Path
from typing import Any, cast

import dask.array as da
import nibabel as nib
import numpy as np
import xarray as xr

from daskparcel.errors import InputError

logger = logging.getLogger(__name__)

SUFFIX = ".nii.zarr"
_SPACE_UNITS = {"mm": "millimeter", "micron": "micrometer", "meter": "meter"}
_TIME_UNITS = {"sec": "second", "msec": "millisecond", "usec": "microsecond"}


def _run_dataset(data: Any) -> xr.Dataset:
    if isinstance(data, xr.Dataset):
        ds = data
    elif isinstance(data, str | os.PathLike):
        path = Path(data)
        if path.is_dir():
            from daskparcel.store.runs import open_store

            opened = open_store(path)
            if not isinstance(opened, xr.Dataset):
                raise InputError(
                    f"{path}: a cohort store; export one run at a time "
                    "(daskparcel.store.open_runs gives them)"
                )
            ds = opened
        else:
            from daskparcel.ingest.nifti import open_nifti

            ds = open_nifti(path)
    else:
        raise InputError(
            f"data: a {type(data).__name__}; give a run Dataset, a run store or a 4D NIfTI path"
        )
    if "bold" not in ds or ds["bold"].dims != ("x", "y", "z", "t") or "affine" not in ds.attrs:
        raise InputError(
            "data: a run needs bold(x, y, z, t) and an 'affine' attribute (as open_store / open_nifti give)"
        )
    return ds


def _header(ds: xr.Dataset) -> nib.Nifti1Header:
    """The run's NIfTI header for float32 data of its shape, scaling removed (as ``to_nifti`` writes it)."""
    from daskparcel.store.runs import header_from_attrs, nifti_header

    attrs = ds.attrs
    source = header_from_attrs(attrs) if "nifti_header" in attrs else None
    affine = np.asarray(attrs["affine"], dtype=float)
    return nifti_header(attrs, ds["bold"].shape, np.float32, affine, source)


def to_nifti_zarr(
    data: Any, path: str | os.PathLike[str], *, overwrite: bool = False, chunk: int = 64
) -> Path:
    """Write a run as a NIfTI-Zarr image, streaming its volume blocks.

    Parameters
    ----------
    data : xarray.Dataset, or path of a run store or 4D NIfTI
        The run (``bold(x, y, z, t)`` with the attributes of :func:`daskparcel.open_store`).
    path : path
        The ``.nii.zarr`` folder to write (written beside and moved in when complete).
    overwrite : bool, default=False
        Replace an existing ``path``.
    chunk : int, default=64
        Spatial chunk size (NIfTI-Zarr's default); one volume per chunk in time.

    Returns
    -------
    pathlib.Path
        ``path``. ``niizarr.zarr2nii(path)`` gives the run's data, affine and header back.

    Raises
    ------
    InputError
        ``path`` does not end in ``.nii.zarr``, exists (without ``overwrite``), or ``data`` is not a run.
    """
    import zarr
    from niizarr import write_nifti_header, write_ome_metadata

    path = Path(path)
    if not path.name.endswith(SUFFIX):
        raise InputError(
            f"{path}: a NIfTI-Zarr image is a folder named *{SUFFIX}; rename the output"
        )
    if path.exists() and not overwrite:
        raise InputError(
            f"{path}: exists; pass overwrite=True to replace it, or choose another path"
        )
    ds = _run_dataset(data)
    hdr = _header(ds)
    bold = ds["bold"].data
    if not isinstance(bold, da.Array):
        bold = da.from_array(np.asarray(bold), chunks=(*bold.shape[:3], 1))
    values = bold.astype(np.float32).transpose(3, 2, 1, 0)  # (t, z, y, x)
    values = values.rechunk({0: 1, 1: -1, 2: -1, 3: -1})
    partial = path.with_name(path.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        group = zarr.open_group(partial, mode="w", zarr_format=3)
        spatial = tuple(min(chunk, n) for n in values.shape[1:])
        array = group.create_array(
            "0",
            shape=values.shape,
            chunks=(1, *spatial),
            dtype="<f4",
            dimension_names=["t", "z", "y", "x"],
            fill_value=0.0,
        )
        array.attrs["_ARRAY_DIMENSIONS"] = ["time", "z", "y", "x"]
        # each dask block is whole volumes, so it writes whole zarr chunks: no two tasks share a chunk
        da.store(values, cast(Any, array), lock=False)
        units = hdr.get_xyzt_units()
        zooms = hdr.get_zooms()
        write_ome_metadata(
            group,
            axes=["t", "z", "y", "x"],
            space_scale=[float(zooms[2]), float(zooms[1]), float(zooms[0])],
            time_scale=float(zooms[3]),
            space_unit=_SPACE_UNITS.get(units[0], "millimeter"),
            time_unit=_TIME_UNITS.get(units[1], "second"),
            pyramid_aligns="edge",
            ome_version="0.5",
        )
        write_nifti_header(group, hdr)
        if path.exists():
            shutil.rmtree(path)
        os.replace(partial, path)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    logger.info("%s: NIfTI-Zarr image of %s volumes written", path, values.shape[0])
    return path


def open_nifti_zarr(path: str | os.PathLike[str]) -> xr.Dataset:
    """Open a 4D NIfTI-Zarr image as a daskparcel run (lazy ``bold(x, y, z, t)`` float32 Dataset).

    Parameters
    ----------
    path : path
        A ``.nii.zarr`` folder (level 0 is read).

    Returns
    -------
    xarray.Dataset
        As :func:`daskparcel.open_nifti` gives: ``bold(x, y, z, t)`` with ``affine``, ``voxel_size``, ``t_r``,
        ``nifti_header`` (base64) and ``source``; ``fit`` and ``transform`` take it.
    """
    import zarr

    from daskparcel.ingest.nifti import repetition_time

    path = Path(path)
    try:
        group = zarr.open_group(path, mode="r")
        header_array, array = group["nifti"], group["0"]
        if not isinstance(header_array, zarr.Array) or not isinstance(array, zarr.Array):
            raise KeyError("'nifti' and '0' must be arrays")
        raw = np.asarray(header_array[:]).tobytes()
    except (FileNotFoundError, KeyError, ValueError, TypeError) as exc:
        raise InputError(
            f"{path}: not a NIfTI-Zarr image ({exc}); give a .nii.zarr folder with its 'nifti' header"
        ) from exc
    sizes = {int.from_bytes(raw[:4], "little"), int.from_bytes(raw[:4], "big")}
    klass = nib.Nifti2Header if 540 in sizes else nib.Nifti1Header
    header = klass(
        binaryblock=raw[: klass.template_dtype.itemsize].ljust(klass.template_dtype.itemsize, b"\0")
    )
    if array.ndim != 4:
        raise InputError(f"{path}: a {array.ndim}D image; a run needs (t, z, y, x)")
    values = da.from_zarr(array).transpose(3, 2, 1, 0).astype(np.float32)
    slope, inter = header.get_slope_inter()
    if slope is not None and (slope != 1.0 or (inter or 0.0) != 0.0):
        values = values * np.float32(slope) + np.float32(inter or 0.0)
    t_r, t_r_source = repetition_time(header)
    attrs = {
        "affine": np.asarray(header.get_best_affine(), dtype=float).tolist(),
        "voxel_size": [float(z) for z in header.get_zooms()[:3]],
        "t_r": t_r,
        "t_r_source": t_r_source,
        "nifti_header": base64.b64encode(header.binaryblock).decode("ascii"),
        "nifti_version": 2 if klass is nib.Nifti2Header else 1,
        "source": str(path.resolve()),
    }
    return xr.Dataset({"bold": (("x", "y", "z", "t"), values)}, attrs=attrs)


def convert_to_nifti_zarr(
    inputs: list[str], out: str | os.PathLike[str], *, overwrite: bool = False
) -> str:
    """``daskparcel convert --format nifti-zarr``: one run (NIfTI or run store) to ``out`` (``*.nii.zarr``).

    Returns the summary line printed by the command.
    """
    from daskparcel._checks import expand_glob

    paths = [str(p) for item in inputs for p in expand_glob(item, source="--format nifti-zarr")]
    if len(paths) != 1:
        raise InputError(
            f"--format nifti-zarr: {len(paths)} inputs; a NIfTI-Zarr image holds one run, convert them one by one"
        )
    path = to_nifti_zarr(paths[0], out, overwrite=overwrite)
    return f"NIfTI-Zarr image of {paths[0]} written to {path}"
