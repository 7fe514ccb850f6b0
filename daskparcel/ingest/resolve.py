"""What the user passed as ``imgs`` -> runs: lazy Datasets with an identity, confounds and sample masks.

Accepted: NIfTI paths and globs, nibabel images, xarray Datasets (``bold(x, y, z, t)`` with an ``affine``
attribute), run and cohort stores, BIDS derivatives folders (fMRIPrep) and :class:`BidsRun` lists, or a list of
any of these. Each run gets an identity (its file's sha256, its store's identity or a dask token) that keys the
caches: the same data give the same signals store.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import nibabel as nib
import numpy as np
import xarray as xr

from daskparcel._checks import expand_glob, same_grid, sample_mask_indices
from daskparcel._dask import user_array
from daskparcel.errors import InputError
from daskparcel.ingest.bids import BidsRun, find_bids_runs
from daskparcel.ingest.cifti import CiftiRun, check_one_brain_model, is_cifti, open_cifti_run
from daskparcel.ingest.nifti import image_file, is_nifti_path, open_nifti, run_name
from daskparcel.ingest.surface import (
    check_not_mixed,
    check_one_geometry,
    is_surface_image,
    surface_run,
)
from daskparcel.store.signals import RunInput


def prepare_runs(
    imgs: Any,
    confounds: Any = None,
    sample_mask: Any = None,
    *,
    chunk_volumes: int | None = None,
    confounds_columns: Sequence[str] | None = None,
) -> list[RunInput]:
    """Resolve ``imgs`` into runs on one grid, with each run's confounds and sample mask attached.

    Parameters
    ----------
    imgs : path, glob, nibabel image, xarray Dataset, store path, BIDS folder, or a list of them
    confounds, sample_mask : one per run (a list), or one value for a single run, optional
    chunk_volumes : int, optional
        Volumes per chunk when reading NIfTI files.
    confounds_columns : list of str, optional
        Columns (names or globs) taken from confounds files.
    """
    runs = resolve_runs(imgs, chunk_volumes=chunk_volumes)
    confounds_list = per_run("confounds", confounds, len(runs))
    masks_list = per_run("sample_mask", sample_mask, len(runs))
    ref = runs[0]
    ref_shape = ref.data["bold"].shape[:3]
    for run, conf, smask in zip(runs, confounds_list, masks_list, strict=True):
        shape = run.data["bold"].shape[:3]
        if not same_grid(shape, run.data.attrs["affine"], ref_shape, ref.data.attrs["affine"]):
            raise InputError(
                f"{run.name}: its grid {shape} differs from {ref.name}'s {ref_shape} (or its affine "
                "does); resample the runs to one grid (nilearn.image.resample_to_img)"
            )
        if run.n_time < 2:
            raise InputError(
                f"{run.nifti or run.data.attrs.get('source') or run.name}: has {run.n_time} volume; "
                "a run needs at least 2 volumes to be cleaned and parcellated over time; drop it"
            )
        if conf is not None:
            run.confounds = run_confounds(conf, run, confounds_columns)
        if smask is not None:
            run.sample_mask = sample_mask_indices(smask, run.n_time, f"sample_mask of {run.name}")
    return runs


def run_confounds(
    confounds: Any, run: RunInput, columns: Sequence[str] | None = None
) -> np.ndarray:
    """One run's confounds as an array (a file is named by its path in messages, an array by its run)."""
    from daskparcel.ingest.confounds import load_confounds

    source = str(confounds) if isinstance(confounds, str | os.PathLike) else f"of {run.name}"
    return load_confounds(confounds, run.n_time, columns=columns, source=source)


def repetition_time(runs: Sequence[RunInput], t_r: float | None, *, needed: bool) -> float | None:
    """The TR to clean with: ``t_r`` when given, else the runs' (one value) when filtering ``needed`` it."""
    if t_r is not None:
        return float(t_r)
    if not needed:
        return None
    missing = [r.name for r in runs if r.t_r is None]
    if missing:
        raise InputError(
            f"{missing[0]}: low_pass/high_pass need the repetition time and its header has none; pass t_r="
        )
    values = {float(r.t_r) for r in runs if r.t_r is not None}
    if len(values) > 1:
        raise InputError(
            f"runs have different TRs {sorted(values)}; pass t_r= or fit them separately"
        )
    return float(values.pop())


