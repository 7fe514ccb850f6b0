"""daskparcel.clustering.kmeans against scikit-learn (and nilearn's Parcellations on the real scan)."""

from __future__ import annotations

import warnings

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from conftest import real_scan, traced_peak
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score
from threadpoolctl import threadpool_limits

from daskparcel.clustering.kmeans import KMeansResult, kmeans
from daskparcel.errors import InputError


@pytest.fixture(autouse=True)
def _one_blas_thread():
    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def blobs():
    x, truth = make_blobs(6000, n_features=8, centers=12, cluster_std=1.0, random_state=0)
    return x.astype(np.float32), truth


def _within_ss(x: np.ndarray, labels: np.ndarray) -> float:
    """Sum of squared distances to the cluster means (numpy reference)."""
    x = x.astype(np.float64)
    total = 0.0
    for label in np.unique(labels):
        rows = x[labels == label]
        total += float(((rows - rows.mean(0)) ** 2).sum())
    return total


@pytest.mark.parametrize("method", ["minibatch", "lloyd"])
def test_blobs_match_scikit_learn_on_two_chunkings(blobs, method):
    x, truth = blobs
    reference = KMeans(12, n_init=3, random_state=0).fit(x)
    results = []
    for chunk in (1000, 2500):
        result = kmeans(da.from_array(x, chunks=(chunk, -1)), 12, method=method, random_state=0)
        assert isinstance(result, KMeansResult)
        assert result.labels.dtype == np.int64 and result.labels.shape == (x.shape[0],)
        assert np.unique(result.labels).size == 12
        assert adjusted_rand_score(reference.labels_, result.labels) >= 0.99
        assert adjusted_rand_score(truth, result.labels) >= 0.99
        # centres are the cluster means and inertia the within-cluster sum of squares (numpy)
        means = np.stack([x[result.labels == j].mean(0) for j in range(12)])
        np.testing.assert_allclose(result.centers, means, rtol=1e-5, atol=1e-5)
        assert result.inertia == pytest.approx(_within_ss(x, result.labels), rel=1e-6)
        results.append(result)
    if method == "lloyd":
        np.testing.assert_array_equal(results[0].labels, results[1].labels)
    else:
        assert results[0].inertia == pytest.approx(results[1].inertia, rel=0.01)


def test_lloyd_same_labels_whatever_the_chunking_on_overlapping_clusters():
    # clusters that overlap, so the answer depends on the start: chunk-independent randomness matters
    x, _ = make_blobs(4000, n_features=5, centers=20, cluster_std=3.0, random_state=1)
    a = kmeans(da.from_array(x, chunks=(500, -1)), 20, method="lloyd", random_state=7, n_init=1)
    b = kmeans(da.from_array(x, chunks=(1300, -1)), 20, method="lloyd", random_state=7, n_init=1)
    np.testing.assert_array_equal(a.labels, b.labels)
    c = kmeans(da.from_array(x, chunks=(1300, -1)), 20, method="lloyd", random_state=8, n_init=1)
    assert not np.array_equal(a.labels, c.labels)  # the seed matters


@pytest.mark.parametrize("method", ["minibatch", "lloyd"])
def test_same_labels_on_sync_and_threads(blobs, method):
    x, _ = blobs
    features = da.from_array(x, chunks=(700, -1))
    with dask.config.set(scheduler="sync"):
        a = kmeans(features, 12, method=method, random_state=3, n_init=1)
    with dask.config.set(scheduler="threads"):
        b = kmeans(features, 12, method=method, random_state=3, n_init=1)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.inertia == b.inertia


def test_streamed_minibatch_matches_in_memory_quality(blobs):
    x, truth = blobs
    in_memory = kmeans(x, 12, random_state=0)
    with dask.config.set({"daskparcel.kmeans.in-memory-bytes": 0}):
        streamed = kmeans(da.from_array(x, chunks=(900, -1)), 12, random_state=0, max_iter=3)
        again = kmeans(da.from_array(x, chunks=(900, -1)), 12, random_state=0, max_iter=3)
    assert adjusted_rand_score(truth, streamed.labels) >= 0.99
    assert streamed.inertia <= in_memory.inertia * 1.02
    np.testing.assert_array_equal(streamed.labels, again.labels)


