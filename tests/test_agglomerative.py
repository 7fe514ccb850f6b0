"""Compiled ward / complete / average against scikit-learn's AgglomerativeClustering."""

from __future__ import annotations

import logging
import warnings

import dask.array as da
import nibabel as nib
import numpy as np
import pytest
import scipy.sparse as sp
from conftest import real_scan
from scipy import ndimage
from sklearn.cluster import AgglomerativeClustering
from sklearn.feature_extraction.image import grid_to_graph
from sklearn.metrics import adjusted_rand_score

from daskparcel.clustering.agglomerative import (
    agglomerate,
    allocate_clusters,
    build_tree,
)
from daskparcel.clustering.connectivity import grid_connectivity
from daskparcel.errors import InputError

LINKAGES = ["ward", "complete", "average"]


def _largest_component(mask: np.ndarray) -> np.ndarray:
    lab, _ = ndimage.label(mask)
    return lab == np.argmax(np.bincount(lab.ravel())[1:]) + 1


def _sklearn(
    x: np.ndarray, k: int, linkage: str, conn: sp.spmatrix, full: bool | str = "auto"
) -> AgglomerativeClustering:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AgglomerativeClustering(
            n_clusters=k,
            linkage=linkage,
            connectivity=conn,
            compute_distances=True,
            compute_full_tree=full,
        ).fit(x)


@pytest.fixture(scope="module")
def real_features() -> tuple[np.ndarray, np.ndarray]:
    """A crop of the rapidtide scan in its brain mask, standardised, 20 SVD components."""
    mask = np.asarray(nib.load(real_scan("rapidtide_mask")).get_fdata()) > 0
    data = nib.load(real_scan("rapidtide")).get_fdata(dtype=np.float32)
    crop = (slice(14, 42), slice(14, 42), slice(8, 20))
    m = _largest_component(mask[crop])
    sig = data[crop][m]
    sig = sig - sig.mean(1, keepdims=True)
    sig /= sig.std(1, keepdims=True)
    u, s, _ = np.linalg.svd(sig, full_matrices=False)
    return (u[:, :20] * s[:20]).astype(np.float32), m