def per_run(name: str, value: Any, n_runs: int) -> list[Any]:
    """One value per run: a list of ``n_runs`` items, or a single value for a single run."""
    if value is None:
        return [None] * n_runs
    if isinstance(value, list | tuple) and not (
        name == "sample_mask" and len(value) > 0 and np.isscalar(value[0])
    ):
        if len(value) != n_runs:
            raise InputError(
                f"{name}: a list of {len(value)} items for {n_runs} runs; give one per run (None for none)"
            )
        return list(value)
    if n_runs != 1:
        raise InputError(f"{name}: one value for {n_runs} runs; give a list with one per run")
    return [value]


def resolve_runs(imgs: Any, *, chunk_volumes: int | None = None) -> list[RunInput]:
    """Turn what a user passes as ``imgs`` into runs (lazy Datasets with an identity for the cache)."""
    from daskparcel.store.runs import open_runs, prefetch_sha256, store_info

    items = list(imgs) if isinstance(imgs, list | tuple) else [imgs]
    if not items:
        raise InputError("imgs is empty; give one or more BOLD runs")
    check_not_mixed(items)  # before any file is hashed or read
    prefetch_sha256([path for path in map(_file_behind, items) if path is not None])
    runs: list[RunInput] = []
    for item in items:
        if is_cifti(item):  # before the NIfTI paths: a .dtseries.nii is a CIFTI-2 file
            runs.append(open_cifti_run(item, len(runs)))
        elif isinstance(item, BidsRun):
            runs.append(
                nifti_run(
                    item.path, chunk_volumes, name=item.name, subject=item.subject, t_r=item.t_r
                )
            )
        elif isinstance(item, str | os.PathLike):
            text = str(item)
            path = Path(text)
            if glob.has_magic(text):
                runs.extend(resolve_runs(expand_glob(text), chunk_volumes=chunk_volumes))
            elif path.is_dir() and store_info(path) is not None:
                info = store_info(path) or {}
                for name, ds in open_runs(path):
                    runs.append(
                        RunInput(
                            name,
                            ds,
                            f"store:{ds.attrs.get('source_sha256', '')}:{name}:{info.get('identity')}",
                            name,
                            t_r=ds.attrs.get("t_r"),
                        )
                    )
            elif path.is_dir() and any(path.glob("sub-*")):
                runs.extend(resolve_runs(find_bids_runs(path), chunk_volumes=chunk_volumes))
            elif path.is_dir():
                raise InputError(
                    f"{path}: a folder that is neither a daskparcel store nor a BIDS derivatives folder; "
                    "give NIfTI files, a store (daskparcel convert) or an fMRIPrep folder"
                )
            else:
                if path.exists() and not is_nifti_path(path):
                    raise InputError(
                        f"{path}: not a .nii or .nii.gz file name; give NIfTI BOLD runs"
                    )
                runs.append(nifti_run(path, chunk_volumes))
        elif isinstance(item, nib.spatialimages.SpatialImage):
            runs.append(_run_from_image(item, len(runs), chunk_volumes))
        elif is_surface_image(item):
            runs.append(surface_run(item, len(runs), chunk_volumes))
        elif isinstance(item, xr.Dataset):
            if (
                "bold" not in item
                or set(item["bold"].dims) != {"x", "y", "z", "t"}
                or "affine" not in item.attrs
            ):
                raise InputError(
                    "an xarray Dataset given as a run needs a variable bold(x, y, z, t) and an 'affine' attribute "
                    "(as daskparcel.open_nifti / open_store give)"
                )
            ds = item if isinstance(item["bold"].data, da.Array) else _chunked_in_place(item)
            name = str(ds.attrs.get("run", f"run-{len(runs)}"))
            runs.append(
                RunInput(
                    name,
                    ds,
                    "dask:" + dask.base.tokenize(ds["bold"].data),
                    name,
                    t_r=ds.attrs.get("t_r"),
                )
            )
        else:
            raise InputError(
                f"imgs: cannot use a {type(item).__name__} as a run; give NIfTI paths, globs, nibabel images, "
                "xarray Datasets, stores, a BIDS folder, nilearn SurfaceImages or CIFTI .dtseries.nii files"
            )
    check_one_brain_model(runs)
    check_one_geometry(runs)
    # the same data twice would count a run twice: refused, as convert does
    seen: dict[str, RunInput] = {}
    for run in runs:
        if run.identity in seen:
            raise InputError(
                f"{run.nifti or run.name}: given twice (same file or same data as "
                f"{seen[run.identity].nifti or seen[run.identity].name}); give each run once"
            )
        seen[run.identity] = run
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        for index, run in enumerate(runs):
            run.name = f"{index:03d}-{run.name}"
    return runs


