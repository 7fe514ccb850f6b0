"""Cleaning: equal to nilearn.signal.clean on real signals, on several voxel chunkings; lazy; checks."""

from __future__ import annotations

import warnings

import dask
import dask.array as da
import nibabel as nib
import nilearn.signal as nsignal
import numpy as np
import pytest
import xarray as xr
from conftest import raise_if_dask_computes, real_scan

from daskparcel.errors import InputError
from daskparcel.preprocessing.cleaning import (
    clean,
    clean_block,
    count_zeroed_voxels,
    make_clean_plan,
    warn_zeroed_voxels,
)

T_R = 1.5
CHUNKS = (300, -1)


@pytest.fixture(scope="module")
def rapidtide() -> np.ndarray:
    """(voxel, time) float32 signals of every 24th brain voxel of the rapidtide scan (1,273 voxels)."""
    img = nib.load(real_scan("rapidtide"))
    mask = nib.load(real_scan("rapidtide_mask")).get_fdata() > 0
    return np.ascontiguousarray(img.get_fdata(dtype=np.float32)[mask][::24])


@pytest.fixture(scope="module")
def confounds(rapidtide) -> np.ndarray:
    rng = np.random.default_rng(0)
    n = rapidtide.shape[1]
    drift = np.linspace(-1, 1, n)[:, None] * rng.normal(size=(1, 2))
    return np.hstack([rng.normal(size=(n, 3)).cumsum(0), drift])


def _signals(x: np.ndarray, chunk: int) -> xr.DataArray:
    return xr.DataArray(
        da.from_array(x, chunks=(chunk, -1)),
        dims=("voxel", "time"),
        coords={"time": np.arange(x.shape[1]) * T_R},
    )


def _reference(x: np.ndarray, **kwargs) -> np.ndarray:
    params = {"detrend": False, "standardize": None, "t_r": T_R, **kwargs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return nsignal.clean(x.T.astype(np.float64), **params).T


def _assert_close(out: np.ndarray, ref: np.ndarray) -> None:
    assert out.shape == ref.shape
    assert out.dtype == np.float32
    scale = np.abs(ref).max()
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6 * scale)


def _mirror_safe_mask(n: int, censored: list[int]) -> np.ndarray:
    """A boolean mask whose censored volumes have kept mirrors (nilearn 0.14's interpolation is right)."""
    mask = np.ones(n, dtype=bool)
    mask[censored] = False
    assert all(mask[n - 1 - i] for i in censored)
    return mask


OPTIONS = {
    "nothing": {},
    "detrend": {"detrend": True},
    "zscore_sample": {"standardize": "zscore_sample"},
    "standardize_true": {"standardize": True},
    "psc": {"standardize": "psc"},
    "psc_detrend": {"standardize": "psc", "detrend": True},
    "confounds": {"confounds": "conf"},
    "confounds_unstandardized": {
        "confounds": "conf",
        "standardize_confounds": False,
        "detrend": True,
    },
    "low_pass": {"low_pass": 0.1},
    "high_pass": {"high_pass": 0.01},
    "band_pass": {"low_pass": 0.1, "high_pass": 0.01},
    "cosine": {"filter": "cosine", "high_pass": 0.01},
    "all": {
        "detrend": True,
        "standardize": "zscore_sample",
        "confounds": "conf",
        "low_pass": 0.1,
        "high_pass": 0.01,
    },
    "censor_no_filter": {"sample_mask": "mask", "detrend": True, "standardize": "zscore_sample"},
    "censor_low_pass": {"sample_mask": "mask", "low_pass": 0.08},
    "censor_all": {
        "sample_mask": "mask",
        "detrend": True,
        "standardize": "zscore_sample",
        "confounds": "conf",
        "low_pass": 0.1,
        "high_pass": 0.01,
    },
    "censor_head_band_pass": {"sample_mask": "head", "low_pass": 0.1, "high_pass": 0.01},
    "censor_tail_high_pass": {"sample_mask": "tail", "high_pass": 0.01, "detrend": True},
    "censor_cosine_confounds": {
        "sample_mask": "mask",
        "filter": "cosine",
        "high_pass": 0.01,
        "confounds": "conf",
        "detrend": True,
    },
}


def _resolve(option: dict, x: np.ndarray, conf: np.ndarray) -> dict:
    n = x.shape[1]
    masks = {
        "mask": _mirror_safe_mask(n, [10, 11, 50, 51, 52, 120, 200]),
        "head": _mirror_safe_mask(n, [0, 1, 2, 100]),
        "tail": _mirror_safe_mask(n, [60, n - 2, n - 1]),
    }
    out = dict(option)
    if out.get("confounds") == "conf":
        out["confounds"] = conf
    if isinstance(out.get("sample_mask"), str):
        out["sample_mask"] = masks[out["sample_mask"]]
    return out


