"""The store schema: zarr v3 groups read and written through xarray.

Layout (every store is a zarr v3 group whose attribute ``daskparcel`` describes it)::

    run store                         cohort store
    STORE/zarr.json                   STORE/zarr.json           attrs: daskparcel={kind: "cohort", runs: [...]}
    STORE/bold/...  (x, y, z, t)      STORE/runs/<name>/bold/   one run group per input, same grid

    attrs["daskparcel"] = {"kind": "run" | "cohort" | ..., "schema": 1, "complete": bool,
                           "identity": {...what was written: sources and their sha256, parameters...},
                           "version": daskparcel version}

A store is marked ``complete`` only once its last chunk is written; until then :func:`open_store` refuses it
with :class:`~daskparcel.errors.IncompleteStoreError`. Writers hold :func:`store_lock` (an advisory ``flock`` on
``STORE/.daskparcel.lock``, released by the OS if the process dies) so two processes never write one store.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import errno
import fcntl
import functools
import gzip
import hashlib
import json
import logging
import os
import shutil
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import dask
import nibabel as nib
import numpy as np
import xarray as xr
import zarr

from daskparcel import __version__
from daskparcel._dask import local_cores
from daskparcel.errors import IncompleteStoreError, InputError, StoreLockedError

logger = logging.getLogger(__name__)

SCHEMA = 1
ATTR = "daskparcel"
LOCK_NAME = ".daskparcel.lock"
PROGRESS_NAME = ".daskparcel-progress.json"
RUNS_GROUP = "runs"


# --------------------------------------------------------------------------------------------- inspection
def store_info(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``daskparcel`` attribute of the store at ``path``, or None if ``path`` is not a daskparcel store."""
    path = Path(path)
    meta = path / "zarr.json"
    if not meta.is_file():
        return None
    try:
        doc = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None
    info = doc.get("attributes", {}).get(ATTR)
    return info if isinstance(info, dict) else None


def check_output_path(path: str | os.PathLike[str], *, what: str = "store") -> Path:
    """Refuse an output path that is a file or a non-empty folder that is not a daskparcel store."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(
            f"{path}: the output path is a file; give a folder path for the {what} (it is created)"
        )
    ours = (LOCK_NAME, PROGRESS_NAME)
    if (
        path.is_dir()
        and any(p.name not in ours for p in path.iterdir())
        and store_info(path) is None
    ):
        raise InputError(
            f"{path}: the output folder already holds other files; give a new or empty folder for the {what}"
        )
    if not path.parent.exists():
        raise InputError(f"{path}: its parent folder {path.parent} does not exist; create it first")
    return path


def _require_store(path: Path, kinds: tuple[str, ...]) -> dict[str, Any]:
    if not path.exists():
        raise InputError(
            f"{path}: no such store; create it with `daskparcel convert IN... --out {path}`"
        )
    info = store_info(path)
    if info is None:
        raise InputError(
            f"{path}: not a daskparcel store (no zarr.json with a 'daskparcel' attribute); "
            "create one with `daskparcel convert`"
        )
    if info.get("schema") != SCHEMA:
        raise InputError(
            f"{path}: store schema {info.get('schema')} is not the schema {SCHEMA} this daskparcel reads; "
            "re-run the command that wrote it"
        )
    if info.get("kind") not in kinds:
        raise InputError(
            f"{path}: is a {info.get('kind')} store; expected one of {', '.join(kinds)}"
        )
    if not info.get("complete", False):
        raise IncompleteStoreError(
            f"{path}: incomplete store (its write was interrupted); re-run the command that writes it "
            "(e.g. `daskparcel convert`) to resume"
        )
    return info


@contextlib.contextmanager
def quiet_zarr() -> Iterator[None]:
    """Silence zarr's warning about our own lock and progress files, which sit beside the zarr arrays."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Object at \.daskparcel", category=Warning)
        yield


def _open_dataset(path: Path, group: str | None = None) -> xr.Dataset:
    with quiet_zarr():
        return xr.open_zarr(
            path,
            group=group,
            consolidated=False,
            zarr_format=3,
            use_zarr_fill_value_as_mask=False,
            chunks={},
        )


def open_store(path: str | os.PathLike[str]) -> xr.Dataset | xr.DataTree:
    """Open a daskparcel store lazily.

    Parameters
    ----------
    path : str or path-like
        A run store or a cohort store written by :func:`daskparcel.convert`.

    Returns
    -------
    xarray.Dataset or xarray.DataTree
        A run store gives its Dataset (``bold(x, y, z, t)``, dask-backed, attributes from the NIfTI header);
        a cohort store gives a DataTree whose children (under ``runs``) are the runs' Datasets.

    Raises
    ------
    InputError
        Not a store, an unknown schema; :class:`IncompleteStoreError` for a store whose write did not finish.
    """
    path = Path(path)
    info = _require_store(path, ("run", "cohort"))
    if info["kind"] == "run":
        return _validated_run(_open_dataset(path), path)
    runs = dict(open_runs(path))
    return xr.DataTree.from_dict({f"{RUNS_GROUP}/{name}": ds for name, ds in runs.items()})


