"""daskparcel.reduction against nilearn's Parcellations reduction (per-run SVD, then group SVD)."""

from __future__ import annotations

import itertools
import logging
import time
import warnings

import dask
import dask.array as da
import numpy as np
import pytest
import scipy.linalg
import xarray as xr
from conftest import raise_if_dask_computes, real_scan, traced_peak
from threadpoolctl import threadpool_limits

from daskparcel.errors import InputError
from daskparcel.reduction import reduce


@pytest.fixture(autouse=True)
def _one_blas_thread():
    # dask threads x BLAS threads oversubscribe the 2-core CI machine
    with threadpool_limits(1):
        yield


def _signals(x_time_voxel: np.ndarray, chunk: int, runs: np.ndarray | None = None) -> xr.DataArray:
    coords = {} if runs is None else {"run": ("time", runs)}
    return xr.DataArray(
        da.from_array(np.ascontiguousarray(x_time_voxel.T, dtype=np.float32), chunks=(chunk, -1)),
        dims=("voxel", "time"),
        coords=coords,
    )


def _angles_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Principal angles between the column spaces, smallest first, in degrees."""
    return np.sort(np.degrees(scipy.linalg.subspace_angles(a.astype(float), b.astype(float))))


def _relative_residual(x_time_voxel: np.ndarray, features: np.ndarray) -> float:
    """Share of the signals' energy outside the span of the features (reconstruction error)."""
    q, _ = np.linalg.qr(features.astype(np.float64))
    xt = x_time_voxel.T.astype(np.float64)
    residual = xt - q @ (q.T @ xt)
    return float((residual**2).sum() / (xt**2).sum())


def _nilearn_components(imgs, mask, cache) -> np.ndarray:
    from nilearn.regions import Parcellations

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parcellations = Parcellations(
            method="kmeans",
            n_parcels=50,
            mask=mask,
            smoothing_fwhm=10,
            standardize="zscore_sample",
            random_state=0,
            memory=str(cache),
            memory_level=3,
        ).fit(imgs)
    return parcellations.components_.T  # (voxel, component), what nilearn clusters


@pytest.fixture(scope="module")
def rapidtide(tmp_path_factory):
    from nilearn.maskers import NiftiMasker

    img, mask = real_scan("rapidtide"), real_scan("rapidtide_mask")
    masker = NiftiMasker(mask_img=str(mask), smoothing_fwhm=10, standardize="zscore_sample").fit()
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x = masker.transform(str(img))
    cache = tmp_path_factory.getbasetemp() / "nilearn-cache"
    return {"img": str(img), "mask": str(mask), "x": x, "cache": cache, "masker": masker}


@pytest.mark.real_data
@pytest.mark.slow
def test_single_run_matches_nilearn_on_two_chunkings(rapidtide):
    x = rapidtide["x"]
    with threadpool_limits(1):
        reference = _nilearn_components(rapidtide["img"], rapidtide["mask"], rapidtide["cache"])
    results = []
    for chunk in (4000, 11000):
        features = reduce(_signals(x, chunk), n_components=200, random_state=0)
        assert features.dims == ("voxel", "component")
        assert features.shape == reference.shape
        results.append(features.compute(scheduler="sync").values)
    for ours in results:
        angles = _angles_deg(ours, reference)
        # the leading half of the subspace is the same (nilearn's randomized SVD is an approximation
        # of the exact one computed here, so the trailing angles grow)
        assert angles[:100].max() < 1.0, angles[:100].max()
        ours_error = _relative_residual(x, ours)
        nilearn_error = _relative_residual(x, reference)
        assert ours_error <= nilearn_error * 1.01, (ours_error, nilearn_error)
    np.testing.assert_allclose(results[0], results[1], atol=2e-4)