def test_accepts_numpy_and_dataarray(blobs):
    x, _ = blobs
    a = kmeans(x, 12, method="lloyd", n_init=1)
    features = xr.DataArray(da.from_array(x.T, chunks=(-1, 1500)), dims=("component", "voxel"))
    b = kmeans(features, 12, method="lloyd", n_init=1)
    np.testing.assert_array_equal(a.labels, b.labels)


@pytest.mark.parametrize("method", ["minibatch", "lloyd"])
def test_exactly_k_clusters_where_scikit_learn_gives_fewer(method):
    rng = np.random.default_rng(0)
    distinct = rng.standard_normal((6, 5))
    x = np.repeat(distinct, 50, axis=0)  # 6 distinct points, 300 voxels
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = MiniBatchKMeans(8, n_init=3, random_state=0).fit(x)
    assert np.unique(reference.labels_).size < 8  # nilearn issue 2238
    result = kmeans(da.from_array(x, chunks=(70, -1)), 8, method=method)
    assert np.unique(result.labels).size == 8
    assert result.n_reseeded >= 1 or method == "lloyd"
    assert result.inertia == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize(
    ("n_clusters", "message"),
    [
        (0, r"n_clusters=0: must be an integer >= 1"),
        (2.5, r"n_clusters=2\.5: must be an integer >= 1"),
        (True, r"n_clusters=True: must be an integer"),
        (501, r"n_clusters=501: larger than the 500 voxels"),
    ],
)
def test_bad_n_clusters(n_clusters, message):
    x = np.random.default_rng(0).standard_normal((500, 3))
    with pytest.raises(InputError, match=message):
        kmeans(x, n_clusters)


@pytest.mark.parametrize("method", ["minibatch", "lloyd", "streamed"])
def test_non_finite_features(method):
    x = np.random.default_rng(0).standard_normal((500, 3))
    x[321, 1] = np.inf
    limit = 0 if method == "streamed" else 2**30
    with (
        dask.config.set({"daskparcel.kmeans.in-memory-bytes": limit}),
        pytest.raises(InputError, match="features: non-finite"),
    ):
        kmeans(
            da.from_array(x, chunks=(100, -1)),
            4,
            method="lloyd" if method == "lloyd" else "minibatch",
        )


def test_bad_options():
    x = np.zeros((10, 2))
    with pytest.raises(InputError, match="method='ward'"):
        kmeans(x, 2, method="ward")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="init='k-means\\|\\|'"):
        kmeans(x, 2, method="minibatch", init="k-means||")
    with pytest.raises(InputError, match="features: expected 2 dims"):
        kmeans(np.zeros(10), 2)


# ----------------------------------------------------------------------------------------------
# the real scan, with the seed's settings (n_parcels=50, smoothing 10 mm, zscore_sample)


def _compression_r2(x_time_voxel: np.ndarray, labels: np.ndarray) -> float:
    """Variance of the voxel signals explained by their parcel means."""
    x = x_time_voxel.astype(np.float64)
    counts = np.bincount(labels)
    means = np.stack([np.bincount(labels, weights=row) for row in x]) / counts
    residual = x - means[:, labels]
    return 1.0 - float((residual**2).sum() / ((x - x.mean(0)) ** 2).sum())


@pytest.fixture(scope="module")
def rapidtide(tmp_path_factory):
    from nilearn.maskers import NiftiMasker
    from nilearn.masking import apply_mask
    from nilearn.regions import Parcellations

    from daskparcel.reduction import reduce

    img, mask = str(real_scan("rapidtide")), str(real_scan("rapidtide_mask"))
    cache = tmp_path_factory.getbasetemp() / "nilearn-cache"
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        masker = NiftiMasker(mask_img=mask, smoothing_fwhm=10, standardize="zscore_sample")
        x = masker.fit_transform(img)
        parcellations = Parcellations(
            method="kmeans",
            n_parcels=50,
            mask=mask,
            smoothing_fwhm=10,
            standardize="zscore_sample",
            random_state=0,
            memory=str(cache),
            memory_level=3,
        ).fit(img)
        nilearn_labels = apply_mask(parcellations.labels_img_, mask).astype(int) - 1
        signals = xr.DataArray(da.from_array(x.T, chunks=(8000, -1)), dims=("voxel", "time"))
        features = reduce(signals).compute(scheduler="sync").values
    return {"x": x, "features": features, "nilearn_labels": nilearn_labels}