def _file_behind(item: Any) -> str | os.PathLike[str] | None:
    """The file a run item reads whole to hash it (a path, a BIDS or CIFTI run, an image loaded from a file)."""
    if isinstance(item, BidsRun | CiftiRun):
        return item.path
    if isinstance(item, str | os.PathLike):
        return item
    if isinstance(item, nib.spatialimages.SpatialImage):
        return _nifti_behind(item)  # an image whose data are in memory hashes them instead
    return None


def _nifti_behind(img: Any) -> str | None:
    """The NIfTI file an image reads untouched (then it is that file's run), else None."""
    filename = image_file(img)
    return filename if filename is not None and is_nifti_path(filename) else None


def nifti_run(
    path: str | os.PathLike[str],
    chunk_volumes: int | None = None,
    *,
    name: str | None = None,
    subject: str | None = None,
    t_r: float | None = None,
) -> RunInput:
    """A NIfTI file as a run: opened lazily, identified by its sha256, named by its file name (or ``name``),
    its TR from ``t_r`` (e.g. a BIDS sidecar's) or its header."""
    from daskparcel.store.runs import file_sha256

    ds = open_nifti(path, chunk_volumes=chunk_volumes)
    name = name or run_name(path)
    return RunInput(
        name,
        ds,
        "sha256:" + file_sha256(path),
        subject or name,
        t_r=t_r or ds.attrs.get("t_r"),
        nifti=str(path),
    )


def _run_from_image(img: Any, index: int, chunk_volumes: int | None) -> RunInput:
    filename = _nifti_behind(img)
    if filename is not None:
        return nifti_run(filename, chunk_volumes)
    if len(img.shape) != 4:
        raise InputError(
            f"imgs[{index}]: a {len(img.shape)}D image; give 4D BOLD runs (a single volume cannot be parcellated)"
        )
    from daskparcel.ingest.nifti import header_attrs, volumes_per_chunk

    data = np.asarray(img.dataobj, dtype=np.float32)
    n = chunk_volumes or volumes_per_chunk(data.shape)
    attrs = header_attrs(img)
    bold, token = user_array(data, (*data.shape[:3], n), "image")
    ds = xr.Dataset({"bold": (("x", "y", "z", "t"), bold)}, attrs=attrs)
    name = f"image-{index}"
    return RunInput(name, ds, "array:" + token, name, t_r=attrs.get("t_r"))


def _chunked_in_place(ds: xr.Dataset) -> xr.Dataset:
    """A Dataset whose bold is in memory, with bold chunked by 16 volumes as views of its data (``.chunk``
    would copy the whole run)."""
    bold = ds["bold"]
    data = np.asarray(bold.data)
    chunks = tuple(16 if dim == "t" else -1 for dim in bold.dims)
    views, _ = user_array(data, chunks, "dataset")
    return ds.assign(bold=(bold.dims, views, bold.attrs))