@pytest.mark.real_data
@pytest.mark.slow
def test_two_runs_match_nilearn(rapidtide):
    """The rapidtide scan split into two runs of 130 volumes: per-run SVDs, then the group SVD."""
    from nilearn.image import index_img

    x = rapidtide["x"]
    n_time = x.shape[0]
    half = n_time // 2
    masker = rapidtide["masker"]
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        halves = [
            index_img(rapidtide["img"], slice(0, half)),
            index_img(rapidtide["img"], slice(half, None)),
        ]
        x_runs = [masker.transform(h) for h in halves]
        reference = _nilearn_components(halves, rapidtide["mask"], rapidtide["cache"])
    x2 = np.concatenate(x_runs)
    runs = np.repeat(["a", "b"], [half, n_time - half])
    ours = reduce(_signals(x2, 6000, runs), n_components=200, run="run").compute(scheduler="sync")
    ours = ours.values
    assert ours.shape == reference.shape == (x.shape[1], 200)
    angles = _angles_deg(ours, reference)
    assert angles[:100].max() < 1.0, angles[:100].max()
    assert _relative_residual(x2, ours) <= _relative_residual(x2, reference) * 1.01


def _nitime():
    import nibabel as nib

    runs = []
    for name in ("nitime1", "nitime2"):
        data = nib.load(real_scan(name)).get_fdata(dtype=np.float32)
        runs.append(data.reshape(-1, data.shape[-1]))
    keep = np.all([r.std(axis=1) > 0 for r in runs], axis=0)
    x = [r[keep].T for r in runs]  # (time, voxel) each
    x = [(r - r.mean(0)) / r.std(0, ddof=1) for r in x]  # zscore_sample
    return x


@pytest.mark.real_data
def test_multirun_caps_components_and_logs(caplog):
    x_runs = _nitime()
    x = np.concatenate(x_runs)
    runs = np.repeat([1, 2], [r.shape[0] for r in x_runs])
    signals = _signals(x, 500, runs)
    with caplog.at_level(logging.INFO, logger="daskparcel.reduction"):
        features = reduce(signals, n_components=60, run="run")
    # nilearn: min(60, 40 time points) per run, then min(60, 80) for the group
    assert features.shape == (x.shape[1], 60)
    assert "capped at 40" in caplog.text
    values = features.compute(scheduler="sync").values
    # the group components are the top 60 left singular vectors of [U1, U2] (exact reference)
    u = [np.linalg.svd(r.T.astype(float), full_matrices=False)[0][:, :40] for r in x_runs]
    expected = np.linalg.svd(np.hstack(u), full_matrices=False)[0][:, :60]
    assert _angles_deg(values, expected).max() < 0.5
    np.testing.assert_allclose(values.T @ values, np.eye(60), atol=1e-4)


@pytest.mark.real_data
def test_same_result_on_sync_and_threads_schedulers():
    x_runs = _nitime()
    x = np.concatenate(x_runs)
    runs = np.repeat([1, 2], [r.shape[0] for r in x_runs])
    features = reduce(_signals(x, 300, runs), n_components=30, run="run", random_state=3)
    a = features.compute(scheduler="sync").values
    b = features.compute(scheduler="threads").values
    np.testing.assert_array_equal(a, b)


def test_building_is_lazy():
    x = np.random.default_rng(0).standard_normal((50, 400))
    with raise_if_dask_computes():
        features = reduce(_signals(x, 100), n_components=10)
    assert isinstance(features.data, da.Array)


def test_randomized_path_matches_exact_on_leading_components():
    rng = np.random.default_rng(1)
    low_rank = rng.standard_normal((120, 8)) @ rng.standard_normal((8, 3000)) * 5
    x = low_rank + rng.standard_normal((120, 3000))
    exact = reduce(_signals(x, 700), n_components=20).compute(scheduler="sync").values
    with dask.config.set({"daskparcel.reduction.exact-max-columns": 50}):
        randomized = reduce(_signals(x, 700), n_components=20, random_state=5)
        a = randomized.compute(scheduler="sync").values
        b = reduce(_signals(x, 1100), n_components=20, random_state=5).compute(scheduler="threads")
    assert _angles_deg(a[:, :8], exact[:, :8]).max() < 0.5
    assert _angles_deg(b.values[:, :8], exact[:, :8]).max() < 0.5


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "200"])
def test_bad_n_components(bad):
    x = np.ones((10, 30))
    with pytest.raises(InputError, match=r"n_components=.*integer >= 1"):
        reduce(_signals(x, 10), n_components=bad)


def test_non_finite_signals_raise_when_computed():
    x = np.random.default_rng(0).standard_normal((20, 300))
    x[3, 250] = np.nan
    features = reduce(_signals(x, 100), n_components=5)  # building is fine
    with pytest.raises(InputError, match=r"non-finite.*voxels 200\.\.299"):
        features.compute(scheduler="sync")


