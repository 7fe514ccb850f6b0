"""daskparcel.clustering.hierarchical_kmeans against nilearn's HierarchicalKMeans."""

from __future__ import annotations

import logging
import warnings

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from conftest import real_scan
from nilearn.regions import HierarchicalKMeans
from nilearn.regions.hierarchical_kmeans_clustering import _adjust_small_clusters
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score
from threadpoolctl import threadpool_limits

from daskparcel.clustering.hierarchical_kmeans import hierarchical_kmeans, split_sizes
from daskparcel.errors import InputError


@pytest.fixture(autouse=True)
def _one_blas_thread():
    with threadpool_limits(1):
        yield


def _nilearn(features: np.ndarray, k: int) -> np.ndarray:
    # nilearn's Parcellations parameters; HierarchicalKMeans takes (component, voxel)
    return (
        HierarchicalKMeans(
            k, init="k-means++", batch_size=1000, n_init=10, max_no_improvement=10, random_state=0
        )
        .fit(features.T)
        .labels_
    )


def test_same_labels_as_nilearn_on_two_chunkings():
    x, _ = make_blobs(4000, n_features=40, centers=16, cluster_std=1.0, random_state=0)
    x = x.astype(np.float32)
    reference = _nilearn(x, 30)
    for chunk in (700, 4000):
        labels = hierarchical_kmeans(da.from_array(x, chunks=(chunk, -1)), 30, random_state=0)
        assert labels.dtype == np.int64
        assert np.unique(labels).size == 30
        assert adjusted_rand_score(reference, labels) == pytest.approx(1.0)
        np.testing.assert_array_equal(labels, reference)


def test_split_sizes_is_nilearns_rounding_when_clusters_are_big_enough():
    rng = np.random.default_rng(0)
    for _ in range(200):
        k = int(rng.integers(4, 400))
        n_big = int(np.sqrt(k))
        counts = rng.integers(k, 5 * k, size=n_big)
        exact = k * counts / counts.sum()
        np.testing.assert_array_equal(split_sizes(counts, k), _adjust_small_clusters(exact, k))


def test_split_sizes_caps_shares_at_cluster_sizes():
    rng = np.random.default_rng(1)
    for _ in range(300):
        n_big = int(rng.integers(1, 12))
        counts = rng.integers(0, 6, size=n_big)
        if counts.sum() == 0:
            continue
        k = int(rng.integers(max(1, int((counts > 0).sum())), counts.sum() + 1))
        shares = split_sizes(counts, k)
        assert shares.sum() == k
        assert (shares <= counts).all()
        assert (shares[counts > 0] >= 1).all()
        assert (shares[counts == 0] == 0).all()


def test_exactly_k_when_a_coarse_cluster_is_smaller_than_its_share(caplog):
    # 12 voxels, 12 clusters: every coarse cluster gets exactly its size; with duplicate points
    # scikit-learn leaves sub-clusters empty, which must be re-seeded
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [np.repeat(rng.standard_normal((3, 4)), 3, axis=0), rng.standard_normal((3, 4))]
    )
    with caplog.at_level(logging.INFO, logger="daskparcel.clustering"):
        labels = hierarchical_kmeans(x, 12)
    assert np.unique(labels).size == 12
    assert "re-seeded" in caplog.text
    # nilearn returns fewer labels here
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nilearn_labels = _nilearn(np.hstack([x, x]), 12)
    assert np.unique(nilearn_labels).size < 12


def test_bad_input():
    x = np.random.default_rng(0).standard_normal((50, 3))
    with pytest.raises(InputError, match="n_clusters=0: must be an integer >= 1"):
        hierarchical_kmeans(x, 0)
    with pytest.raises(InputError, match=r"n_clusters=51: larger than the 50 voxels"):
        hierarchical_kmeans(x, 51)
    x[4, 0] = np.nan
    with pytest.raises(InputError, match="features: non-finite"):
        hierarchical_kmeans(x, 5)


def _size_cv(labels: np.ndarray) -> float:
    sizes = np.bincount(labels)
    return float(sizes.std() / sizes.mean())