def _validated_run(ds: xr.Dataset, where: Path | str) -> xr.Dataset:
    if "bold" not in ds or ds["bold"].dims != ("x", "y", "z", "t"):
        raise InputError(
            f"{where}: store has no variable bold(x, y, z, t); re-run `daskparcel convert`"
        )
    if "affine" not in ds.attrs or np.asarray(ds.attrs["affine"]).shape != (4, 4):
        raise InputError(
            f"{where}: store has no 4x4 'affine' attribute; re-run `daskparcel convert`"
        )
    return ds


def open_runs(path: str | os.PathLike[str]) -> list[tuple[str, xr.Dataset]]:
    """The runs of a run or cohort store as ``(name, Dataset)`` pairs, in the order they were written."""
    path = Path(path)
    info = _require_store(path, ("run", "cohort"))
    if info["kind"] == "run":
        return [(str(info.get("name", path.stem)), _validated_run(_open_dataset(path), path))]
    return [
        (name, _validated_run(_open_dataset(path, f"{RUNS_GROUP}/{name}"), f"{path}[{name}]"))
        for name in info["runs"]
    ]


# ------------------------------------------------------------------------------------------- writing
@contextlib.contextmanager
def store_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the write lock of the store at ``path`` (created if needed); refuse if another process holds it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    handle = open(path / LOCK_NAME, "a+")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise StoreLockedError(
                f"{path}: another process is writing this store; wait for it to finish "
                "(or, if none runs, the lock is stale only while that process lives)"
            ) from exc
        yield
    finally:
        handle.close()