def test_bad_dims_and_run():
    x = np.ones((10, 30))
    bad = xr.DataArray(np.ones((30, 10)), dims=("voxel", "t"))
    with pytest.raises(InputError, match="dims"):
        reduce(bad)
    with pytest.raises(InputError, match=r"run=.session.: no such coordinate"):
        reduce(_signals(x, 10), run="session")


# ---------------------------------------------------------------------- reduce_runs: the same, in passes
def _subspace_distance(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Largest principal angle (degrees) between the leading k columns' spans."""
    qa, _ = np.linalg.qr(a[:, :k].astype(np.float64))
    qb, _ = np.linalg.qr(b[:, :k].astype(np.float64))
    s = np.linalg.svd(qa.T @ qb, compute_uv=False)
    return float(np.degrees(np.arccos(np.clip(s.min(), -1, 1))))


@pytest.mark.parametrize("exact_max", [1500, 10])
def test_reduce_runs_equals_reduce(tmp_path, exact_max):
    """Per-run components stored, then the group SVD in passes: the subspace of the one-graph reduce, on the
    exact path and on the randomized one (forced with a small exact-max-columns)."""
    import dask
    import zarr

    from daskparcel.reduction import reduce_runs

    rng = np.random.default_rng(0)
    base = rng.standard_normal((600, 6))
    runs = []
    for _ in range(3):
        data = base @ rng.standard_normal((6, 40)) + 0.1 * rng.standard_normal((600, 40))
        runs.append(
            xr.DataArray(
                da.from_array(data.astype(np.float32), chunks=(128, -1)), dims=("voxel", "time")
            )
        )
    stacked = xr.concat(runs, dim="time").assign_coords(run=("time", np.repeat([0, 1, 2], 40)))
    with dask.config.set({"daskparcel.reduction.exact-max-columns": exact_max}):
        expected = reduce(stacked, n_components=6, run="run").values
        group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
        got = reduce_runs(runs, group, n_components=6)
    assert got.shape == expected.shape == (600, 6)
    assert _subspace_distance(got, expected, 6) < 0.5
    assert "runs" not in group


def _counted_runs(chunks: object, n_time: int, reads: dict[str, int]) -> list[xr.DataArray]:
    """Three low-rank (600 voxel, time) runs whose blocks count how often they are read."""

    def counted(block: np.ndarray) -> np.ndarray:
        reads["n"] += 1
        return block

    rng = np.random.default_rng(0)
    base = rng.standard_normal((600, 6))
    runs = []
    for _ in range(3):
        data = base @ rng.standard_normal((6, n_time)) + 0.1 * rng.standard_normal((600, n_time))
        x = da.from_array(data.astype(np.float32), chunks=(chunks, -1))
        x = x.map_blocks(counted, meta=np.empty((0, 0), np.float32))
        runs.append(xr.DataArray(x, dims=("voxel", "time")))
    return runs


@pytest.mark.parametrize(("n_time", "exact_max"), [(40, 1500), (8, 10)])
def test_runs_that_fit_in_a_task_are_read_once(tmp_path, n_time, exact_max):
    """A run that fits in a task (``reduction.run-in-task-mb``) is reduced there: its blocks are read once
    where the Gram pass and the projection pass read them twice, with the same features on any chunking (exact
    group SVD: to float32 rounding; randomized, 3 x 6 columns past ``exact_max``: the products in float32)."""
    import zarr

    from daskparcel.reduction import reduce_runs

    reads = {"n": 0}
    out = {}
    for budget, chunks in [(0, 128), (512, 128), (512, (97, 400, 103))]:
        reads["n"] = 0
        group = zarr.open_group(str(tmp_path / f"g{budget}-{len(str(chunks))}.zarr"), mode="w")
        settings = {
            "scheduler": "sync",
            "daskparcel.reduction.run-in-task-mb": budget,
            "daskparcel.reduction.exact-max-columns": exact_max,
        }
        with dask.config.set(settings):
            out[budget, str(chunks)] = reduce_runs(
                _counted_runs(chunks, n_time, reads), group, n_components=6
            )
        n_blocks = 3 * (5 if chunks == 128 else 3)  # 3 runs of 600 voxels
        assert reads["n"] == (2 if budget == 0 else 1) * n_blocks, (budget, chunks)
        assert "runs" not in group
    two_pass, *in_task = out.values()
    for got in in_task:
        assert _subspace_distance(got, two_pass, 6) < 1e-3
        np.testing.assert_allclose(np.abs(got), np.abs(two_pass), atol=1e-4)


def test_one_run_in_a_task_is_read_once(tmp_path):
    """One run (no group SVD): read once in its task, its components returned as the two passes give them."""
    import zarr

    from daskparcel.reduction import reduce_runs

    reads = {"n": 0}
    out = []
    for budget in (0, 512):
        reads["n"] = 0
        settings = {"scheduler": "sync", "daskparcel.reduction.run-in-task-mb": budget}
        with dask.config.set(settings):
            run = _counted_runs(128, 40, reads)[0]
            out.append(
                reduce_runs([run], zarr.open_group(str(tmp_path / f"{budget}.zarr"), mode="w"))
            )
        assert reads["n"] == (2 if budget == 0 else 1) * 5
    assert out[1].dtype == np.float32 and out[1].shape == (600, 40)
    np.testing.assert_allclose(np.abs(out[1]), np.abs(out[0]), atol=1e-5)


@pytest.mark.cluster
def test_runs_in_tasks_on_worker_processes(tmp_path):
    """On a distributed cluster each run's task reads the run from its zarr store itself: the features
    computed in this process."""
    import zarr
    from distributed import Client, LocalCluster

    from daskparcel.reduction import reduce_runs

    rng = np.random.default_rng(1)
    base = rng.standard_normal((700, 5))
    runs = []
    for i in range(3):
        data = base @ rng.standard_normal((5, 30)) + 0.1 * rng.standard_normal((700, 30))
        array = zarr.create_array(
            str(tmp_path / f"run{i}.zarr"), shape=data.shape, dtype=np.float32, chunks=(200, 30)
        )
        array[...] = data
        runs.append(xr.DataArray(da.from_zarr(array), dims=("voxel", "time")))
    with dask.config.set(scheduler="sync"):
        expected = reduce_runs(
            runs, zarr.open_group(str(tmp_path / "a.zarr"), mode="w"), n_components=5
        )
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0"
    ) as cluster, Client(cluster):  # fmt: skip
        got = reduce_runs(runs, zarr.open_group(str(tmp_path / "b.zarr"), mode="w"), n_components=5)
    np.testing.assert_allclose(np.abs(got), np.abs(expected), atol=1e-5)


