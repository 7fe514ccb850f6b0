"""Shared test helpers: real data paths, laziness checks, small synthetic inputs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import pytest

from daskparcel.testing import CountingScheduler, raise_if_dask_computes

__all__ = ["REAL_DATA", "CountingScheduler", "raise_if_dask_computes", "real_scan"]

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = Path(os.environ.get("DASKPARCEL_REAL_DATA", REPO.parent / "shared" / "data" / "real"))

REAL_SCANS = {
    "rapidtide": REAL_DATA / "rapidtide" / "sub-RAPIDTIDETEST.nii.gz",
    "rapidtide_mask": REAL_DATA / "rapidtide" / "sub-RAPIDTIDETEST_brainmask.nii.gz",
    "nipy": REAL_DATA / "nipy" / "functional.nii.gz",
    "nitime1": REAL_DATA / "nitime" / "fmri1.nii.gz",
    "nitime2": REAL_DATA / "nitime" / "fmri2.nii.gz",
    "pyhrf": REAL_DATA / "pyhrf" / "subj0_bold_session0.nii.gz",
    "pyhrf_4regions": REAL_DATA / "pyhrf" / "real_data_vol_4_regions_BOLD.nii.gz",
    "pymvpa": REAL_DATA / "pymvpa" / "bold.nii.gz",
}


def traced_peak(function: Any, *args: Any, **kwargs: Any) -> tuple[Any, int]:
    """``function(*args, **kwargs)`` and the peak bytes Python and numpy allocated meanwhile (tracemalloc)."""
    import tracemalloc

    tracemalloc.start()
    try:
        result = function(*args, **kwargs)
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def real_scan(name: str) -> Path:
    """Path of a real scan from ../shared/data/real, or skip the test with the reason."""
    path = REAL_SCANS[name]
    if not path.exists():
        pytest.skip(
            f"real data {path} is absent: put the project's shared/ folder beside the checkout "
            "or set DASKPARCEL_REAL_DATA"
        )
    return path


@pytest.fixture(autouse=True)
def _no_global_scheduler_left_behind(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the test that leaves a global dask scheduler set (it would silently change every later test)."""
    before = dask.config.get("scheduler", None)
    yield
    after = dask.config.get("scheduler", None)
    if after != before:
        dask.config.set(scheduler=before)
        pytest.fail(f"{request.node.nodeid} left dask's scheduler set to {after!r}", pytrace=False)