@pytest.mark.real_data
@pytest.mark.filterwarnings("ignore:Cosine filter")
@pytest.mark.parametrize("name", list(OPTIONS))
def test_clean_equals_nilearn_on_rapidtide(rapidtide, confounds, name):
    kwargs = _resolve(OPTIONS[name], rapidtide, confounds)
    ref = _reference(rapidtide, **kwargs)
    ours = {**kwargs}
    if "low_pass" in ours or "high_pass" in ours:
        ours["t_r"] = T_R
    ours.setdefault("detrend", False)
    ours.setdefault("standardize", None)
    results = [clean(_signals(rapidtide, chunk), **ours) for chunk in CHUNKS]
    computed = dask.compute(*[r.data for r in results])
    for out in computed:
        _assert_close(np.asarray(out), ref)


@pytest.mark.real_data
def test_clean_nitime_two_chunkings(confounds):
    img = nib.load(real_scan("nitime1"))
    x = img.get_fdata(dtype=np.float32).reshape(-1, img.shape[3])
    x = np.ascontiguousarray(x[x.std(axis=1) > 0])
    conf = confounds[: x.shape[1]]
    kwargs = {"detrend": True, "standardize": "zscore_sample", "confounds": conf, "high_pass": 0.05}
    ref = _reference(x, t_r=1.35, **kwargs)
    for chunk in (97, -1):
        out = clean(_signals(x, chunk), t_r=1.35, **kwargs).values
        _assert_close(out, ref)


def _fixed_interpolate_volumes(volumes, sample_mask, t_r, extrapolate):
    """nilearn 0.14.1's ``_interpolate_volumes`` with the censored volumes indexed right."""
    from scipy.interpolate import CubicSpline

    frame_times = np.arange(volumes.shape[0]) * t_r
    spline = CubicSpline(frame_times[sample_mask], volumes[sample_mask], extrapolate=extrapolate)
    censored = np.ones(volumes.shape[0], dtype=bool)
    censored[sample_mask] = False
    volumes[censored] = spline(frame_times)[censored]
    return volumes


@pytest.mark.real_data
def test_censoring_any_mask_equals_nilearn_with_fixed_interpolation(rapidtide, monkeypatch):
    x = rapidtide[:500]
    n = x.shape[1]
    # censored volumes whose mirrors (n - 1 - i) are censored too: nilearn 0.14.1 leaves them
    # uninterpolated (it indexes with ~int_mask); daskparcel interpolates them
    censored = [1, 2, 3, 40, 41, 100, n - 42, n - 41, n - 4, n - 3]
    mask = np.ones(n, dtype=bool)
    mask[censored] = False
    kwargs = {
        "sample_mask": mask,
        "low_pass": 0.1,
        "high_pass": 0.01,
        "detrend": True,
        "standardize": None,
    }
    buggy = _reference(x, **kwargs)
    monkeypatch.setattr(nsignal, "_interpolate_volumes", _fixed_interpolate_volumes)
    ref = _reference(x, **kwargs)
    assert not np.allclose(buggy, ref, rtol=1e-3)  # the difference is real
    for chunk in (150, -1):
        out = clean(_signals(x, chunk), t_r=T_R, **kwargs).values
        _assert_close(out, ref)


def test_sample_mask_bool_and_indices_agree_and_time_coord():
    rng = np.random.default_rng(3)
    x = rng.normal(100, 5, size=(50, 60)).astype(np.float32)
    keep = np.ones(60, dtype=bool)
    keep[[0, 7, 8, 30, 59]] = False
    sig = _signals(x, 20)
    a = clean(sig, sample_mask=keep, t_r=2.0, low_pass=0.2, standardize="zscore_sample")
    b = clean(sig, sample_mask=np.flatnonzero(keep), t_r=2.0, low_pass=0.2)
    np.testing.assert_array_equal(a.values, b.values)
    assert a.sizes["time"] == keep.sum()
    np.testing.assert_array_equal(a["time"].values, np.flatnonzero(keep) * T_R)


def test_zscore_population_std():
    rng = np.random.default_rng(4)
    x = rng.normal(10, 2, size=(30, 40)).astype(np.float32)
    ref = _reference(x, standardize="zscore_sample", detrend=True) * np.sqrt(40 / 39)
    out = clean(_signals(x, 7), standardize="zscore", detrend=True).values
    _assert_close(out, ref)