def test_run_windows_cover_the_rows_in_order():
    """The in-task reduction's fixed row windows, whatever the blocks: every row once, in order."""
    from daskparcel._dask import row_windows

    x = np.arange(50 * 3).reshape(50, 3)
    for bounds in ([0, 50], [0, 7, 8, 30, 50], [0, 20, 40, 50]):
        blocks = [x[a:b] for a, b in itertools.pairwise(bounds)]
        windows = list(row_windows(blocks, 16))
        assert [start for start, _ in windows] == [0, 16, 32, 48]
        np.testing.assert_array_equal(np.concatenate([w for _, w in windows]), x)


# ------------------------------------------------------- the group SVD: one pass per power iteration
def _stacked_bases(n_voxels: int, n_runs: int, k: int, shared: int, seed: int) -> np.ndarray:
    """Stacked orthonormal (voxel, k) bases of runs that share ``shared`` directions (the group SVD's input)."""
    rng = np.random.default_rng(seed)
    common = rng.standard_normal((n_voxels, shared))
    bases = []
    for _ in range(n_runs):
        run = np.hstack([common, rng.standard_normal((n_voxels, k - shared))])
        run += 0.3 * rng.standard_normal(run.shape)
        bases.append(np.linalg.qr(run)[0])
    return np.hstack(bases).astype(np.float32)