@pytest.mark.real_data
@pytest.mark.slow
def test_real_scan_quality(rapidtide):
    x, features = rapidtide["x"], rapidtide["features"]
    nilearn_r2 = _compression_r2(x, rapidtide["nilearn_labels"])
    reference = MiniBatchKMeans(50, n_init=3, random_state=0).fit(features)
    # compare like with like: the within-cluster sum of squares of each labelling
    reference_ss = _within_ss(features, reference.labels_)
    for chunk, method in ((8000, "minibatch"), (5000, "lloyd")):
        result = kmeans(
            da.from_array(features, chunks=(chunk, -1)),
            50,
            method=method,
            random_state=0,
            n_init=1,  # minibatch: one start with scikit-learn's n_init=3 inside, as nilearn
        )
        assert np.unique(result.labels).size == 50
        assert result.inertia <= reference_ss * 1.02, (method, result.inertia, reference_ss)
        r2 = _compression_r2(x, result.labels)
        assert r2 >= nilearn_r2 - 0.01, (method, r2, nilearn_r2)


def test_refine_lowers_the_inertia_of_minibatch():
    """Full Lloyd iterations from the mini-batch centres never increase the inertia (here they lower it)."""
    from sklearn.datasets import make_blobs

    x, _ = make_blobs(n_samples=6000, centers=40, n_features=8, cluster_std=3.0, random_state=1)
    plain = kmeans(x.astype(np.float32), 40, random_state=0)
    refined = kmeans(x.astype(np.float32), 40, random_state=0, refine=True)
    assert refined.inertia < plain.inertia
    assert len(np.unique(refined.labels)) == 40


@pytest.mark.parametrize("rows", [1000, 8192])
def test_lloyd_in_memory_is_scikit_learns_kmeans(rows):
    """The refine step's Lloyd against scikit-learn's KMeans from the same centres, on two block sizes."""
    from daskparcel.clustering._blocks import lloyd_in_memory

    x, _ = make_blobs(n_samples=9000, centers=30, n_features=8, cluster_std=2.0, random_state=2)
    x = x.astype(np.float32)
    start = x[np.random.default_rng(0).choice(len(x), 30, replace=False)].astype(np.float64)
    with threadpool_limits(limits=1, user_api="openmp"):
        reference = KMeans(30, init=start, n_init=1, max_iter=100, tol=1e-4).fit(x)
    labels, d2, n_iter = lloyd_in_memory(x, start, max_iter=100, tol=1e-4, threads=2, rows=rows)
    assert adjusted_rand_score(reference.labels_, labels) > 0.999
    assert abs(n_iter - reference.n_iter_) <= 1
    assert np.isclose(d2.sum(), _within_ss(x, labels), rtol=1e-6)
    assert np.isclose(_within_ss(x, labels), _within_ss(x, reference.labels_), rtol=1e-4)


@pytest.mark.parametrize("rows", [1000, 8192])
def test_lloyd_tolerance_is_scikit_learns_on_any_blocks_and_threads(rows):
    """The refine step's tolerance scale, the features' mean variance, from blocks' moments: scikit-learn's
    (``np.mean(np.var(x, axis=0))``) to rounding, on features far from 0 (where summing squares would cancel),
    and the same number on 1 and 3 threads."""
    from concurrent.futures import ThreadPoolExecutor

    from daskparcel.clustering._blocks import _mean_variance

    rng = np.random.default_rng(4)
    x = (rng.normal(size=(20_000, 6)) * [1, 2, 3, 4, 5, 6] + 1e4).astype(np.float32)
    blocks = [slice(start, min(start + rows, len(x))) for start in range(0, len(x), rows)]
    values = []
    for threads in (1, 3):
        with ThreadPoolExecutor(threads) as pool:
            values.append(_mean_variance(x, blocks, pool))
    assert values[0] == values[1]
    reference = float(np.mean(np.var(x, axis=0, dtype=np.float64)))
    assert values[0] == pytest.approx(reference, rel=1e-12)