def test_ensure_finite():
    rng = np.random.default_rng(5)
    x = rng.normal(10, 2, size=(20, 30)).astype(np.float32)
    x[3, 4] = np.nan
    x[5, 6] = np.inf
    ref = _reference(x, ensure_finite=True, detrend=True, standardize="zscore_sample")
    out = clean(_signals(x, 6), ensure_finite=True, detrend=True, standardize="zscore_sample")
    _assert_close(out.values, ref)


def test_constant_voxels_give_zeros_and_one_warning():
    rng = np.random.default_rng(6)
    x = rng.normal(10, 2, size=(40, 30)).astype(np.float32)
    x[[2, 17, 33]] = 7.0
    ref = _reference(x, detrend=True, standardize="zscore_sample")
    cleaned = clean(_signals(x, 9), detrend=True, standardize="zscore_sample")
    n_zero = count_zeroed_voxels(cleaned)
    with raise_if_dask_computes(max_computes=1):
        values, n = dask.compute(cleaned.data, n_zero)
    _assert_close(values, ref)
    assert int(n) == 3
    assert not values[[2, 17, 33]].any()
    with pytest.warns(UserWarning, match="3 of 40 voxels") as record:
        warn_zeroed_voxels(n, 40, source="run 1")
    assert len(record) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_zeroed_voxels(0, 40)


def test_clean_is_lazy():
    x = da.random.random((100, 50), chunks=(30, -1)).astype(np.float32)
    sig = xr.DataArray(x, dims=("voxel", "time"))
    conf = np.random.default_rng(0).normal(size=(50, 2))
    keep = np.ones(50, dtype=bool)
    keep[[4, 5]] = False
    with raise_if_dask_computes():
        out = clean(sig, detrend=True, confounds=conf, low_pass=0.1, t_r=2.0, sample_mask=keep)
        psc = clean(sig, standardize="psc", high_pass=0.01, t_r=2.0)
        count_zeroed_voxels(out)
    assert out.chunks == ((30, 30, 30, 10), (48,))
    assert psc.chunks == ((30, 30, 30, 10), (50,))


def test_clean_block_kernel_alone():
    rng = np.random.default_rng(7)
    x = rng.normal(50, 3, size=(12, 40))
    plan = make_clean_plan(40, detrend=True, standardize="psc", low_pass=0.2, t_r=1.0)
    out = clean_block(x, plan)
    _assert_close(out, _reference(x, detrend=True, standardize="psc", low_pass=0.2, t_r=1.0))


# ------------------------------------------------------------------------------------------------
# bad input: refused before anything runs


@pytest.fixture
def small() -> xr.DataArray:
    return _signals(np.random.default_rng(8).normal(size=(10, 40)).astype(np.float32), 5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"confounds": np.zeros((39, 2))}, "39 rows but the run has 40"),
        ({"confounds": np.full((40, 1), np.nan)}, "NaN"),
        ({"sample_mask": np.array([0, 5, 40])}, r"out of range.*\[0, 39\]"),
        ({"sample_mask": np.array([-1, 5])}, "out of range"),
        ({"sample_mask": np.ones(39, dtype=bool)}, "39 time points but the run has 40"),
        ({"sample_mask": np.zeros(40, dtype=bool)}, "every volume"),
        ({"sample_mask": np.array([5, 3])}, "strictly increasing"),
        ({"low_pass": 0.1}, "pass t_r"),
        ({"high_pass": 0.01, "filter": "cosine"}, "needs t_r"),
        ({"low_pass": 0.25, "t_r": 2.0}, "Nyquist"),
        ({"high_pass": 0.3, "t_r": 2.0}, "Nyquist"),
        ({"low_pass": 0.05, "high_pass": 0.1, "t_r": 2.0}, "high_pass < low_pass"),
        ({"standardize": "zscorez"}, "standardize='zscorez': unknown"),
        ({"filter": "fir"}, "filter='fir': unknown"),
        ({"low_pass": 0.1, "t_r": 2.0, "filter": False}, "no filter"),
        ({"low_pass": -0.1, "t_r": 2.0}, "positive"),
    ],
)
def test_bad_input_is_refused_before_computing(small, kwargs, match):
    with raise_if_dask_computes(), pytest.raises(InputError, match=match):
        clean(small, **kwargs)


def test_time_axis_in_several_chunks_is_refused(small):
    with pytest.raises(InputError, match=r"rechunk with \.chunk\(time=-1\)"):
        clean(small.chunk(time=10))
    with pytest.raises(InputError, match="dims"):
        clean(small.rename(voxel="v"))


def test_filter_too_long_for_short_run_is_refused():
    sig = _signals(np.ones((3, 12), dtype=np.float32), 3)
    with pytest.raises(InputError, match="cannot be applied to 12 time points"):
        clean(sig, low_pass=0.1, t_r=2.0)