@pytest.mark.parametrize("use_scratch", [True, False])
@pytest.mark.parametrize("chunk", [97, 400, (300, 100, 400)])
def test_fused_group_svd_equals_two_pass_range_finder(tmp_path, chunk, use_scratch):
    """The fused range finder (a power iteration per pass) gives the subspace of the two-pass one and of
    numpy's SVD, on three chunkings (one irregular), with the tall factor in a zarr scratch group or
    gathered."""
    import zarr

    from daskparcel.svd import passes_left_singular, stacked_svd

    x = _stacked_bases(800, 6, 20, shared=8, seed=0)  # 120 columns
    dx = da.from_array(x, chunks=(chunk, 20))
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w") if use_scratch else None
    fused = stacked_svd(dx, 20, n_power_iter=3, seed=7, scratch=group)[0]
    with dask.config.set({"daskparcel.reduction.exact-max-columns": 50}):  # its randomized path
        two_pass = passes_left_singular(dx, 20, n_power_iter=3, seed=7, what="group")
    exact = np.linalg.svd(x.astype(np.float64), full_matrices=False)[0][:, :20]
    assert fused.shape == (800, 20) and fused.dtype == np.float32
    # the same subspace as the two-pass finder (equal in exact arithmetic) ...
    assert _angles_deg(fused, two_pass).max() < 0.01
    # ... and, as a randomized SVD, close to the exact one: the 8 shared directions within a degree, and the
    # rank-20 reconstruction error near the optimum (1.5% above it: 100 flat directions follow the 20 kept)
    assert _angles_deg(fused[:, :8], exact[:, :8]).max() < 1.0
    x64 = x.astype(np.float64)

    def residual(u: np.ndarray) -> float:
        return float(np.linalg.norm(x64 - u @ (u.T @ x64)) ** 2)

    assert residual(fused.astype(np.float64)) < 1.02 * residual(exact)
    np.testing.assert_allclose(fused.T.astype(np.float64) @ fused, np.eye(20), atol=1e-4)
    if use_scratch:
        assert "range" not in group


def test_fused_group_svd_gives_zero_columns_beyond_the_rank():
    """Runs that span the same directions: the stack's rank is below k + oversampling; the directions without
    energy are dropped (zero columns, as the exact path), the others are the exact ones."""
    from daskparcel.svd import stacked_svd

    one = _stacked_bases(500, 1, 12, shared=0, seed=1)
    x = np.hstack([one, one, one])  # rank 12, 36 columns
    fused = stacked_svd(da.from_array(x, chunks=(128, 12)), 16, n_power_iter=3, seed=0)[0]
    norms = np.linalg.norm(fused.astype(np.float64), axis=0)
    np.testing.assert_allclose(norms[:12], 1.0, atol=1e-4)
    np.testing.assert_array_equal(norms[12:], 0.0)
    assert _angles_deg(fused[:, :12], one).max() < 0.01


def test_float32_group_gram_gives_zero_columns_beyond_the_rank(tmp_path):
    """The exact group SVD multiplies its Gram matrix in float32: a run given twice has a stack of half rank,
    and the directions without energy are zero columns (float32 rounding must not make them unit-norm noise),
    the others the span of the one run's."""
    import zarr

    from daskparcel.reduction import reduce_runs

    rng = np.random.default_rng(4)
    data = rng.standard_normal((5000, 200)).astype(np.float32)
    run = xr.DataArray(da.from_array(data, chunks=(2048, -1)), dims=("voxel", "time"))
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    got = reduce_runs([run, run], group, n_components=300)  # 2 x 200 columns of rank 200
    norms = np.linalg.norm(got.astype(np.float64), axis=0)
    np.testing.assert_allclose(norms[:200], 1.0, atol=1e-4)
    np.testing.assert_array_equal(norms[200:], 0.0)
    assert _angles_deg(got[:, :200], data).max() < 0.01


def test_fused_group_svd_reads_the_stack_once_per_power_iteration():
    """n_power_iter + 1 passes over the stacked components (the two-pass finder makes 2 n_power_iter + 2)."""
    from daskparcel.svd import passes_left_singular, stacked_svd

    x = _stacked_bases(600, 4, 10, shared=4, seed=2)
    reads = {"n": 0}

    def counted(block: np.ndarray) -> np.ndarray:
        reads["n"] += 1
        return block

    dx = da.from_array(x, chunks=(150, 10)).map_blocks(counted, meta=np.empty((0, 0), np.float32))
    with dask.config.set({"scheduler": "sync", "daskparcel.reduction.exact-max-columns": 20}):
        stacked_svd(dx, 10, n_power_iter=3, seed=0)[0]
        fused_reads, reads["n"] = reads["n"], 0
        passes_left_singular(dx, 10, n_power_iter=3, seed=0, what="group")
    assert fused_reads == 4 * 16  # 4 x 4 blocks, 4 passes
    assert reads["n"] == 8 * 16