def test_lloyd_in_memory_gives_the_same_result_on_any_number_of_threads():
    """Overlapping clusters (many near ties), 20 iterations: bitwise the same labels and distances on 1, 2
    and 5 threads, as the blocks' sums are added in block order (scikit-learn's change with its threads)."""
    from daskparcel.clustering._blocks import lloyd_in_memory

    rng = np.random.default_rng(3)
    x = rng.normal(size=(40_000, 12)).astype(np.float32)
    start = x[:25].astype(np.float64)
    runs = [
        lloyd_in_memory(x, start, max_iter=20, tol=0.0, threads=t, rows=4096) for t in (1, 2, 5)
    ]
    for labels, d2, n_iter in runs[1:]:
        np.testing.assert_array_equal(labels, runs[0][0])
        np.testing.assert_array_equal(d2, runs[0][1])
        assert n_iter == runs[0][2]


@pytest.mark.parametrize("num_workers", [1, 3])
def test_refined_kmeans_is_the_same_on_any_number_of_dask_threads(num_workers):
    """kmeans' in-memory start runs in a dask task: its OpenMP (per thread, not limited by the client's
    limit) and its Lloyd threads (dask's num_workers) must not change the labels."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(30_000, 10)).astype(np.float32)
    with dask.config.set(scheduler="sync"):
        reference = kmeans(x, 20, random_state=0, refine=True)
    with dask.config.set(scheduler="threads", num_workers=num_workers):
        result = kmeans(x, 20, random_state=0, refine=True)
    np.testing.assert_array_equal(result.labels, reference.labels)
    np.testing.assert_array_equal(result.centers, reference.centers)


# ----------------------------------------------------------------------------------------------
# several starts, judged by the compression R^2 of the signals


def planted_signals(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(voxel, time) signals of 16 planted parcels with voxel-varying amplitude and white noise, and
    their features as the reduction gives them: unit-norm loadings of 40 components (noisy tail)."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 16, 1200)
    shared = rng.normal(size=(16, 80))
    x = rng.uniform(0.3, 1.5, size=(1200, 1)) * shared[truth] + rng.normal(size=(1200, 80))
    u, _, _ = np.linalg.svd(x - x.mean(1, keepdims=True), full_matrices=False)
    return x.astype(np.float32), u[:, :40].astype(np.float32)


def reference_r2(x: np.ndarray, labels: np.ndarray) -> float:
    """Compression R^2 by brute force: residual to each parcel's mean of the centred signals."""
    x = x.astype(np.float64) - x.mean(1, keepdims=True)
    residual = sum(((x[labels == p] - x[labels == p].mean(0)) ** 2).sum() for p in set(labels))
    return 1.0 - residual / (x**2).sum()


class _Graphs(dask.callbacks.Callback):
    """Records the task keys of every graph computed."""

    def __init__(self) -> None:
        super().__init__()
        self.graphs: list[list[str]] = []

    def _start_state(self, dsk, state) -> None:  # type: ignore[no-untyped-def]
        self.graphs.append([dask.utils.key_split(k) for k in dsk])


def test_starts_in_parallel_and_the_best_compression_r2_kept():
    from daskparcel.clustering.starts import start_seeds

    x, features = planted_signals(1)
    seeds = start_seeds(0, 4)
    assert seeds[0] == 0  # the first start is nilearn's single start
    singles = [kmeans(features, 12, random_state=s).labels for s in seeds]
    r2 = [reference_r2(x, labels) for labels in singles]
    inertia = [_within_ss(features, labels) for labels in singles]
    # in this case feature-space inertia and the R^2 disagree on the best start
    assert np.argmax(r2) != np.argmin(inertia)
    signals = xr.DataArray(da.from_array(x, chunks=(500, 40)), dims=("voxel", "time"))
    with _Graphs() as graphs:
        judged = kmeans(da.from_array(features, chunks=(500, -1)), 12, n_init=4, signals=signals)
    assert adjusted_rand_score(judged.labels, singles[int(np.argmax(r2))]) == 1.0
    # the four starts are tasks of one graph
    assert max(g.count("minibatch_in_memory") for g in graphs.graphs) == 4
    by_inertia = kmeans(features, 12, n_init=4)
    assert adjusted_rand_score(by_inertia.labels, singles[int(np.argmin(inertia))]) == 1.0
    # one start: today's labels, whatever the signals
    alone = kmeans(features, 12, n_init=1, signals=signals).labels
    assert adjusted_rand_score(alone, singles[0]) == 1.0


