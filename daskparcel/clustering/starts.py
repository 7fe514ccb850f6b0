"""Several starts of a clustering, and which one to keep: the one whose labels give the signals the best
compression R^2 (what users judge), all judged in one read of the signals; the lowest inertia without them.
The first start uses ``random_state`` itself, so one start gives nilearn's labels."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import dask
import numpy as np
import xarray as xr

from daskparcel.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["check_judge_signals", "select_start", "start_seeds"]


def start_seeds(random_state: int, n_init: int) -> list[int]:
    """Seeds of ``n_init`` starts: ``random_state`` itself first (nilearn's single start), then seeds
    derived from it (the same on every machine)."""
    derived = np.random.SeedSequence(int(random_state)).generate_state(max(n_init, 1))
    return [int(random_state)] + [int(s) for s in derived[1:n_init]]


def check_judge_signals(signals: Any, n_voxels: int) -> None:
    """``signals`` is None or a (voxel, time) DataArray of ``n_voxels`` voxels, else InputError."""
    if signals is None:
        return
    if not isinstance(signals, xr.DataArray) or set(signals.dims) != {"voxel", "time"}:
        raise InputError(
            f"signals: expected an xarray.DataArray with dims ('voxel', 'time'), got "
            f"{type(signals).__name__} {getattr(signals, 'dims', '')}; pass the voxel signals the "
            "features were reduced from, or signals=None to judge the starts by inertia"
        )
    if signals.sizes["voxel"] != n_voxels:
        raise InputError(
            f"signals: {signals.sizes['voxel']} voxels but the features have {n_voxels} rows; pass "
            "the signals of the same voxels, in the same order"
        )


def select_start(
    labelings: Sequence[np.ndarray],
    signals: xr.DataArray | None,
    *,
    inertias: Sequence[float] | None = None,
) -> int:
    """Index of the best of several labelings of the same voxels.

    Parameters
    ----------
    labelings : sequence of numpy.ndarray
        Cluster indices ``0..K-1`` of every voxel, one array per start.
    signals : xarray.DataArray, dims ("voxel", "time"), or None
        With signals, the best start has the highest compression R^2
        (:func:`daskparcel.metrics.compression_r2`), all computed in one streaming read of the signals;
        ties go to the earlier start.
    inertias : sequence of float, optional
        Without signals, the best start has the lowest inertia.

    Returns
    -------
    int
        Index of the kept start (0 with a single labeling).
    """
    if len(labelings) <= 1:
        return 0
    if signals is None:
        if inertias is None:
            return 0
        best = int(np.argmin(inertias))
        logger.info("%d starts judged by inertia: kept start %d", len(labelings), best)
        return best
    from daskparcel.metrics import compression_r2

    k = max(int(np.max(labels)) + 1 for labels in labelings)
    lazy = [
        compression_r2(signals, np.asarray(labels) + 1, n_parcels=k, compute=False)
        for labels in labelings
    ]
    scores = [float(score) for score in dask.compute(*lazy)]
    best = int(np.argmax(scores))
    logger.info(
        "%d starts judged by compression R^2 (%s): kept start %d",
        len(labelings),
        ", ".join(f"{score:.4f}" for score in scores),
        best,
    )
    return best


# ---------------------------------------------------------------------------------------------
# public
