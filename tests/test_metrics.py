"""Quality metrics: hand-computed cases, numpy / scipy / scikit-learn references, laziness."""

from __future__ import annotations

import dask
import dask.array as da
import nibabel as nib
import numpy as np
import pytest
import xarray as xr
from conftest import raise_if_dask_computes, real_scan
from dask.callbacks import Callback
from scipy import ndimage
from sklearn.metrics import adjusted_rand_score

from daskparcel.errors import InputError
from daskparcel.metrics import (
    adjusted_rand,
    compression_r2,
    contiguity,
    homogeneity,
    parcel_sizes,
    r2_map,
    r2_per_parcel,
    split_half_reproducibility,
)
from daskparcel.parcels import parcel_means

# ----------------------------------------------------------------------------- compression R^2


def hand_signals(chunks: tuple[int, int] = (2, -1)) -> tuple[xr.DataArray, np.ndarray]:
    # 4 voxels x 2 time points, 2 parcels:
    #   parcel 1: v0 = [1, 3] -> centred [-1, 1];  v1 = [3, 1] -> centred [1, -1]
    #             centred mean m1 = [0, 0]
    #   parcel 2: v2 = [2, 2] -> centred [0, 0];   v3 = [0, 4] -> centred [-2, 2]
    #             centred mean m2 = [-1, 1]
    x = np.array([[1, 3], [3, 1], [2, 2], [0, 4]], dtype=np.float32)
    labels = np.array([1, 1, 2, 2])
    return xr.DataArray(da.from_array(x, chunks=chunks), dims=("voxel", "time")), labels


@pytest.mark.parametrize("chunks", [(2, -1), (-1, 1), (1, 1)])
def test_compression_r2_hand_computed(chunks) -> None:
    signals, labels = hand_signals(chunks)
    # total = ||v0||^2 + ||v1||^2 + ||v2||^2 + ||v3||^2 = 2 + 2 + 0 + 8 = 12
    # residual: parcel 1: ||[-1,1]-0||^2 + ||[1,-1]-0||^2 = 4
    #           parcel 2: ||[0,0]-[-1,1]||^2 + ||[-2,2]-[-1,1]||^2 = 2 + 2 = 4
    # R^2 = 1 - 8 / 12 = 1/3
    assert compression_r2(signals, labels) == pytest.approx(1 / 3)
    # per parcel: parcel 1: 1 - 4/4 = 0; parcel 2: 1 - 4/8 = 0.5
    per = r2_per_parcel(signals, labels)
    np.testing.assert_allclose(per.values, [0.0, 0.5], atol=1e-12)
    np.testing.assert_array_equal(per["parcel"].values, [1, 2])
    # per voxel: v0: 1 - 2/2 = 0; v1: 0; v2: no variance -> NaN; v3: 1 - 2/8 = 0.75
    np.testing.assert_allclose(r2_map(signals, labels).values, [0, 0, np.nan, 0.75], atol=1e-12)


def test_r2_limits() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 10)).astype(np.float32)
    signals = xr.DataArray(x, dims=("voxel", "time"))
    # one voxel a parcel: each voxel is its own mean -> R^2 = 1
    assert compression_r2(signals, np.arange(1, 7)) == pytest.approx(1.0)
    # every voxel the same signal plus a constant: R^2 = 1 whatever the parcels
    same = xr.DataArray(x[:1] + np.arange(6)[:, None], dims=("voxel", "time"))
    assert compression_r2(same, np.array([1, 1, 1, 2, 2, 2])) == pytest.approx(1.0)
    # constant voxels: no variance -> NaN
    flat = xr.DataArray(np.ones((6, 10), np.float32), dims=("voxel", "time"))
    assert np.isnan(compression_r2(flat, np.array([1, 1, 1, 2, 2, 2])))


