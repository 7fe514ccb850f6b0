"""NIfTI runs -> a run or cohort store (zarr v3), written chunk by chunk, resumable and safe.

``convert`` validates every input before it writes anything, then writes each run's ``bold`` one block of whole
volumes at a time (memory: a block, whatever the number of volumes) and records each finished block in a small
progress file. A convert that is killed and started again skips the finished blocks; the store is marked complete
only at its end. Replacing an existing store (``overwrite=True``) writes beside it and swaps at the end, so a
failed run never damages what was there.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import numpy as np
import xarray as xr
import zarr
import zarr.codecs

from daskparcel._checks import expand_glob, same_grid
from daskparcel.errors import InputError
from daskparcel.ingest.nifti import is_nifti_path, open_nifti, run_name
from daskparcel.store.runs import (
    LOCK_NAME,
    PROGRESS_NAME,
    RUNS_GROUP,
    check_output_path,
    disk_error_message,
    file_sha256,
    quiet_zarr,
    replace_dir,
    set_store_info,
    store_info,
    store_lock,
    write_json_atomic,
)

logger = logging.getLogger(__name__)

CODECS = ("blosc-lz4", "zstd", "none")


def codec(name: str) -> list[Any]:
    """zarr v3 compressors for a codec name (``blosc-lz4``: fast, byte-shuffled; ``zstd``: smaller)."""
    if name == "blosc-lz4":
        return [zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")]
    if name == "zstd":
        return [zarr.codecs.ZstdCodec(level=3)]
    if name == "none":
        return []
    raise InputError(f"codec={name!r}: unknown; use one of {', '.join(CODECS)}")


def expand_inputs(inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Paths from files and globs, in the order given (each glob sorted); an empty glob is an error."""
    items = [inputs] if isinstance(inputs, str | os.PathLike) else list(inputs)
    if not items:
        raise InputError("no input given; pass one or more .nii/.nii.gz files or globs")
    paths: list[Path] = []
    for item in items:
        paths.extend(expand_glob(item))
    for path in paths:
        if path.exists() and not path.is_dir() and not is_nifti_path(path):
            raise InputError(f"{path}: not a .nii or .nii.gz file name; give NIfTI BOLD runs")
    return paths


@dataclass
class ConvertResult:
    """What :func:`convert` did: the store, its kind, runs, and whether anything was written."""

    store: Path
    kind: str
    runs: list[str]
    shape: tuple[int, ...]
    chunk_volumes: int
    written_blocks: int
    skipped_blocks: int
    up_to_date: bool = False
    n_nonfinite: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        state = "up to date, nothing written" if self.up_to_date else "written"
        return (
            f"{self.kind} store {self.store}: {len(self.runs)} run(s) of shape {self.shape}, "
            f"{self.chunk_volumes} volumes per chunk, {state} "
            f"({self.written_blocks} blocks written, {self.skipped_blocks} resumed) in {self.seconds:.1f} s"
        )


def _unique_names(paths: Sequence[Path], names: Sequence[str] | None) -> list[str]:
    if names is not None:
        if len(names) != len(paths):
            raise InputError(
                f"names: {len(names)} names for {len(paths)} inputs; give one name per input"
            )
        result = list(names)
    else:
        result = [run_name(p) for p in paths]
    if len(set(result)) != len(result):
        # same file names in different folders (e.g. sub-01/func/bold.nii.gz): prefix the parent folders
        result = [str(p.resolve()).lstrip("/").replace("/", "_") for p in paths]
        result = [run_name(n) for n in result]
    if len(set(result)) != len(result):
        raise InputError("the same input file is given twice; give each run once")
    return result


