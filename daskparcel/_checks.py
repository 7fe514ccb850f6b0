"""Argument and grid checks shared by the package: one rule, one message, one tolerance each.

Every check raises :class:`~daskparcel.errors.InputError` naming the input, what is wrong and what to do.
"""

from __future__ import annotations

import glob
import numbers
import os
from collections.abc import Sequence
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
            f"{name}={k}: larger than the {n_voxels} voxels to cluster; pass {name} <= {n_voxels} "
            "or a larger mask"
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
                f"{source} holds indices {bad[:10].tolist()} out of range: the run has {n_time} "
                f"time points, indices must be in [0, {n_time - 1}]"
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