def reference_r2(x: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Direct numpy residuals: global, per-parcel and per-voxel R^2."""
    xc = x.astype(np.float64) - x.mean(axis=1, keepdims=True, dtype=np.float64)
    k = labels.max()
    res = np.zeros_like(xc)
    for p in range(1, k + 1):
        members = labels == p
        res[members] = xc[members] - xc[members].mean(axis=0)
    inside = labels > 0
    tot_v, res_v = (xc**2).sum(1), (res**2).sum(1)
    glob = 1 - res_v[inside].sum() / tot_v[inside].sum()
    per = np.array(
        [1 - res_v[labels == p].sum() / tot_v[labels == p].sum() for p in range(1, k + 1)]
    )
    vox = np.where(inside, 1 - res_v / tot_v, np.nan)
    return glob, per, vox


@pytest.mark.parametrize("chunks", [(64, -1), (-1, 16), (33, 20)])
def test_r2_equal_numpy_reference_lazily(chunks) -> None:
    rng = np.random.default_rng(1)
    n_vox, n_time, k = 300, 50, 9
    labels = rng.integers(0, k + 1, size=n_vox)
    labels[:k] = np.arange(1, k + 1)
    common = rng.normal(size=(k, n_time))  # parcels share a signal, so R^2 is well above 0
    x = (100 + common[np.maximum(labels, 1) - 1] + 0.7 * rng.normal(size=(n_vox, n_time))).astype(
        np.float32
    )
    signals = xr.DataArray(da.from_array(x, chunks=chunks), dims=("voxel", "time"))
    with raise_if_dask_computes():
        glob = compression_r2(signals, labels, compute=False)
        per = r2_per_parcel(signals, labels, compute=False)
        vox = r2_map(signals, labels, compute=False)
    assert all(isinstance(r.data, da.Array) for r in (glob, per, vox))
    with raise_if_dask_computes(max_computes=1):
        glob_v, per_v, vox_v = dask.compute(glob, per, vox)
    ref_glob, ref_per, ref_vox = reference_r2(x, labels)
    assert 0.3 < ref_glob < 0.9
    assert float(glob_v) == pytest.approx(ref_glob, rel=1e-6)
    np.testing.assert_allclose(per_v.values, ref_per, rtol=1e-6)
    np.testing.assert_allclose(vox_v.values, ref_vox, rtol=1e-5, atol=1e-6)
    # given precomputed parcel signals (e.g. transform's output), the same map
    from daskparcel.parcels import parcel_means

    ps = parcel_means(signals, labels).compute()
    np.testing.assert_allclose(
        r2_map(signals, labels, parcel_signals=ps).values, ref_vox, rtol=1e-4, atol=1e-5
    )


class _HeldBytes(Callback):
    """Largest number of bytes the local scheduler holds between tasks."""

    def __init__(self) -> None:
        super().__init__()
        self.peak = 0

    def _posttask(self, key, result, dsk, state, id) -> None:
        held = sum(getattr(v, "nbytes", 0) for v in state["cache"].values())
        self.peak = max(self.peak, held)


@pytest.mark.parametrize("chunks", [(500, 50), (250, 125)])
def test_r2_streams_over_time_blocks(chunks) -> None:
    # a cohort's signals are many time blocks (runs) per voxel block: centring each voxel first
    # made dask hold a voxel block over every run (the 40-subject judge passed 20 GiB); the R^2
    # and, given the parcel means, the R^2 map hold a few blocks whatever the number of blocks
    x = da.random.default_rng(0).normal(size=(2000, 2000), chunks=chunks).astype(np.float32)
    signals = xr.DataArray(x + 100, dims=("voxel", "time"))
    labels = np.random.default_rng(1).integers(0, 20, size=2000)
    labels[0] = 19
    block = chunks[0] * chunks[1] * 8  # one block in float64
    n_blocks = x.numblocks[0] * x.numblocks[1]
    means = parcel_means(signals, labels).compute()
    for lazy in (
        compression_r2(signals, labels, compute=False),
        compression_r2(signals, labels, parcel_signals=means, compute=False),
        r2_map(signals, labels, parcel_signals=means, compute=False),
    ):
        with _HeldBytes() as held:
            dask.compute(lazy, scheduler="sync")
        assert held.peak <= 6 * block, (held.peak / block, n_blocks)
    ref_glob, _, ref_vox = reference_r2(x.compute(), labels)
    assert compression_r2(signals, labels) == pytest.approx(ref_glob, rel=1e-6)
    # given the parcel means (of the unshifted signals, as write_outputs passes them): the same R^2
    given = compression_r2(signals, labels, parcel_signals=means)
    assert given == pytest.approx(ref_glob, rel=1e-6)
    np.testing.assert_allclose(
        r2_map(signals, labels, parcel_signals=means).values, ref_vox, rtol=1e-4, atol=1e-5
    )


def test_r2_per_parcel_empty_and_singleton() -> None:
    x = np.array([[0, 1, 2], [2, 1, 0], [5, 5, 6], [1, 1, 1]], dtype=np.float32)
    signals = xr.DataArray(x, dims=("voxel", "time"))
    # parcel 1: two anti-correlated voxels -> mean 0 -> R^2 0; parcel 2: one voxel -> 1;
    # parcel 3: one constant voxel -> NaN; parcel 4: empty -> NaN
    per = r2_per_parcel(signals, np.array([1, 1, 2, 3]), n_parcels=4).values
    np.testing.assert_allclose(per, [0.0, 1.0, np.nan, np.nan], atol=1e-12)


def test_r2_errors() -> None:
    signals, labels = hand_signals()
    with pytest.raises(InputError, match=r"labels: shape \(3,\), expected \(4,\)"):
        compression_r2(signals, labels[:3])
    with pytest.raises(InputError, match=r"signals: expected an xarray\.DataArray"):
        r2_per_parcel(np.zeros((4, 2)), labels)  # type: ignore[arg-type]
    three = xr.DataArray(np.zeros((2, 3)), dims=("time", "parcel"))  # labels have 2 parcels
    with pytest.raises(InputError, match=r"parcel_signals: 3 parcels, labels have 2"):
        r2_map(signals, labels, parcel_signals=three)
    with pytest.raises(InputError, match=r"parcel_signals: 3 parcels, labels have 2"):
        compression_r2(signals, labels, parcel_signals=three)


# ----------------------------------------------------------------------------- parcel sizes


def test_parcel_sizes_hand_computed() -> None:
    # sizes: parcel 1 -> 3, parcel 2 -> 1, parcel 3 -> 2; the 0 is background
    sizes = parcel_sizes(np.array([1, 1, 1, 2, 3, 3, 0]))
    np.testing.assert_array_equal(sizes.sizes, [3, 1, 2])
    # mean 2, population std sqrt(((3-2)^2 + (1-2)^2 + 0) / 3) = sqrt(2/3); cv = sqrt(2/3) / 2
    assert sizes.cv == pytest.approx(np.sqrt(2 / 3) / 2)
    assert (sizes.largest, sizes.largest_label, sizes.n_singletons, sizes.n_empty) == (3, 1, 1, 0)
    assert sizes.n_parcels == 3


def test_parcel_sizes_empty_parcels_image_and_histogram() -> None:
    vol = np.zeros((3, 3, 3), np.int16)
    vol[0] = 2  # 9 voxels
    vol[1, 0, 0] = 4  # 1 voxel; parcels 1 and 3 (and 5 with n_parcels=5) are empty
    sizes = parcel_sizes(nib.Nifti1Image(vol, np.eye(4)), n_parcels=5)
    np.testing.assert_array_equal(sizes.sizes, [0, 9, 0, 1, 0])
    assert (sizes.n_empty, sizes.n_singletons, sizes.largest_label) == (3, 1, 2)
    counts, edges = sizes.histogram(4)
    assert counts.sum() == 2  # empty parcels are not counted
    assert edges[0] == 1 and edges[-1] == 9
    np.testing.assert_array_equal(counts, np.histogram([9, 1], bins=edges)[0])
    counts_lin, _ = sizes.histogram(np.array([0, 5, 10]))
    np.testing.assert_array_equal(counts_lin, [1, 1])
    with pytest.raises(InputError, match="n_parcels=3: smaller than the largest label 4"):
        parcel_sizes(vol, n_parcels=3)
    with pytest.raises(InputError, match="negative values"):
        parcel_sizes(np.array([1, -1]))


# ----------------------------------------------------------------------------- contiguity


def test_contiguity_hand_computed() -> None:
    vol = np.zeros((4, 4, 4), int)
    vol[0, 0, 0] = vol[3, 3, 3] = 1  # parcel 1: two separate voxels -> 2 regions
    vol[1, 1, 1] = vol[1, 1, 2] = 2  # parcel 2: face neighbours -> 1 region
    vol[2, 2, 2] = vol[3, 3, 2] = 3  # parcel 3: edge (not face) neighbours -> 2 regions (6-conn.)
    vol[0, 3, 0] = 5  # parcel 5: one voxel; parcel 4 empty (not counted)
    result = contiguity(vol)
    np.testing.assert_array_equal(result.n_components, [2, 1, 2, 0, 1])
    np.testing.assert_array_equal(result.disconnected, [1, 3])
    assert result.fraction == pytest.approx(2 / 4)
    assert float(result) == result.fraction
    # the same with 1D labels and a mask
    mask = vol > 0
    again = contiguity(vol[mask], mask=mask)
    np.testing.assert_array_equal(again.n_components, result.n_components)


def test_contiguity_equal_scipy_label() -> None:
    rng = np.random.default_rng(3)
    # blocky random labels so that some parcels are connected and some are not
    small = rng.integers(0, 30, size=(4, 4, 3))
    vol = np.kron(small, np.ones((2, 2, 2), int))
    vol[rng.random(vol.shape) < 0.05] = 0
    result = contiguity(nib.Nifti1Image(vol.astype(np.int32), np.eye(4)))
    structure = ndimage.generate_binary_structure(3, 1)  # 6-connectivity
    expected = np.array([ndimage.label(vol == p, structure)[1] for p in range(1, vol.max() + 1)])
    np.testing.assert_array_equal(result.n_components, expected)
    assert 0 < result.fraction < 1
    assert result.fraction == pytest.approx(np.mean(expected[expected > 0] == 1))


def test_contiguity_errors() -> None:
    with pytest.raises(InputError, match="pass a 3D labels volume, or 1D labels with mask"):
        contiguity(np.array([1, 2, 3]))
    with pytest.raises(InputError, match="one per mask voxel"):
        contiguity(np.array([1, 2]), mask=np.ones((2, 2, 2), bool))
    with pytest.raises(InputError, match="contains no parcel"):
        contiguity(np.zeros((2, 2, 2), int))


# ----------------------------------------------------------------------------- adjusted Rand


def test_adjusted_rand_label_zero_and_relabelling() -> None:
    a = np.array([[1, 1, 2], [2, 0, 3]])
    b = np.array([[5, 5, 7], [7, 4, 0]])
    # compared over voxels labelled in both: a -> [1, 1, 2, 2], b -> [5, 5, 7, 7]: identical
    assert adjusted_rand(a, b) == pytest.approx(1.0)
    # hand case: [1, 1, 2, 2] vs [1, 2, 1, 2]: contingency all ones, sum C(n_ij, 2) = 0,
    # row/column sums 2 -> sum C(2, 2) = 2 each, expected = 2 * 2 / C(4, 2) = 2/3,
    # max = 2, ARI = (0 - 2/3) / (2 - 2/3) = -0.5
    assert adjusted_rand([1, 1, 2, 2], [1, 2, 1, 2]) == pytest.approx(-0.5)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 5, size=(2, 200))
    both = (x > 0) & (y > 0)
    assert adjusted_rand(x, y) == pytest.approx(adjusted_rand_score(x[both], y[both]))
    mask = np.ones(200, bool)
    assert adjusted_rand(x, y, mask=mask) == pytest.approx(adjusted_rand_score(x, y))


def test_adjusted_rand_errors() -> None:
    with pytest.raises(InputError, match=r"shapes \(3,\) and \(2,\) differ"):
        adjusted_rand([1, 2, 3], [1, 2])
    with pytest.raises(InputError, match="no voxel is labelled in both"):
        adjusted_rand([1, 0], [0, 1])


def test_split_half_reproducibility() -> None:
    n_time = 20
    run = np.repeat([10, 11, 12, 13], 5)
    signals = xr.DataArray(
        np.zeros((6, n_time), np.float32), dims=("voxel", "time"), coords={"run": ("time", run)}
    )
    seen: list[np.ndarray] = []

    def fit_fn(half: xr.DataArray) -> np.ndarray:
        seen.append(np.asarray(half["run"].values))
        # a "clustering" that depends on which half it sees
        if 10 in seen[-1]:
            return np.array([0, 0, 1, 1, 2, 2])
        return np.array([2, 2, 0, 0, 1, 1])  # the same partition, relabelled

    assert split_half_reproducibility(fit_fn, signals, split="time") == pytest.approx(1.0)
    np.testing.assert_array_equal(seen[0], run[:10])
    np.testing.assert_array_equal(seen[1], run[10:])
    seen.clear()
    split_half_reproducibility(fit_fn, signals, split="run")
    np.testing.assert_array_equal(np.unique(seen[0]), [10, 12])  # runs dealt alternately
    np.testing.assert_array_equal(np.unique(seen[1]), [11, 13])

    def disagree(half: xr.DataArray) -> np.ndarray:
        return np.array([0, 0, 1, 1]) if 10 in half["run"].values else np.array([0, 1, 0, 1])

    small = signals.isel(voxel=slice(0, 4))
    assert split_half_reproducibility(disagree, small, split="run") == pytest.approx(-0.5)
    with pytest.raises(InputError, match="split='subject': not 'time' nor a coordinate"):
        split_half_reproducibility(fit_fn, signals, split="subject")
    with pytest.raises(InputError, match="single run"):
        split_half_reproducibility(fit_fn, signals.isel(time=slice(0, 5)), split="run")


# ----------------------------------------------------------------------------- homogeneity


def reference_homogeneity(x: np.ndarray, labels: np.ndarray, runs: np.ndarray) -> float:
    """CBIG_ComputeParcellationHomogeneity by brute force: full correlation matrices per parcel."""
    per_run = []
    for r in dict.fromkeys(runs):
        xr_ = x[:, runs == r].astype(np.float64)
        varying = xr_.std(axis=1) > 0
        num = den = 0.0
        for p in np.unique(labels[labels > 0]):
            members = np.flatnonzero((labels == p) & varying)
            if members.size == 0:
                continue
            if members.size == 1:
                h = 1.0
            else:
                c = np.corrcoef(xr_[members])
                h = (c.sum() - members.size) / (members.size * (members.size - 1))
            num += members.size * h
            den += members.size
        if den:
            per_run.append(num / den)
    return float(np.mean(per_run))


def homogeneity_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """60 voxels in 7 parcels (one a singleton, some voxels unlabelled), two runs of 40 and 25 time
    points; a voxel constant in the second run only."""
    rng = np.random.default_rng(4)
    labels = np.repeat(np.arange(8), [5, 12, 9, 1, 10, 8, 6, 9])
    rng.shuffle(labels)
    runs = np.repeat(["sub-01_run-1", "sub-01_run-2"], [40, 25])
    shared = rng.normal(size=(8, 65))
    x = 100 + 3 * shared[labels] + rng.normal(size=(60, 65)) * rng.uniform(0.5, 4, size=(60, 1))
    x[np.flatnonzero(labels == 2)[0], 40:] = 7.0
    return x.astype(np.float32), labels, runs


@pytest.mark.parametrize("chunks", [None, (60, -1), (7, 13), (16, 40)])
def test_homogeneity_equals_brute_force(chunks) -> None:
    x, labels, runs = homogeneity_case()
    ref = reference_homogeneity(x, labels, runs)
    data = x if chunks is None else da.from_array(x, chunks=chunks)
    signals = xr.DataArray(data, dims=("voxel", "time"), coords={"run": ("time", runs)})
    assert homogeneity(signals, labels) == pytest.approx(ref, abs=1e-10)
    # without the run coordinate the whole series is one run; run=None says so
    single = reference_homogeneity(x, labels, np.zeros(65))
    assert homogeneity(signals.drop_vars("run"), labels) == pytest.approx(single, abs=1e-10)
    assert homogeneity(signals, labels, run=None) == pytest.approx(single, abs=1e-10)
    assert abs(ref - single) > 1e-3  # the runs matter in this case


def test_homogeneity_hand_computed() -> None:
    # parcel 1: v0 and v1 anti-correlated (-1); parcel 2: v2 and v3 identical up to scale (1),
    # v4 a singleton (1): (2 * -1 + 2 * 1 + 1 * 1) / 5 = 0.2
    x = np.array([[0, 1, 2], [2, 1, 0], [1, 2, 4], [2, 4, 8], [5, 3, 4]], dtype=np.float64)
    assert homogeneity(xr.DataArray(x, dims=("voxel", "time")), [1, 1, 2, 2, 3]) == (
        pytest.approx(0.2, abs=1e-12)
    )


def test_homogeneity_lazy_and_bounded() -> None:
    # 20 runs: each task holds a voxel block over one run, whatever the number of runs
    x = da.random.default_rng(0).normal(size=(1000, 2000), chunks=(250, 50)).astype(np.float32)
    runs = np.repeat(np.arange(20), 100)
    signals = xr.DataArray(x, dims=("voxel", "time"), coords={"run": ("time", runs)})
    labels = np.random.default_rng(1).integers(0, 30, size=1000)
    with raise_if_dask_computes():
        lazy = homogeneity(signals, labels, compute=False)
    with _HeldBytes() as held:
        (value,) = dask.compute(lazy, scheduler="sync")
    run_block = 250 * 100 * 8
    assert held.peak <= 4 * run_block + 2 * 30 * 101 * 8, held.peak / run_block
    ref = reference_homogeneity(x.compute(), labels, runs)
    assert float(value) == pytest.approx(ref, abs=1e-10)


def test_homogeneity_errors() -> None:
    x, labels, runs = homogeneity_case()
    signals = xr.DataArray(x, dims=("voxel", "time"), coords={"run": ("time", runs)})
    with pytest.raises(InputError, match=r"run='subject'.*run=None"):
        homogeneity(signals, labels, run="subject")
    with pytest.raises(InputError, match="labels: shape"):
        homogeneity(signals, labels[:-1])
    with pytest.raises(InputError, match="signals: dims"):
        homogeneity(signals.rename(voxel="v"), labels)


@pytest.mark.real_data
def test_homogeneity_equals_brute_force_on_the_real_scan() -> None:
    mask = np.asarray(nib.load(real_scan("rapidtide_mask")).dataobj) > 0
    x = nib.load(real_scan("rapidtide")).get_fdata(dtype=np.float32)[mask]
    # parcels: 6 x 6 x 3 voxel boxes of the mask (~500 parcels of up to 108 voxels); two halves as runs
    coords = np.argwhere(mask) // np.array([6, 6, 3])
    _, labels = np.unique(coords, axis=0, return_inverse=True)
    labels = labels.ravel() + 1
    runs = np.repeat([0, 1], [130, x.shape[1] - 130])
    signals = xr.DataArray(
        da.from_array(x, chunks=(5000, 65)), dims=("voxel", "time"), coords={"run": ("time", runs)}
    )
    ref = reference_homogeneity(x, labels, runs)
    assert homogeneity(signals, labels) == pytest.approx(ref, abs=1e-6)
