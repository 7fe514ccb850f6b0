"""Lazy NIfTI -> dask-backed xarray.

A 4D NIfTI file becomes an :class:`xarray.Dataset` with one variable ``bold(x, y, z, t)`` (float32), backed by
dask chunks of whole volumes that are read through nibabel's array proxy when (and only when) computed: the whole
file is never in memory. Scaling (``scl_slope`` / ``scl_inter``) is applied exactly as
``nibabel.load(path).get_fdata(dtype=np.float32)`` applies it.

``.nii.gz`` files are read with ``indexed_gzip`` (a dependency): each worker process keeps its opened images in a
small cache so that its seek index is reused from one block to the next instead of inflating the file from the
start for every block. A gzip stream can only be inflated in order, though, so passes that read every volume of a
run (the signals store) use :meth:`NiftiVolumes.stream` instead: one sequential read of the file with ISA-L's
inflate (``isal``, ~2x zlib's speed) in a background thread, so decompressing overlaps with the caller's work and
runs are read in parallel, one task each.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import logging
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import nibabel as nib
import numpy as np
import xarray as xr
from nibabel.arrayproxy import ArrayProxy
from nibabel.volumeutils import apply_read_scaling

from daskparcel import config
from daskparcel.errors import InputError
from daskparcel.store.runs import header_codec_attrs

logger = logging.getLogger(__name__)

DIMS = ("x", "y", "z", "t")
NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti_path(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` has a NIfTI file name (``.nii`` or ``.nii.gz``)."""
    return str(path).endswith(NIFTI_SUFFIXES)


def image_file(img: Any) -> str | None:
    """The file a nibabel image reads its data from, untouched (its proxy reads the file: not loaded into
    memory, not modified), else None."""
    filename = img.get_filename()
    if filename and hasattr(getattr(img, "dataobj", None), "offset") and os.path.exists(filename):
        return str(filename)
    return None


def run_name(path: str | os.PathLike[str]) -> str:
    """The name of a run: its file name without the NIfTI suffix."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def load_image(path: Path, where: str, kind: str, fix: str, hint: str = "") -> Any:
    """``nib.load(path)`` (headers only; data stays on disk), or an InputError beginning with ``where``: no such
    file, or not a readable ``kind`` (then ``fix`` says what to give)."""
    if not path.exists():
        raise InputError(f"{where}: no such file; check the path{' ' + hint if hint else ''}")
    try:
        return nib.load(path)
    except Exception as exc:  # nibabel raises several types for unreadable files
        raise InputError(
            f"{where}: not a readable {kind} ({type(exc).__name__}: {exc}); {fix}"
        ) from exc


def load_header(path: str | os.PathLike[str]) -> nib.Nifti1Image:
    """Load a 4D NIfTI image's header (no data read), or raise :class:`InputError` saying why it cannot be.

    The image is refused when the path is missing, is not a NIfTI file, is not 4D (a 5D image with singleton
    trailing dimensions is accepted, as nilearn does), or has no volume.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not a NIfTI file; give a .nii or .nii.gz file")
    img = load_image(
        path,
        str(path),
        "NIfTI image",
        "give a 4D .nii or .nii.gz BOLD file",
        "(and the glob, if one was given)",
    )
    if isinstance(img, nib.Cifti2Image):  # not convertible to a volume: fitted from the file itself
        raise InputError(
            f"{path}: is a CIFTI-2 file, not a 4D NIfTI volume series; fit it as it is (daskparcel fit, "
            "Parcellations.fit or daskparcel.cifti_run read .dtseries.nii files lazily); convert takes NIfTI"
        )
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise InputError(
            f"{path}: is a {type(img).__name__}, not NIfTI; convert it to NIfTI first (e.g. with dcm2niix or nibabel)"
        )
    shape = img.shape
    if len(shape) == 3:
        raise InputError(
            f"{path}: is a 3D image {shape}, not a 4D BOLD series; give the 4D run "
            "(a single volume cannot be cleaned or parcellated over time)"
        )
    if len(shape) > 4 and all(s == 1 for s in shape[4:]):
        shape = shape[:4]  # trailing singleton dimensions: read as 4D (NiftiVolumes indexes them)
    if len(shape) != 4:
        raise InputError(
            f"{path}: has {len(shape)} dimensions {shape}; a BOLD run must be 4D (x, y, z, t). "
            "Split it into 4D runs (e.g. with nibabel.funcs.four_to_three / concat_images)"
        )
    if not str(path).endswith(".gz"):
        proxy: Any = img.dataobj
        expected = int(proxy.offset) + int(np.prod(proxy.shape)) * np.dtype(proxy.dtype).itemsize
        if path.stat().st_size < expected:
            raise InputError(
                f"{path}: truncated file ({path.stat().st_size} bytes, its header needs {expected}); "
                "copy or export it again"
            )
    if shape[3] < 1 or min(shape[:3]) < 1:
        raise InputError(f"{path}: empty image of shape {shape}; give a BOLD run with volumes")
    return img