@pytest.mark.cluster
def test_fused_group_svd_on_worker_processes(tmp_path):
    """On a distributed cluster the workers write the tall factor into the scratch group themselves: the result
    is the one computed in this process."""
    import zarr
    from distributed import Client, LocalCluster

    from daskparcel.svd import stacked_svd

    x = _stacked_bases(900, 5, 16, shared=6, seed=3)
    dx = da.from_array(x, chunks=(200, 16))
    with dask.config.set(scheduler="sync"):
        expected = stacked_svd(dx, 16, n_power_iter=3, seed=4)[0]
    group = zarr.open_group(str(tmp_path / "scratch.zarr"), mode="w")
    stored = _as_zarr_runs(x, 16, 200, group)
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0"
    ) as cluster, Client(cluster):  # fmt: skip
        got = stacked_svd(dx, 16, n_power_iter=3, seed=4, scratch=group)[0]
        # the runs' stored components, each block read by the worker's task that multiplies it
        from_zarr = stacked_svd(stored, 16, n_power_iter=3, seed=4, scratch=group)[0]
    np.testing.assert_allclose(np.abs(got), np.abs(expected), atol=1e-4)
    np.testing.assert_allclose(np.abs(from_zarr), np.abs(expected), atol=1e-4)
    assert "range" not in group


