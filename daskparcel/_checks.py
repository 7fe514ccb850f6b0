"""Argument and grid checks shared by the package: one rule, one message, one tolerance each.

Every check raises :class:`~daskparcel.errors.InputError` naming the input, what is wrong and what to do.
"""

from __future__ import annotations

import glob
import numbers
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from daskparcel.errors import InputError

#: Two affines within this (absolute, in mm) describe the same grid: NIfTI headers store the affine in
#: float32, so copies of one grid written by different tools differ in the last bits.
GRID_ATOL = 1e-4


def same_grid(shape_a: Sequence[int], affine_a: Any, shape_b: Sequence[int], affine_b: Any) -> bool:
    """Whether two images are on one grid: equal spatial shapes and affines within :data:`GRID_ATOL`."""
    return tuple(int(s) for s in shape_a) == tuple(int(s) for s in shape_b) and bool(
        np.allclose(np.asarray(affine_a, float), np.asarray(affine_b, float), atol=GRID_ATOL)
    )


def is_int(value: Any) -> bool:
    """Whether ``value`` is an integer (numpy's included), not a boolean."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(name: str, value: Any, minimum: int, hint: str = "") -> int:
    """``value`` as an int >= ``minimum`` (booleans refused), else an InputError ending with ``hint``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        end = f"; {hint}" if hint else ""
        raise InputError(f"{name}={value!r}: must be an integer >= {minimum}{end}")
    return int(value)


def check_n_clusters(n_clusters: Any, n_voxels: int, name: str = "n_clusters") -> int:
    """A number of clusters from 1 to the number of voxels to cluster."""
    k = check_int(name, n_clusters, 1, f"pass {name}=50 (nilearn's default) or another integer")
    if k > n_voxels:
        raise InputError(
            f"{name}={k}: larger than the {n_voxels} voxels to cluster; ask for fewer parcels "
            f"({name} <= {n_voxels}) or use a larger mask"
        )
    return k


def sample_mask_indices(sample_mask: Any, n_time: int, source: str = "sample_mask") -> np.ndarray:
    """The indices of the volumes a ``sample_mask`` keeps (a boolean mask or increasing int indices)."""
    arr = np.asarray(sample_mask)
    if arr.ndim != 1:
        raise InputError(
            f"{source} of shape {arr.shape}: must be 1D, a boolean mask of the run's {n_time} "
            "time points or the int indices of the volumes to keep"
        )
    if arr.dtype == bool:
        if arr.size != n_time:
            raise InputError(
                f"{source} is a boolean mask of {arr.size} time points but the run has "
                f"{n_time}: pass one value per time point (True = keep)"
            )
        idx = np.flatnonzero(arr)
    elif arr.size == 0 or np.issubdtype(arr.dtype, np.integer):
        idx = arr.astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= n_time):
            bad = idx[(idx < 0) | (idx >= n_time)]
            raise InputError(
                f"{source}: indices out of range for {n_time} volumes ({bad[:10].tolist()} not in "
                f"[0, {n_time - 1}]); fix the indices"
            )
        if np.any(np.diff(idx) <= 0):
            raise InputError(
                f"{source}: indices must be strictly increasing (each kept volume once, in "
                "order); pass np.unique(sample_mask)"
            )
    else:
        raise InputError(
            f"{source} of dtype {arr.dtype}: pass a boolean mask (True = keep) or int indices"
        )
    if idx.size == 0:
        raise InputError(
            f"{source} removes every volume of the run: keep at least one (True = keep)"
        )
    return idx


# ------------------------------------------------------------------------ declared parameter checks
Check = Callable[[str, Any], None]


def one_of(*choices: Any) -> Check:
    """A parameter that must be one of ``choices``."""

    def check(name: str, value: Any) -> None:
        if not any(value is c or (type(value) is type(c) and value == c) for c in choices):
            shown = ", ".join(repr(c) for c in choices)
            raise InputError(f"{name}={value!r}: unknown; pass one of {shown}")

    return check


def member_of(collection: Any) -> Check:
    """A parameter that must be a key of ``collection`` (a registry: checked against its current keys)."""

    def check(name: str, value: Any) -> None:
        if not isinstance(value, str) or value not in collection:
            raise InputError(f"{name}={value!r}: unknown; pass one of {', '.join(collection)}")

    return check


def integer(minimum: int) -> Check:
    """An integer parameter >= ``minimum``."""

    def check(name: str, value: Any) -> None:
        check_int(name, value, minimum)

    return check


def positive_or_none(name: str, value: Any) -> None:
    """A positive number, or None."""
    if value is not None and (
        not isinstance(value, numbers.Real) or isinstance(value, bool) or value <= 0
    ):
        raise InputError(f"{name}={value!r}: must be a positive number or None")


def boolean(name: str, value: Any) -> None:
    """True or False (numpy's booleans too; not 0/1 or strings such as "false")."""
    if not isinstance(value, bool | np.bool_):
        raise InputError(f"{name}={value!r}: must be True or False")


def mapping_or_none(name: str, value: Any) -> None:
    """A dict of keyword arguments, or None."""
    if value is not None and not isinstance(value, dict):
        raise InputError(f"{name}={value!r}: must be a dict of keyword arguments or None")


def fwhm(name: str, value: Any) -> None:
    """A smoothing FWHM in mm: None, "fast", a number >= 0, or one per axis (None entries allowed)."""
    if value is None or (isinstance(value, str) and value == "fast"):
        return
    try:
        items = value if isinstance(value, list | tuple) else [value]
        values = np.asarray([0.0 if v is None else v for v in items], dtype=float)
    except (TypeError, ValueError):
        raise InputError(
            f"{name}={value!r}: not a number; pass the FWHM in mm (e.g. 4.0), 0 or None"
        ) from None
    if values.size not in (1, 3) or not np.all(np.isfinite(values)):
        raise InputError(f"{name}={value!r}: pass one FWHM in mm or one per axis (3 values)")
    if np.any(values < 0):
        raise InputError(f"{name}={value}: must be >= 0 (mm); pass 0 or None for no smoothing")


def check_params(params: dict[str, Any], checks: dict[str, Check]) -> None:
    """Run each declared check on its parameter (the first failure raises)."""
    for name, check in checks.items():
        check(name, params[name])


def expand_glob(text: str | os.PathLike[str], *, source: str = "") -> list[Path]:
    """A path, or the sorted matches of a glob (a glob matching nothing is an InputError)."""
    text = str(text)
    if not glob.has_magic(text):
        return [Path(text)]
    found = sorted(glob.glob(text))
    if not found:
        where = f"{source}: " if source else ""
        raise InputError(
            f"{where}{text}: the glob matches no file; check the pattern and the folder"
        )
    return [Path(p) for p in found]