@pytest.mark.parametrize("linkage", LINKAGES)
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_tree_identical_to_sklearn_random(linkage: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    mask = _largest_component(rng.random((7, 8, 6)) > 0.25)
    x = rng.standard_normal((int(mask.sum()), 4)).astype(np.float32)
    if seed % 2:
        x = np.round(x)  # many exact ties: the heap order must follow scikit-learn's
    conn = grid_to_graph(*mask.shape, mask=mask)
    tree = build_tree(x, grid_connectivity(mask), linkage)
    ks = [1, 2, 9, 40, int(mask.sum()) // 2, int(mask.sum()) - 1]
    assert len(np.unique(tree.cut(int(mask.sum())))) == mask.sum()
    for k in ks:  # several cuts of one tree
        ref = _sklearn(x, k, linkage, conn)
        labels = tree.cut(k)
        assert len(np.unique(labels)) == k
        assert adjusted_rand_score(ref.labels_, labels) == 1.0
    ref = _sklearn(x, 1, linkage, conn, full=True)
    np.testing.assert_array_equal(tree.children, ref.children_)
    np.testing.assert_array_equal(tree.distances, ref.distances_)


@pytest.mark.real_data
@pytest.mark.parametrize("linkage", LINKAGES)
def test_identical_to_sklearn_on_real_scan(linkage: str, real_features) -> None:  # type: ignore[no-untyped-def]
    x, mask = real_features
    conn = grid_to_graph(*mask.shape, mask=mask)
    tree = build_tree(x, grid_connectivity(mask), linkage)
    for k in (25, 400):
        ref = _sklearn(x, k, linkage, conn)
        assert adjusted_rand_score(ref.labels_, tree.cut(k)) == 1.0
    # the one-call API, with dask features, gives the same labels
    dx = da.from_array(x, chunks=(1000, -1))
    assert adjusted_rand_score(ref.labels_, agglomerate(dx, 400, mask=mask, linkage=linkage)) == 1.0


@pytest.mark.parametrize("linkage", LINKAGES)
def test_user_connectivity_identical_to_sklearn(linkage: str) -> None:
    # a non-lattice graph (a ring plus random chords), as nilearn's PR 2541 allows
    rng = np.random.default_rng(5)
    n = 60
    rows = np.concatenate([np.arange(n), rng.integers(0, n, 30)])
    cols = np.concatenate([(np.arange(n) + 1) % n, rng.integers(0, n, 30)])
    conn = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    x = rng.standard_normal((n, 3))
    for k in (3, 17):
        ref = _sklearn(x, k, linkage, conn)
        ours = agglomerate(x, k, connectivity=conn, linkage=linkage)
        assert adjusted_rand_score(ref.labels_, ours) == 1.0


@pytest.mark.parametrize("linkage", LINKAGES)
def test_two_components_give_connected_parcels(linkage: str, caplog) -> None:  # type: ignore[no-untyped-def]
    mask = np.zeros((10, 6, 4), bool)
    mask[0:3] = True  # 72 voxels
    mask[6:10, :4] = True  # 64 voxels
    x = np.random.default_rng(0).standard_normal((int(mask.sum()), 3))
    with caplog.at_level(logging.INFO, logger="daskparcel.clustering.agglomerative"):
        labels = agglomerate(x, 11, mask=mask, linkage=linkage)
    assert "2 separate components" in caplog.text
    assert sorted(np.unique(labels)) == list(range(11))
    vol = np.full(mask.shape, -1)
    vol[mask] = labels
    for p in range(11):
        assert ndimage.label(vol == p)[1] == 1, f"parcel {p} is not connected"
    comp = ndimage.label(mask)[0][mask]
    per_comp = [len(np.unique(labels[comp == c])) for c in (1, 2)]
    np.testing.assert_array_equal(per_comp, allocate_clusters(11, np.array([72, 64])))


def test_allocate_clusters_proportional() -> None:
    alloc = allocate_clusters(10, np.array([700, 200, 100]))
    np.testing.assert_array_equal(alloc, [7, 2, 1])
    alloc = allocate_clusters(5, np.array([1000, 1, 1]))
    np.testing.assert_array_equal(alloc, [3, 1, 1])
    assert allocate_clusters(4, np.array([1, 1, 5])).tolist() == [1, 1, 2]


def test_bad_inputs() -> None:
    mask = np.ones((3, 3, 2), bool)
    x = np.random.default_rng(0).random((18, 2))
    with pytest.raises(InputError, match=r"linkage='single'.*one of 'ward', 'complete', 'average'"):
        agglomerate(x, 3, mask=mask, linkage="single")
    with pytest.raises(InputError, match=r"connectivity: shape \(17, 17\) does not match the 18"):
        agglomerate(x, 3, connectivity=sp.eye(17, format="csr"))
    with pytest.raises(InputError, match=r"n_clusters=19: larger than the 18 voxels"):
        agglomerate(x, 19, mask=mask)
    with pytest.raises(InputError, match=r"n_clusters=0: must be an integer >= 1"):
        agglomerate(x, 0, mask=mask)
    with pytest.raises(InputError, match=r"mask: has 12 voxels .* features have 18 rows"):
        agglomerate(x, 3, mask=np.ones((3, 2, 2), bool))
    with pytest.raises(InputError, match="neither was given"):
        agglomerate(x, 3)
    two = np.zeros((5, 1, 1), bool)
    two[[0, 1, 3, 4]] = True
    with pytest.raises(
        InputError, match=r"n_clusters=1: the mask \(or connectivity\) has 2 separate connected"
    ):
        agglomerate(np.zeros((4, 1)), 1, mask=two)
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(InputError, match="features: contain NaN"):
        agglomerate(bad, 3, mask=mask)
