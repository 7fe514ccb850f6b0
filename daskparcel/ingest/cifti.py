"""CIFTI-2 dense time series (``*.dtseries.nii``) -> runs with their CIFTI geometry, read lazily.

A ``.dtseries.nii`` path in ``imgs`` (or a ``Cifti2Image`` loaded from one) is a run without meshes (kmeans and hierarchical kmeans only);
:func:`cifti_run` pairs a path with the cortex's meshes (what ward, complete, average and rena need). Only the
header is read when the runs are resolved: the brain model, the series' step, and the meshes' vertex counts are
checked before any data. The data are a dask array whose blocks read the whole series of a block of
grayordinates (``daskparcel.voxel-chunk`` of them: the signals store's voxel blocks), laid out as the surface
runs are: a (grayordinate, 1, 1, time) pseudo-grid (:mod:`daskparcel.geometry.cifti`). A dtseries stores each
grayordinate's series contiguously, so each block is one sequential read and the signals pass reads every byte
of the file once (blocks of frames would each read the whole file: :class:`CiftiFrames`). A run's identity is
its file's sha256 (the meshes do not change its signals).

Grayordinate data that are not a file (e.g. lazy synthetic runs,
:func:`daskparcel.datasets_cifti.synthetic_cifti_cohort`) come as a :class:`CiftiArrayRun`: a dask array with
its brain model and an identity.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from daskparcel.errors import InputError
from daskparcel.geometry.cifti import CiftiGeometry
from daskparcel.store.signals import RunInput

__all__ = [
    "CiftiArrayRun",
    "CiftiRun",
    "cifti_run",
    "is_cifti",
    "is_cifti_image",
    "is_cifti_path",
    "open_cifti_run",
    "with_meshes",
]

CIFTI_SUFFIX = ".dtseries.nii"


def is_cifti_path(item: Any) -> bool:
    """Whether ``item`` is a path with a CIFTI dense time series name (``.dtseries.nii``)."""
    return isinstance(item, str | os.PathLike) and str(item).endswith(CIFTI_SUFFIX)


def is_cifti_image(item: Any) -> bool:
    """Whether ``item`` is a nibabel ``Cifti2Image`` (without importing nibabel's cifti2 module otherwise)."""
    return type(item).__name__ == "Cifti2Image" and type(item).__module__.startswith("nibabel")


def is_cifti(item: Any) -> bool:
    """Whether ``item`` is a CIFTI run: a :class:`CiftiRun` or :class:`CiftiArrayRun`, a ``.dtseries.nii``
    path or a ``Cifti2Image``."""
    return isinstance(item, CiftiRun | CiftiArrayRun) or is_cifti_path(item) or is_cifti_image(item)


def load_cifti_header(path: str | os.PathLike[str], name: str = "imgs") -> Any:
    """The ``Cifti2Image`` of a dense time series (header only), or an InputError saying why it is not one."""
    from nibabel import cifti2

    from daskparcel.ingest.nifti import load_image

    path = Path(path)
    img = load_image(path, f"{name}: {path}", "CIFTI-2 file", "give a .dtseries.nii")
    if not isinstance(img, cifti2.Cifti2Image):
        raise InputError(
            f"{name}: {path}: a {type(img).__name__}, not CIFTI-2; give a CIFTI-2 dense time series"
        )
    axes = [img.header.get_axis(i) for i in range(len(img.shape))]
    if len(axes) != 2 or not isinstance(axes[0], cifti2.SeriesAxis) or not isinstance(axes[1], cifti2.BrainModelAxis):  # fmt: skip
        kinds = " x ".join(type(a).__name__ for a in axes)
        raise InputError(
            f"{name}: {path}: its axes are {kinds}; give a dense time series (SeriesAxis x BrainModelAxis, "
            "a .dtseries.nii)"
        )
    return img


@dataclass(frozen=True, eq=False)
class CiftiRun:
    """A dense time series and the cortex's meshes: what :func:`cifti_run` gives (pass it, or a list of them,
    to :meth:`daskparcel.Parcellations.fit`)."""

    path: Path
    geometry: CiftiGeometry


@dataclass(frozen=True, eq=False)
class CiftiArrayRun:
    """Grayordinate data that are not a file: a lazy ``data`` array (grayordinate, time) on the brain model of
    ``geometry``, with an ``identity`` (what the data are: it keys the signals store, so the same data must
    give the same identity), a ``name`` and the repetition time ``t_r`` (s). Pass it as a run, as a
    :class:`CiftiRun`; nothing is read until the signals pass reads its blocks."""

    data: da.Array
    geometry: CiftiGeometry
    identity: str
    name: str
    t_r: float | None = None


def cifti_run(path: str | os.PathLike[str], meshes: Any = None) -> CiftiRun:
    """A CIFTI-2 dense time series with the meshes of its cortical structures.

    Parameters
    ----------
    path : path
        A ``*.dtseries.nii`` (only its header is read here).
    meshes : nilearn PolyMesh or dict, optional
        ``{"left": mesh, "right": mesh}`` (nilearn meshes or GIfTI ``surf.gii`` paths), the meshes the data
        were sampled on (e.g. fs_LR 32k midthickness). Each must have the vertex count the brain model declares
        for ``CIFTI_STRUCTURE_CORTEX_LEFT`` / ``_RIGHT``. Without them only kmeans and hierarchical kmeans fit.

    Returns
    -------
    CiftiRun
        Pass it (or a list of them) as ``imgs`` to :meth:`daskparcel.Parcellations.fit` or ``transform``.
    """
    img = load_cifti_header(path, "path")
    axis = img.header.get_axis(1)
    geometry = CiftiGeometry.from_axis(axis, meshes, _step(img) or 1.0)
    return CiftiRun(Path(path), geometry)


def with_meshes(items: list[Any], meshes: list[str] | None, flag: str = "--meshes") -> list[Any]:
    """The ``.dtseries.nii`` paths among ``items`` paired with ``meshes`` (left and right ``surf.gii``
    paths) as :class:`CiftiRun` s (what ``daskparcel fit --meshes`` does); checked before any data is read."""
    if not meshes:
        return items
    if not any(is_cifti_path(item) for item in items):
        raise InputError(
            f"{flag}: no .dtseries.nii input to pair them with; give CIFTI dense time series, or drop {flag}"
        )
    for path in meshes:
        if not Path(path).is_file():
            raise InputError(
                f"{flag} {' '.join(map(str, meshes))}: {path} is not a file; give the left and right "
                "surf.gii meshes"
            )
    pair = dict(zip(("left", "right"), meshes, strict=True))
    return [cifti_run(item, meshes=pair) if is_cifti_path(item) else item for item in items]


def _step(img: Any) -> float | None:
    """The repetition time (s) of a dense time series: its series' step when the unit is seconds, else None."""
    series = img.header.get_axis(0)
    step = float(series.step)
    if str(series.unit).upper() != "SECOND" or not np.isfinite(step) or step <= 0:
        return None
    return step


@functools.lru_cache(maxsize=8)
def _proxy(path: str, mtime_ns: int) -> Any:
    # one header parse per file per process: each block then reads its frames through the proxy
    import nibabel as nib

    img: Any = nib.load(path)
    return img.dataobj


class CiftiFrames:
    """An array-like (grayordinate, 1, 1, time) over a dense time series, read on demand (what
    ``da.from_array`` wraps); only the path and the shape are pickled into the graph.

    A dtseries stores each grayordinate's series contiguously (nibabel's proxy is Fortran-ordered (time,
    grayordinate)): grayordinates ``a:b`` over all frames are one contiguous range of the file (how
    :func:`open_cifti_run` chunks a run), while frames ``a:b`` of every grayordinate are one short segment
    per grayordinate spread over the whole file. Either is read by runs of ``GRAYORDINATES_PER_READ``
    grayordinates (one sequential read of their whole series, ~16 MB for 1,000 frames, of which the asked
    frames are kept), 2-3x faster than nibabel's proxy, which seeks once per grayordinate; scaled or
    otherwise laid-out files, and other selections, are read through the proxy.
    """

    GRAYORDINATES_PER_READ = 4096

    def __init__(self, path: str | os.PathLike[str], img: Any) -> None:
        proxy = img.dataobj
        self.path = str(Path(path).resolve())
        self.mtime_ns = os.stat(self.path).st_mtime_ns
        n_time, n_elements = (int(n) for n in img.shape)
        self.shape = (n_elements, 1, 1, n_time)
        self.dtype = np.dtype(np.float32)
        self.ndim = 4
        plain = (
            float(getattr(proxy, "slope", 1.0)) == 1.0
            and float(getattr(proxy, "inter", 0.0)) == 0.0
        )
        layout = getattr(proxy, "order", "F") == "F" and tuple(proxy.shape) == (n_time, n_elements)
        self.raw = (np.dtype(proxy.dtype).str, int(proxy.offset)) if plain and layout else None

    def __getitem__(self, key: Any) -> np.ndarray:
        parts: list[Any] = list(key) if isinstance(key, tuple) else [key]
        elements, y, z, frames = parts + [slice(None)] * (4 - len(parts))
        try:
            if (
                self.raw is not None
                and isinstance(elements, slice)
                and elements.step in (None, 1)
                and isinstance(frames, slice)
            ):
                first, last, _ = elements.indices(self.shape[0])
                out = self._read_frames(frames.indices(self.shape[3]), first, max(first, last))
            else:
                proxy = _proxy(self.path, self.mtime_ns)
                out = np.asarray(proxy[frames, elements], dtype=np.float32).T
        except (EOFError, ValueError, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno is not None:
                raise
            raise InputError(
                f"{self.path}: could not read its frames ({type(exc).__name__}: {exc}); the file is "
                "truncated or corrupt: copy or export it again"
            ) from exc
        return out[:, None, None, :][:, y, z, :]

    def _read_frames(self, frames: tuple[int, int, int], begin: int, end: int) -> np.ndarray:
        """Frames ``start:stop:step`` of grayordinates ``begin:end``, (grayordinate, frame) float32: one
        sequential read of their series."""
        assert self.raw is not None
        dtype, offset = np.dtype(self.raw[0]), self.raw[1]
        n_time = self.shape[3]
        start, stop, step = frames
        kept = range(start, stop, step)
        out = np.empty((end - begin, len(kept)), dtype=np.float32)
        with open(self.path, "rb") as handle:
            handle.seek(offset + begin * n_time * dtype.itemsize)
            for first in range(begin, end, self.GRAYORDINATES_PER_READ):
                last = min(end, first + self.GRAYORDINATES_PER_READ)
                count = (last - first) * n_time
                series = np.fromfile(handle, dtype=dtype, count=count)
                if len(series) != count:
                    raise EOFError(f"the file ends in grayordinate {first + len(series) // n_time}")
                out[first - begin : last - begin] = series.reshape(last - first, n_time)[:, start:stop:step]  # fmt: skip
        return out


def open_cifti_run(item: Any, index: int) -> RunInput:
    """A CIFTI run as a run with its CIFTI geometry: a :class:`CiftiRun`, a ``.dtseries.nii`` path (header read
    only) or a :class:`CiftiArrayRun`.

    Its ``bold`` is (grayordinate, 1, 1, time), chunked by blocks of ``daskparcel.voxel-chunk`` grayordinates
    over the whole run (each the series of a block of grayordinates: one sequential read of the file, and the
    signals store's voxel blocks); a :class:`CiftiArrayRun` keeps its own chunks.

    Parameters
    ----------
    item : CiftiRun, CiftiArrayRun, path, or a Cifti2Image loaded from a .dtseries.nii (read again from its file)
    index : int
        Position among the runs (for messages).
    """
    from daskparcel import config
    from daskparcel.ingest.nifti import run_name
    from daskparcel.store.runs import file_sha256

    if isinstance(item, CiftiArrayRun):
        return _array_run(item, index)
    if is_cifti_image(item):  # read from its file, lazily as a path is
        if not item.get_filename() or not str(item.get_filename()).endswith(CIFTI_SUFFIX):
            raise InputError(
                f"imgs[{index}]: a Cifti2Image not loaded from a .dtseries.nii file; save it as one "
                "(nibabel.save(img, 'run.dtseries.nii')) and give the path"
            )
        item = item.get_filename()
    path = Path(item.path if isinstance(item, CiftiRun) else item)
    img = load_cifti_header(path, f"imgs[{index}]")
    if isinstance(item, CiftiRun):
        geometry = item.geometry
    else:
        geometry = CiftiGeometry.from_axis(img.header.get_axis(1), None, _step(img) or 1.0)
    frames = CiftiFrames(path, img)
    if frames.shape[3] < 1:
        raise InputError(f"imgs[{index}]: {path}: no frames; give a dense time series with frames")
    block = max(1, min(frames.shape[0], int(config.get("voxel-chunk"))))
    bold = da.from_array(frames, chunks=(block, 1, 1, -1), meta=np.empty((0, 0, 0, 0), np.float32))
    name = run_name(path).removesuffix(".dtseries")
    t_r = _step(img)
    identity = f"cifti:sha256:{file_sha256(path)}"
    return RunInput(name, _dataset(bold, geometry, str(path), t_r), identity, name, t_r=t_r, geometry=geometry)  # fmt: skip


def _array_run(item: CiftiArrayRun, index: int) -> RunInput:
    """A :class:`CiftiArrayRun` as a run, after checking its array against its brain model (nothing read)."""
    data = item.data
    if not isinstance(data, da.Array) or data.ndim != 2:
        raise InputError(
            f"imgs[{index}]: {item.name}: its data are a {type(data).__name__} of {getattr(data, 'ndim', '?')} "
            "dimensions; give a 2D dask array (grayordinate, time)"
        )
    if data.shape[0] != item.geometry.n_elements or data.shape[1] < 1:
        raise InputError(
            f"imgs[{index}]: {item.name}: data of shape {data.shape} for a brain model of "
            f"{item.geometry.n_elements} grayordinates; give (grayordinate, time) data on its brain model"
        )
    bold = data.astype(np.float32)[:, None, None, :]
    ds = _dataset(bold, item.geometry, item.identity, item.t_r)
    return RunInput(item.name, ds, item.identity, item.name, t_r=item.t_r, geometry=item.geometry)


def _dataset(bold: da.Array, geometry: CiftiGeometry, source: str, t_r: float | None) -> xr.Dataset:
    ds = xr.Dataset(
        {"bold": (("x", "y", "z", "t"), bold)},
        attrs={
            "affine": np.eye(4).tolist(),
            "geometry": "cifti",
            "brain_model": geometry.describe(),
            "source": source,
        },
    )
    if t_r is not None:
        ds.attrs["t_r"] = t_r
    return ds


def check_one_brain_model(runs: list[RunInput]) -> None:
    """Refuse CIFTI runs whose brain models differ (other grayordinates, or other ones in another order)."""
    cifti = [r for r in runs if isinstance(r.geometry, CiftiGeometry)]
    if not cifti:
        return
    ref = cifti[0]
    for run in cifti[1:]:
        if not ref.geometry.same_mesh(run.geometry):
            raise InputError(
                f"imgs: {run.data.attrs['source']} has another brain model ({run.geometry.describe()}) than "
                f"{ref.data.attrs['source']} ({ref.geometry.describe()}), or other meshes; give runs on one "
                "brain model (resample them, e.g. with wb_command -cifti-resample)"
            )