@pytest.mark.real_data
@pytest.mark.slow
def test_real_scan_matches_nilearn_and_balances_sizes(tmp_path_factory):
    from nilearn.maskers import NiftiMasker
    from nilearn.masking import apply_mask
    from nilearn.regions import Parcellations

    from daskparcel.reduction import reduce

    img, mask = str(real_scan("rapidtide")), str(real_scan("rapidtide_mask"))
    cache = tmp_path_factory.getbasetemp() / "nilearn-cache"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x = NiftiMasker(
            mask_img=mask, smoothing_fwhm=10, standardize="zscore_sample"
        ).fit_transform(img)
        parcellations = Parcellations(
            method="hierarchical_kmeans",
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
    ours = hierarchical_kmeans(da.from_array(features, chunks=(6000, -1)), 50)
    assert np.unique(ours).size == 50
    # same features, same algorithm: nilearn's labels
    assert adjusted_rand_score(_nilearn(features, 50), ours) >= 0.99
    # the whole pipeline: parcel sizes no less balanced than nilearn's
    assert _size_cv(ours) <= _size_cv(nilearn_labels) * 1.05, (
        _size_cv(ours),
        _size_cv(nilearn_labels),
    )
    # issue 21 item 1: on features weighted by the signals' variance along each component, every
    # seed beats nilearn's labels (whose seed 0 is its best of seeds 0-4 here) with balanced sizes
    from test_kmeans import reference_r2

    from daskparcel.clustering.weights import weigh_components

    weighted = weigh_components(features, signals)
    nilearn_r2 = reference_r2(x.T, nilearn_labels)
    for seed in range(5):
        labels = hierarchical_kmeans(weighted, 50, random_state=seed)
        r2 = reference_r2(x.T, labels)
        assert r2 >= nilearn_r2 and _size_cv(labels) <= 1.2, (
            seed,
            r2,
            nilearn_r2,
            _size_cv(labels),
        )


def test_starts_in_parallel_and_the_best_compression_r2_kept():
    from test_kmeans import _Graphs, _within_ss, planted_signals, reference_r2

    from daskparcel.clustering.starts import start_seeds

    x, features = planted_signals(0)
    seeds = start_seeds(0, 4)
    singles = [hierarchical_kmeans(features, 20, random_state=s) for s in seeds]
    r2 = [reference_r2(x, labels) for labels in singles]
    inertia = [_within_ss(features, labels) for labels in singles]
    assert np.argmax(r2) != np.argmin(inertia)  # inertia would keep another start here
    signals = xr.DataArray(da.from_array(x, chunks=(400, -1)), dims=("voxel", "time"))
    with _Graphs() as graphs:
        judged = hierarchical_kmeans(features, 20, n_init=4, signals=signals)
    assert adjusted_rand_score(judged, singles[int(np.argmax(r2))]) == 1.0
    # both levels of the four starts run as the tasks of one graph each
    assert max(g.count("minibatch_in_memory") for g in graphs.graphs) == 4
    assert max(g.count("fine_cluster") for g in graphs.graphs) >= 4 * 3
    by_inertia = hierarchical_kmeans(features, 20, n_init=4)
    assert adjusted_rand_score(by_inertia, singles[int(np.argmin(inertia))]) == 1.0


def test_bad_judge_signals():
    features = np.random.default_rng(0).normal(size=(100, 5))
    with pytest.raises(InputError, match="signals: 99 voxels but the features have 100 rows"):
        hierarchical_kmeans(
            features, 9, n_init=2, signals=xr.DataArray(np.zeros((99, 8)), dims=("voxel", "time"))
        )


# ----------------------------------------------------------------------------------------------
# features weighted by the signals' variance along each component (issue 21 item 1)


def _projected_residual(x: np.ndarray, u: np.ndarray, labels: np.ndarray) -> float:
    """Compression residual of the centred signals projected on span(u), by brute force."""
    xc = x.astype(np.float64) - x.mean(1, keepdims=True)
    q, _ = np.linalg.qr(u.astype(np.float64))
    xp = q @ (q.T @ xc)
    return float(sum(((xp[labels == p] - xp[labels == p].mean(0)) ** 2).sum() for p in set(labels)))


@pytest.mark.parametrize("chunks", [None, (500, -1), (300, 35)])
def test_weighted_features_inertia_is_the_projected_compression_residual(chunks):
    from test_kmeans import _within_ss, planted_signals

    from daskparcel.clustering.weights import weigh_components

    x, u = planted_signals(2)
    data = x if chunks is None else da.from_array(x, chunks=chunks)
    weighted = weigh_components(u, xr.DataArray(data, dims=("voxel", "time")))
    assert isinstance(weighted, np.ndarray) and weighted.shape == u.shape
    rng = np.random.default_rng(0)
    for labels in (rng.integers(0, 12, 1200), hierarchical_kmeans(u, 12)):
        assert _within_ss(weighted, labels) == pytest.approx(
            _projected_residual(x, u, labels), rel=1e-4
        )
    # one run with its own top singular vectors: distances are those of U S
    xc = x - x.mean(1, keepdims=True)
    left, s, _ = np.linalg.svd(xc.astype(np.float64), full_matrices=False)
    w = weigh_components(left[:, :40], xr.DataArray(x, dims=("voxel", "time")))
    ref = left[:, :40] * s[:40]
    d_ours = ((w[:50, None] - w[None, :50]) ** 2).sum(-1)
    d_ref = ((ref[:50, None] - ref[None, :50]) ** 2).sum(-1)
    np.testing.assert_allclose(d_ours, d_ref, rtol=1e-3, atol=1e-3 * d_ref.max())


def test_weighted_features_keep_the_kind_and_coordinates():
    from test_kmeans import planted_signals

    from daskparcel.clustering.weights import weigh_components

    x, u = planted_signals(2)
    signals = xr.DataArray(da.from_array(x, chunks=(400, -1)), dims=("voxel", "time"))
    lazy = weigh_components(da.from_array(u, chunks=(400, -1)), signals)
    assert isinstance(lazy, da.Array)
    labelled = xr.DataArray(u, dims=("voxel", "component"), coords={"component": np.arange(40)})
    out = weigh_components(labelled, signals)
    assert out.dims == ("voxel", "component") and list(out["component"].values) == list(range(40))
    np.testing.assert_allclose(out.values, lazy.compute(), rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match=r"features: shape \(1199, 40\) for signals of 1200"):
        weigh_components(u[1:], signals)


def test_weighted_features_in_memory_are_the_product_on_any_number_of_cores():
    """In memory, the weighting's product runs in fixed 8192-row windows on the local cores: the lazy product's
    numbers (to float32 rounding), and bitwise the same on 1 and 3 cores."""
    import dask

    from daskparcel.clustering.weights import weigh_components

    rng = np.random.default_rng(5)
    u = rng.normal(size=(20_000, 12)).astype(np.float32)
    a = rng.normal(size=(12, 12))
    scatter = a @ a.T
    runs = []
    for cores in (1, 3):
        with dask.config.set(num_workers=cores):
            runs.append(weigh_components(u, scatter=scatter))
    np.testing.assert_array_equal(runs[0], runs[1])
    lazy = weigh_components(da.from_array(u, chunks=(5000, -1)), scatter=scatter)
    np.testing.assert_allclose(runs[0], lazy.compute(), rtol=1e-5, atol=1e-5)


def test_weighted_features_raise_the_compression_r2_on_planted_data():
    from test_kmeans import planted_signals, reference_r2

    from daskparcel.clustering.weights import weigh_components

    x, u = planted_signals(0)
    weighted = weigh_components(u, xr.DataArray(x, dims=("voxel", "time")))
    for seed in range(3):
        plain = reference_r2(x, hierarchical_kmeans(u, 20, random_state=seed))
        ours = reference_r2(x, hierarchical_kmeans(weighted, 20, random_state=seed))
        assert ours > plain + 0.02, (seed, ours, plain)