def write_json_atomic(path: Path, doc: Mapping[str, Any]) -> None:
    """Write JSON so that a reader sees either the old or the new file, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, path)


def set_store_info(path: str | os.PathLike[str], **fields: Any) -> dict[str, Any]:
    """Update the ``daskparcel`` attribute of the root group of a store."""
    with quiet_zarr():
        group = zarr.open_group(str(path), mode="r+", zarr_format=3)
        info: dict[str, Any] = dict(group.attrs.get(ATTR, {}))  # type: ignore[arg-type]
        info.update(fields)
        info.setdefault("schema", SCHEMA)
        info["version"] = __version__
        group.attrs[ATTR] = info
    return info


def disk_error_message(path: Path, exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return f"{path}: the disk is full while writing; free space (or choose another --out) and re-run to resume"
    return f"{path}: could not write ({exc.strerror or exc}); fix the location and re-run to resume"


def replace_dir(new: Path, target: Path) -> None:
    """Move the completed folder ``new`` to ``target``, removing what ``target`` held only after the move."""
    old = target.with_name(target.name + ".daskparcel-old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    if old.exists():
        shutil.rmtree(old)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's bytes, cached per (path, size, mtime) for this process."""
    stat = os.stat(path)
    return _sha256_cached(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def prefetch_sha256(paths: list[str | os.PathLike[str]], threads: int | None = None) -> None:
    """Hash several files at once (hashlib releases the GIL), filling :func:`file_sha256`'s cache; on
    ``threads`` threads, by default the local cores (:func:`daskparcel._dask.local_cores`: SHA-256 takes about
    1 s of a core per GB, so 12 files on 16 cores take one file's time)."""
    files = [p for p in paths if os.path.isfile(p)]
    if len(files) < 2:
        return
    threads = max(1, threads or local_cores())
    with concurrent.futures.ThreadPoolExecutor(min(threads, len(files))) as pool:
        list(pool.map(file_sha256, files))


@functools.lru_cache(maxsize=1024)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------- export
def header_codec_attrs(header: nib.Nifti1Header) -> dict[str, Any]:
    """A NIfTI header as run attributes (its binary block in base64, and the NIfTI version)."""
    return {
        "nifti_header": base64.b64encode(header.binaryblock).decode("ascii"),
        "nifti_version": 2 if isinstance(header, nib.Nifti2Header) else 1,
    }


def header_from_attrs(attrs: Mapping[str, Any]) -> nib.Nifti1Header:
    """Rebuild the NIfTI header kept in a run's attributes (the inverse of :func:`header_codec_attrs`)."""
    block = base64.b64decode(attrs["nifti_header"])
    cls = nib.Nifti2Header if attrs.get("nifti_version", 1) == 2 else nib.Nifti1Header
    return cls(binaryblock=block[: cls.template_dtype.itemsize])


def nifti_header(
    attrs: Mapping[str, Any],
    shape: tuple[int, ...],
    dtype: Any,
    affine: np.ndarray,
    header: nib.Nifti1Header | None = None,
) -> nib.Nifti1Header:
    """The NIfTI header of an export: ``header`` (the one kept at convert time) when given, with the data
    type, shape and affine set and scaling removed; else a new one in mm and seconds with the voxel sizes of
    ``affine`` and the TR of ``attrs`` (the time unit left unknown rather than claiming 1 s when there is no
    TR). Used by :func:`to_nifti` and the NIfTI-Zarr export."""
    array_shape = tuple(int(s) for s in shape)
    hdr = nib.Nifti1Header() if header is None else header.copy()
    if hdr.endianness != "<":
        hdr = hdr.as_byteswapped("<")
    t_r = attrs.get("t_r")
    if header is not None:
        zooms = [float(z) for z in hdr.get_zooms()]
    else:
        zooms = [float(v) for v in np.sqrt((affine[:3, :3] ** 2).sum(axis=0))]
        zooms.append(float(t_r) if t_r else 1.0)
    hdr.set_data_dtype(dtype)
    hdr.set_data_shape(array_shape)
    zooms = (zooms + [1.0] * len(array_shape))[: len(array_shape)]
    hdr.set_zooms(tuple(zooms))
    if header is not None:  # keep the unused pixdim slots as the source had them
        restored = hdr["pixdim"].copy()
        restored[len(array_shape) + 1 :] = header["pixdim"][len(array_shape) + 1 :]
        hdr["pixdim"] = restored
    hdr.set_slope_inter(np.nan, np.nan)
    if header is None:
        hdr.set_xyzt_units("mm", "sec" if t_r or len(array_shape) == 3 else "unknown")
        hdr.set_qform(affine, code=1)
        hdr.set_sform(affine, code=1)
    elif not np.allclose(hdr.get_best_affine(), affine, atol=1e-5):
        hdr.set_qform(affine, code=int(hdr["qform_code"]) or 1)
        hdr.set_sform(affine, code=int(hdr["sform_code"]) or 1)
    hdr["vox_offset"] = 352
    return hdr


def to_nifti(
    data: xr.Dataset | xr.DataArray,
    path: str | os.PathLike[str],
    *,
    affine: np.ndarray | None = None,
    header: nib.Nifti1Header | None = None,
) -> Path:
    """Write a run (or any (x, y, z[, t]) DataArray) to a NIfTI file, streaming volume blocks.

    Memory is one dask chunk of volumes at a time: NIfTI stores volumes one after the other (Fortran order),
    so each computed block is appended to the file as it comes. The header kept at ``convert`` time is reused
    (dims, pixdim, units, qform/sform), with the data type set to float32 and scaling removed. Without one
    (e.g. ``inverse_transform``'s images), the voxel size comes from the affine and the time step from the
    ``t_r`` attribute, in mm and seconds; with no ``t_r`` the time unit is left unknown rather than claiming
    1 s.

    Parameters
    ----------
    data : xarray.Dataset or xarray.DataArray
        A run Dataset (its ``bold`` is written) or a DataArray with dims (x, y, z) or (x, y, z, t).
    path : str or path-like
        ``.nii`` or ``.nii.gz``. Written to a temporary name and renamed at the end.
    affine, header : optional
        Override the affine / header taken from the attributes.
    """
    path = Path(path)
    if not str(path).endswith((".nii", ".nii.gz")):
        raise InputError(f"{path}: a NIfTI output needs a .nii or .nii.gz name")
    array = data["bold"] if isinstance(data, xr.Dataset) else data
    attrs = {**array.attrs, **(data.attrs if isinstance(data, xr.Dataset) else {})}
    dims = array.dims
    if dims not in (("x", "y", "z"), ("x", "y", "z", "t")):
        raise InputError(f"to_nifti: dims {dims} are not (x, y, z[, t]); transpose first")
    if affine is None:
        if "affine" not in attrs:
            raise InputError("to_nifti: the data has no 'affine' attribute; pass affine=")
        affine = np.asarray(attrs["affine"], dtype=float)
    if header is None and "nifti_header" in attrs:
        header = header_from_attrs(attrs)
    out_dtype = np.dtype(array.dtype) if np.dtype(array.dtype).kind in "iu" else np.dtype("<f4")
    hdr = nifti_header(attrs, array.shape, out_dtype, affine, header)

    tmp = path.with_name(path.name + ".partial")
    values = array.data
    # compresslevel 1, nibabel's default: several times faster than 9 for 10-20% larger files
    handle_cm = (
        gzip.open(tmp, "wb", compresslevel=1) if str(path).endswith(".gz") else open(tmp, "wb")
    )
    with handle_cm as handle:
        hdr.write_to(handle)
        handle.write(b"\x00" * max(0, 352 - handle.tell()))  # the extension flag, when not written
        if values.ndim == 3 or not hasattr(values, "chunks"):
            handle.write(np.asarray(values, dtype=out_dtype).tobytes(order="F"))
        else:
            t_chunks = values.chunks[3]
            start = 0
            for size in t_chunks:
                block = dask.compute(values[..., start : start + size])[0]
                handle.write(np.asarray(block, dtype=out_dtype).tobytes(order="F"))
                start += size
    os.replace(tmp, path)
    return path