def convert(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    names: Sequence[str] | None = None,
    chunk_volumes: int | None = None,
    compression: str = "blosc-lz4",
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> ConvertResult:
    """Convert NIfTI runs to a zarr v3 store, chunk by chunk.

    One input gives a run store, several give a cohort store (one group per run; all runs on the same grid).

    Parameters
    ----------
    inputs : path, glob, or a list of them
        4D ``.nii`` / ``.nii.gz`` BOLD runs.
    out : path
        The store folder to write.
    names : list of str, optional
        Run names in a cohort store (default: the file names without suffix).
    chunk_volumes : int, optional
        Whole volumes per chunk; default about ``daskparcel.chunk-mb`` (32) MB per chunk.
    compression : {"blosc-lz4", "zstd", "none"}
        The zarr codec (blosc-lz4 by default: see benchmarks/bench_convert.py).
    overwrite : bool
        Replace an existing store made from other inputs or parameters (written beside it, swapped at the end).
    progress : callable, optional
        Called as ``progress(done_blocks, total_blocks)`` after each block.

    Returns
    -------
    ConvertResult

    Raises
    ------
    InputError
        Bad inputs (missing, not NIfTI, not 4D, different grids), or an output path that holds something else
        or a store made from other inputs (without ``overwrite``). Raised before anything is written.
    """
    start_time = time.perf_counter()
    paths = expand_inputs(inputs)
    run_names = _unique_names(paths, names)
    runs = [open_nifti(p, chunk_volumes=chunk_volumes) for p in paths]
    _check_same_grid(paths, runs)
    codec(compression)
    n_chunk = runs[0]["bold"].data.chunks[3][0]
    kind = "run" if len(runs) == 1 else "cohort"
    identity = {
        "kind": kind,
        "sources": [
            {"name": n, "path": str(p.resolve()), "sha256": file_sha256(p)}
            for n, p in zip(run_names, paths, strict=True)
        ],
        "chunk_volumes": n_chunk,
        "compression": compression,
    }
    out = Path(out)
    check_output_path(out)
    info = store_info(out)
    target = out
    if info is not None and info.get("identity") != identity:
        if not overwrite:
            raise InputError(
                f"{out}: an existing store made from other inputs or parameters; pass --overwrite "
                "(overwrite=True) to replace it, or choose another --out"
            )
        target = out.with_name(out.name + ".daskparcel-new")  # swapped in at the end
    elif info is not None and info.get("complete"):
        logger.info("%s is up to date: nothing to do", out)
        return ConvertResult(
            out, kind, run_names, tuple(runs[0]["bold"].shape), n_chunk, 0, 0, True,
            dict(info.get("n_nonfinite", {})), time.perf_counter() - start_time,
        )  # fmt: skip

    created = not target.exists() or not any(target.iterdir())
    try:
        with store_lock(target):
            result = _write(target, runs, run_names, identity, compression, progress)
    except InputError:
        if created:  # bad data found while reading (e.g. a truncated file): leave nothing behind
            shutil.rmtree(target, ignore_errors=True)
        raise
    except OSError as exc:
        raise InputError(disk_error_message(target, exc)) from exc
    if target != out:
        replace_dir(target, out)
    result.store = out
    result.seconds = time.perf_counter() - start_time
    return result


def _check_same_grid(paths: Sequence[Path], runs: Sequence[xr.Dataset]) -> None:
    ref_shape = runs[0]["bold"].shape[:3]
    ref_affine = np.asarray(runs[0].attrs["affine"])
    for path, ds in zip(paths[1:], runs[1:], strict=True):
        if not same_grid(ds["bold"].shape[:3], ds.attrs["affine"], ref_shape, ref_affine):
            raise InputError(
                f"{path}: its grid (shape {ds['bold'].shape[:3]}) differs from {paths[0]} (shape {ref_shape}) "
                "or its affine does; runs of one cohort store must share a grid: resample them to one "
                "(e.g. nilearn.image.resample_to_img) or convert them to separate stores"
            )


def _write(
    target: Path,
    runs: Sequence[xr.Dataset],
    run_names: Sequence[str],
    identity: dict[str, Any],
    compression: str,
    progress: Callable[[int, int], None] | None,
) -> ConvertResult:
    kind = identity["kind"]
    info = store_info(target)
    progress_path = target / PROGRESS_NAME
    if info is None or info.get("identity") != identity:
        # a fresh store: the root group marked incomplete, then each run's metadata (no data yet)
        for child in target.iterdir():
            if child.name != LOCK_NAME:
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        fresh = {
            "kind": kind,
            "complete": False,
            "identity": identity,
            "runs": list(run_names),
            **({"name": run_names[0]} if kind == "run" else {}),
        }
        with quiet_zarr():
            zarr.open_group(str(target), mode="a", zarr_format=3)  # "w" would delete the lock file
        set_store_info(target, **fresh)
        write_json_atomic(progress_path, {"done": {}})
        for name, ds in zip(run_names, runs, strict=True):
            source = next(s for s in identity["sources"] if s["name"] == name)
            template = xr.Dataset(
                {"bold": ds["bold"]},
                attrs={**ds.attrs, "source_sha256": source["sha256"], "run": name},
            )
            with quiet_zarr():
                template.to_zarr(
                    target,
                    group=None if kind == "run" else f"{RUNS_GROUP}/{name}",
                    mode="a" if kind == "run" else "w",
                    compute=False,
                    zarr_format=3,
                    consolidated=False,
                    encoding={
                        "bold": {
                            "chunks": ds["bold"].data.chunksize,
                            "compressors": codec(compression),
                            "fill_value": np.float32(np.nan),
                        }
                    },
                )
        # a run's to_zarr on the root rewrites the root's attributes: put ours back
        set_store_info(target, **fresh)
    done: dict[str, list[int]] = (
        json.loads(progress_path.read_text())["done"] if progress_path.exists() else {}
    )
    total = sum(len(ds["bold"].data.chunks[3]) for ds in runs)
    finished = sum(len(v) for v in done.values())
    written = 0
    skipped = finished
    n_nonfinite: dict[str, int] = {}
    for name, ds in zip(run_names, runs, strict=True):
        path = "bold" if kind == "run" else f"{RUNS_GROUP}/{name}/bold"
        with quiet_zarr():
            array = zarr.open_array(str(target), path=path, mode="r+", zarr_format=3)
        bold = ds["bold"].data
        run_done = set(done.get(name, []))
        bad = 0
        start = 0
        for index, size in enumerate(bold.chunks[3]):
            if index in run_done:
                start += size
                continue
            # a truncated or corrupt file raises InputError here (NiftiVolumes)
            block = np.asarray(
                dask.compute(bold[..., start : start + size], scheduler="threads")[0]
            )
            bad += int(block.size - np.count_nonzero(np.isfinite(block)))
            array[..., start : start + size] = block
            run_done.add(index)
            done[name] = sorted(run_done)
            write_json_atomic(progress_path, {"done": done})
            written += 1
            start += size
            if progress is not None:
                progress(finished + written, total)
        if bad:
            warnings.warn(
                f"{ds.attrs.get('source', name)}: {bad} non-finite values (NaN/inf) stored as they are; "
                "masking drops voxels that are not finite over the run (nilearn's ensure_finite sets them to 0)",
                UserWarning,
                stacklevel=3,
            )
        n_nonfinite[name] = bad
    set_store_info(target, complete=True, n_nonfinite=n_nonfinite)
    progress_path.unlink(missing_ok=True)
    bold0 = runs[0]["bold"]
    return ConvertResult(
        target, kind, list(run_names), tuple(bold0.shape), bold0.data.chunks[3][0], written, skipped,
        False, n_nonfinite,
    )  # fmt: skip


def print_progress(done: int, total: int) -> None:
    """A one-line progress bar on stderr (used by the CLI)."""
    width = 30
    filled = int(width * done / max(total, 1))
    sys.stderr.write(f"\r[{'#' * filled}{' ' * (width - filled)}] {done}/{total} blocks")
    if done >= total:
        sys.stderr.write("\n")
    sys.stderr.flush()