def test_lloyd_starts_judged_by_the_signals():
    x, features = planted_signals(1)
    signals = xr.DataArray(x, dims=("voxel", "time"))
    single = kmeans(features, 12, method="lloyd", n_init=1).labels
    judged = kmeans(features, 12, method="lloyd", n_init=3, signals=signals).labels
    # the first of the three starts is the single one: the kept start is no worse
    assert np.unique(judged).size == 12
    assert reference_r2(x, judged) >= reference_r2(x, single) - 1e-12


def test_bad_judge_signals():
    x, features = planted_signals(1)
    with pytest.raises(InputError, match="signals: 1199 voxels but the features have 1200 rows"):
        kmeans(features, 12, n_init=2, signals=xr.DataArray(x[1:], dims=("voxel", "time")))
    with pytest.raises(InputError, match=r"signals: expected an xarray\.DataArray"):
        kmeans(features, 12, n_init=2, signals=x)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="n_init=0: must be an integer >= 1"):
        kmeans(features, 12, n_init=0)


@pytest.mark.parametrize("n_rows", [40000, 100003])  # whole 8192-row blocks and a partial one
def test_minibatch_in_memory_distances_without_a_float64_copy_of_the_features(n_rows):
    """A mini-batch start's distances (what hierarchical kmeans reseeds empty clusters with) are each row's
    squared distance to its centre, computed 8192 rows at a time: the task's traced peak stays under twice the
    features (a float64 copy of them, and of their centres, made it 4x: 1.1 GB at 2 mm, which killed a
    1.5 GiB worker of the 40-subject run)."""
    from daskparcel.clustering.kmeans import minibatch_in_memory

    x = np.random.default_rng(0).standard_normal((n_rows, 50)).astype(np.float32)
    options = dict(
        random_state=0, n_init=1, max_iter=100, tol=0.0, batch_size=1000, max_no_improvement=10,
        init="k-means++",
    )  # fmt: skip
    minibatch_in_memory(x, 10, **options)  # imports and numba's compilation outside the trace
    (labels, d2, *_), peak = traced_peak(minibatch_in_memory, x, 10, **options)
    assert peak < 2 * x.nbytes
    mbk = MiniBatchKMeans(10, **{k: v for k, v in options.items() if k != "init"}).fit(x)
    np.testing.assert_array_equal(labels, mbk.labels_)
    diff = x.astype(np.float64) - mbk.cluster_centers_[labels].astype(np.float64)
    expected = (diff**2).sum(1)
    np.testing.assert_allclose(d2, expected, rtol=1e-12)


@pytest.mark.parametrize("given", ["numpy", "dask"])
@pytest.mark.parametrize("method", ["kmeans", "hierarchical_kmeans"])
def test_in_memory_features_leave_the_client_once_on_a_cluster(method, given):
    """On a distributed cluster, in-memory features are sent to the workers once (their row blocks; the
    starts take them joined on a worker), with the labels of the local threads; also features given lazily,
    once computed into memory. Scattered whole for the starts and again as blocks, they were sent three
    times (twice when given lazily)."""
    from distributed import Client, LocalCluster

    from daskparcel.clustering.hierarchical_kmeans import hierarchical_kmeans

    x, _ = make_blobs(40000, n_features=50, centers=30, cluster_std=2.0, random_state=0)
    x = x.astype(np.float32)  # 8 MB: above what is put in graphs
    features = x if given == "numpy" else da.from_array(x, chunks=(7000, -1))
    fit = (lambda f: kmeans(f, 30, refine=True).labels) if method == "kmeans" else (
        lambda f: hierarchical_kmeans(f, 30, n_init=2)
    )  # fmt: skip
    local = fit(x)
    sent: list[int] = []
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0"
    ) as cluster, Client(cluster) as client:  # fmt: skip
        scatter = client.scatter

        def counting(data, *args, **kwargs):
            items = data if isinstance(data, list | tuple) else [data]
            sent.append(sum(getattr(item, "nbytes", 0) for item in items))
            return scatter(data, *args, **kwargs)

        client.scatter = counting
        with dask.config.set(scheduler=client.get):
            labels = fit(features)
    assert sum(sent) <= 1.05 * x.nbytes, (
        f"{sum(sent)} bytes scattered for {x.nbytes} bytes of features"
    )
    np.testing.assert_array_equal(labels, local)