def repetition_time(header: nib.Nifti1Header) -> tuple[float | None, str]:
    """TR in seconds from a NIfTI header, and a note on where it came from.

    The 4th zoom is converted from its ``xyzt_units`` (sec, msec or usec). A header with no time unit gives
    ``None``: many tools write ``pixdim[4] = 1`` with no unit as a placeholder, and filtering with a wrong TR
    would be silently wrong (pass ``t_r`` instead). A zero or missing value gives ``None`` too.
    """
    zooms = header.get_zooms()
    if len(zooms) < 4:
        return None, "header has no time step"
    value = float(zooms[3])
    if not np.isfinite(value) or value <= 0:
        return None, "header has no repetition time (pixdim[4] is 0)"
    unit = header.get_xyzt_units()[1]
    scale = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6}.get(unit)
    if scale is None:
        return (
            None,
            f"header has pixdim[4]={value} but no time unit ({unit!r}): TR unknown, pass t_r",
        )
    return value * scale, f"header ({unit})"


@functools.lru_cache(maxsize=8)
def _raw_proxy(
    path: str, mtime_ns: int, shape: tuple[int, ...], dtype: str, offset: int
) -> ArrayProxy:
    # One unscaled proxy per file per process, kept open so indexed_gzip's seek points are reused.
    return ArrayProxy(path, (shape, np.dtype(dtype), offset, 1.0, 0.0), keep_file_open=True)