def _as_zarr_runs(x: np.ndarray, width: int, rows: int, group: object) -> list:
    """``x``'s column blocks of ``width`` as zarr arrays of ``group`` (row chunks of ``rows``), as the runs'
    stored components."""
    arrays = []
    for i in range(x.shape[1] // width):
        array = group.create_array(  # type: ignore[attr-defined]
            f"runs/{i}", shape=(x.shape[0], width), dtype=np.float32, chunks=(rows, width)
        )
        array[...] = x[:, i * width : (i + 1) * width]
        arrays.append(array)
    return arrays


@pytest.mark.parametrize("rows", [128, 500])
def test_fused_group_svd_reads_zarr_runs_in_its_tasks(tmp_path, rows):
    """Given the runs' zarr arrays, each task reads its rows of every run: the result of the dask array of
    the same columns, on two row chunkings."""
    import zarr

    from daskparcel.svd import stacked_svd

    x = _stacked_bases(700, 4, 12, shared=5, seed=5)
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    stored = _as_zarr_runs(x, 12, rows, group)
    with dask.config.set(scheduler="sync"):
        expected = stacked_svd(da.from_array(x, chunks=(rows, 12)), 12, n_power_iter=3, seed=1)[0]
        got = stacked_svd(stored, 12, n_power_iter=3, seed=1, scratch=group)[0]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def _weighted_gram(features: np.ndarray, step: int = 1, **how: object) -> np.ndarray:
    """Inner products of the weighted features' rows (every ``step``-th): what kmeans sees, free of the
    rotation's signs."""
    from daskparcel.clustering.weights import weigh_components

    w = np.asarray(weigh_components(features, **how), dtype=np.float64)[::step]
    return w @ w.T


@pytest.mark.parametrize(
    "budget", [0, 512]
)  # runs in 2 passes (Gram, projection) or in a task each
@pytest.mark.parametrize("chunks", [128, (97, 400, 103)])
def test_the_group_leaves_the_scatter_of_the_signals(tmp_path, chunks, budget):
    """reduce_runs leaves the signals' scatter along the features, computed from the runs' singular values:
    when every run keeps all its time points it is the scatter one read of the signals gives (the weighted
    features' inner products to float32 rounding), on any chunking, past exact-max-columns (randomized group
    SVD) and on the exact path. On the exact path with runs that drop components there is none (small
    cohorts keep the read's numbers)."""
    import zarr

    from daskparcel.reduction import reduce_runs

    reads = {"n": 0}
    # 3 runs of 8 time points: 24 columns with 8 components each
    runs = _counted_runs(chunks, 8, reads)
    runs = [r + 5.0 for r in runs]  # not centred: the time sums count
    signals = xr.concat(runs, dim="time")
    for exact_max in (10, 1500):
        group = zarr.open_group(str(tmp_path / f"g{exact_max}.zarr"), mode="w")
        settings = {
            "daskparcel.reduction.exact-max-columns": exact_max,
            "daskparcel.reduction.run-in-task-mb": budget,
        }
        with dask.config.set(settings):
            features = reduce_runs(runs, group, n_components=8)
        scatter = np.asarray(group["scatter"][...])
        assert scatter.shape == (8, 8)
        from_signals = _weighted_gram(features, signals=signals)
        got = _weighted_gram(features, scatter=scatter)
        scale = np.abs(from_signals).max()
        np.testing.assert_allclose(got, from_signals, rtol=1e-4, atol=1e-4 * scale)
    with pytest.raises(InputError, match="scatter: shape"):
        _weighted_gram(features, scatter=scatter[:4, :4])
    group = zarr.open_group(str(tmp_path / "drop.zarr"), mode="w")
    with dask.config.set({"daskparcel.reduction.run-in-task-mb": budget}):
        # the exact path, each run keeping 6 of its 8 time points
        reduce_runs(runs, group, n_components=6)
    assert "scatter" not in group


@pytest.mark.real_data
def test_scatter_of_runs_that_drop_components_is_the_signals_within_a_percent(tmp_path, rapidtide):
    """Runs longer than n_components: the scatter leaves out what each run's trailing components carry. On the
    real scan in 4 runs of 65 volumes keeping 40 components each (~80 % of their variance), the weighted features'
    inner products are the signals' within 1 %, and kmeans on them finds parcellations with the same R^2."""
    import zarr
    from sklearn.cluster import KMeans

    from daskparcel.reduction import reduce_runs

    x = rapidtide["x"]  # (time, voxel), z-scored
    runs = [
        xr.DataArray(
            da.from_array(np.ascontiguousarray(part.T, dtype=np.float32), chunks=(8192, -1)),
            dims=("voxel", "time"),
        )
        for part in np.array_split(x, 4, axis=0)
    ]
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    with dask.config.set({"daskparcel.reduction.exact-max-columns": 100}):
        features = reduce_runs(runs, group, n_components=40)
    scatter = np.asarray(group["scatter"][...])
    signals = xr.concat(runs, dim="time")
    from_signals = _weighted_gram(features, 7, signals=signals)
    got = _weighted_gram(features, 7, scatter=scatter)
    assert np.linalg.norm(got - from_signals) < 0.01 * np.linalg.norm(from_signals)

    from daskparcel.clustering.weights import weigh_components

    def r2(weighted: np.ndarray) -> float:
        labels = KMeans(20, n_init=1, random_state=0).fit_predict(weighted)
        means = np.stack([np.bincount(labels, weights=t) for t in x]) / np.bincount(labels)
        return 1 - float(((x - means[:, labels]) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())

    exact = r2(np.asarray(weigh_components(features, signals)))
    assert r2(np.asarray(weigh_components(features, scatter=scatter))) == pytest.approx(
        exact, abs=0.005
    )


@pytest.mark.cluster
def test_gather_rows_from_a_cluster_holds_the_result_and_one_batch(monkeypatch):
    """A cluster's blocks come into the result a batch at a time: the client's peak is the result plus one
    batch, not every block and their concatenation (twice the result); the rows are those of the array,
    in order, on uneven blocks."""
    from distributed import Client, LocalCluster

    from daskparcel import _dask

    monkeypatch.setattr(_dask, "GATHER_BYTES", 4 * 2**20)
    chunks = ((7000, 3000, 9000, 1000, 8000) * 4, (60, 40))
    tall = da.random.default_rng(3).standard_normal((sum(chunks[0]), 100), chunks=chunks)
    tall = tall.astype(np.float32)
    expected = tall.compute(scheduler="sync")
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0"
    ) as cluster, Client(cluster):  # fmt: skip
        got, peak = traced_peak(_dask.gather_rows, tall)
        deadline = time.monotonic() + 10  # releases reach the scheduler asynchronously
        while cluster.scheduler.tasks and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not cluster.scheduler.tasks, "blocks left on the workers"
    np.testing.assert_array_equal(got, expected)
    assert peak < 1.3 * expected.nbytes, f"peak {peak / expected.nbytes:.2f}x the result"