class NiftiVolumes:
    """An array-like over a NIfTI file's volumes, read on demand (what ``da.from_array`` wraps).

    Only the path and the header's numbers are pickled into the graph, so it works on any scheduler. Values are
    scaled to float32 exactly as ``nibabel``'s ``get_fdata(dtype=np.float32)`` does.
    """

    def __init__(self, path: str | os.PathLike[str], img: nib.Nifti1Image | None = None) -> None:
        img = load_header(path) if img is None else img
        proxy: Any = img.dataobj
        self.path = str(Path(path).resolve())
        self.mtime_ns = os.stat(self.path).st_mtime_ns
        self.shape: tuple[int, ...] = tuple(int(s) for s in img.shape[:4])
        self.file_shape: tuple[int, ...] = tuple(int(s) for s in proxy.shape)
        self.raw_dtype = np.dtype(proxy.dtype).str
        self.offset = int(proxy.offset)
        self.slope = np.asanyarray(proxy.slope)
        self.inter = np.asanyarray(proxy.inter)
        self.dtype = np.dtype(np.float32)
        self.ndim = 4

    def __getitem__(self, key: Any) -> np.ndarray:
        proxy = _raw_proxy(self.path, self.mtime_ns, self.file_shape, self.raw_dtype, self.offset)
        if len(self.file_shape) > 4:  # squeezed 5D image: index the singleton trailing axes
            if not isinstance(key, tuple):
                key = (key,)
            key = (*key, *([0] * (len(self.file_shape) - 4)))
        try:
            raw = proxy[key]
        except (EOFError, zlib.error, ValueError, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno is not None:
                raise  # a system error (e.g. a missing disk), not the file's content
            reason = " ".join(str(exc).split())
            raise InputError(
                f"{self.path}: could not read its volumes ({type(exc).__name__}: {reason}); "
                "the file is truncated or corrupt: copy or export it again"
            ) from exc
        return scale_like_nibabel(raw, self.slope, self.inter)

    @property
    def gzipped(self) -> bool:
        """Whether the file is gzip-compressed (read in order only: see :meth:`stream`)."""
        return _is_gzip(self.path)

    def stream(self, volumes_per_block: int) -> Iterator[tuple[int, np.ndarray]]:
        """Every volume, in order, by blocks: ``(first volume index, block (x, y, z, n) float32)``.

        One sequential read of the file (gzip inflated by ISA-L in a background thread when ``isal`` is installed,
        else by zlib), so memory is one block; values equal :meth:`__getitem__`'s (nibabel's scaling).
        """
        n_volumes = self.shape[3]
        spatial = self.file_shape[:3]
        dtype = np.dtype(self.raw_dtype)
        volume_bytes = int(np.prod(spatial)) * dtype.itemsize
        with contextlib.ExitStack() as stack:
            handle = stack.enter_context(_open_stream(self.path))
            try:
                skipped = handle.read(self.offset)
                if len(skipped) != self.offset:
                    raise EOFError("the file ends before its data")
                for start in range(0, n_volumes, volumes_per_block):
                    n = min(volumes_per_block, n_volumes - start)
                    buffer = handle.read(n * volume_bytes)
                    if len(buffer) != n * volume_bytes:
                        raise EOFError(
                            f"the file ends at volume {start + len(buffer) // volume_bytes}"
                        )
                    raw = np.frombuffer(buffer, dtype=dtype).reshape((*spatial, n), order="F")
                    yield start, scale_like_nibabel(raw, self.slope, self.inter)
            except (EOFError, zlib.error, gzip.BadGzipFile, ValueError, OSError) as exc:
                if isinstance(exc, OSError) and not isinstance(exc, gzip.BadGzipFile) and exc.errno:
                    raise
                reason = " ".join(str(exc).split())
                raise InputError(
                    f"{self.path}: could not read its volumes ({type(exc).__name__}: {reason}); "
                    "the file is truncated or corrupt: copy or export it again"
                ) from exc


def _is_gzip(path: str) -> bool:
    with open(path, "rb") as handle:
        return handle.read(2) == b"\x1f\x8b"


def _open_stream(path: str) -> Any:
    """A sequential binary reader of ``path``, inflating gzip (ISA-L in a thread if available)."""
    if not _is_gzip(path):
        return open(path, "rb", buffering=1 << 22)
    try:
        from isal import igzip_threaded
    except ImportError:  # pragma: no cover - isal is a dependency; zlib is the fallback
        return gzip.open(path, "rb")
    return igzip_threaded.open(path, "rb", threads=1, block_size=1 << 22)


def scale_like_nibabel(raw: np.ndarray, slope: Any, inter: Any) -> np.ndarray:
    """Apply ``scl_slope`` / ``scl_inter`` to float32 with nibabel's own casting rules (``get_fdata``)."""
    dtype = np.dtype(np.float32)
    if np.can_cast(slope, dtype):
        slope = slope.astype(dtype)
    if np.can_cast(inter, dtype):
        inter = inter.astype(dtype)
    scaled = apply_read_scaling(raw, slope, inter)
    return (
        np.asarray(scaled)
        .astype(np.promote_types(scaled.dtype, dtype), copy=False)
        .astype(dtype, copy=False)
    )


def volumes_per_chunk(shape: tuple[int, ...], chunk_mb: float | None = None) -> int:
    """How many whole float32 volumes make a chunk of about ``chunk_mb`` MB (config ``daskparcel.chunk-mb``)."""
    if chunk_mb is None:
        chunk_mb = float(config.get("chunk-mb"))
    volume_bytes = int(np.prod(shape[:3])) * 4
    return int(max(1, min(shape[3], (chunk_mb * 1e6) // volume_bytes)))


def header_attrs(
    img: nib.Nifti1Image, path: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """The attributes a run keeps from its NIfTI header: affine, voxel sizes, TR and the full header."""
    header = img.header
    t_r, t_r_note = repetition_time(header)
    attrs: dict[str, Any] = {
        "affine": np.asarray(img.affine, dtype=float).tolist(),
        "voxel_size": [float(z) for z in header.get_zooms()[:3]],
        "t_r": t_r,
        "t_r_source": t_r_note,
        **header_codec_attrs(header),
    }
    if path is not None:
        attrs["source"] = str(Path(path).resolve())
    return attrs


def open_nifti(
    path: str | os.PathLike[str],
    *,
    chunk_volumes: int | None = None,
) -> xr.Dataset:
    """Open a 4D NIfTI run lazily as an xarray Dataset.

    Parameters
    ----------
    path : str or path-like
        A 4D ``.nii`` or ``.nii.gz`` file.
    chunk_volumes : int, optional
        Volumes per dask chunk; by default about ``daskparcel.chunk-mb`` (32) MB of float32 per chunk.

    Returns
    -------
    xarray.Dataset
        ``bold(x, y, z, t)`` float32, dask-backed, chunked in whole volumes; attributes ``affine`` (nibabel's best
        affine, 4x4 list), ``voxel_size``, ``t_r`` (seconds or None) and ``t_r_source``, ``nifti_header`` (the
        header block, base64) and ``source``. Nothing is read but the header.

    Raises
    ------
    InputError
        Missing or unreadable file, not NIfTI, not 4D.
    """
    img = load_header(path)
    volumes = NiftiVolumes(path, img)
    n = chunk_volumes or volumes_per_chunk(volumes.shape)
    if n < 1:
        raise InputError(f"chunk_volumes={chunk_volumes}: must be >= 1")
    token = dask.base.tokenize(volumes.path, volumes.mtime_ns, volumes.shape, n)
    data = da.from_array(
        volumes,
        chunks=(*volumes.shape[:3], n),
        name=f"nifti-{run_name(path)}-{token}",
        asarray=False,
        lock=False,
        fancy=False,
        meta=np.empty((0, 0, 0, 0), dtype=np.float32),
    )
    attrs = header_attrs(img, path)
    return xr.Dataset({"bold": (DIMS, data)}, attrs=attrs)
