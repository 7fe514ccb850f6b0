"""Blockwise ReNA against nilearn's ReNA, and Ward on ReNA super-voxels."""

from __future__ import annotations

import logging
import warnings

import dask.array as da
import nibabel as nib
import numpy as np
import pytest
from conftest import raise_if_dask_computes, real_scan
from nilearn.regions import ReNA
from scipy import ndimage
from sklearn.metrics import adjusted_rand_score

from daskparcel.clustering.rena import rena
from daskparcel.errors import InputError


def _largest_component(mask: np.ndarray) -> np.ndarray:
    lab, _ = ndimage.label(mask)
    return lab == np.argmax(np.bincount(lab.ravel())[1:]) + 1


@pytest.fixture(scope="module")
def real_features() -> tuple[np.ndarray, np.ndarray]:
    """A crop of the rapidtide scan in its brain mask, standardised, 20 SVD components."""
    mask = np.asarray(nib.load(real_scan("rapidtide_mask")).get_fdata()) > 0
    data = nib.load(real_scan("rapidtide")).get_fdata(dtype=np.float32)
    crop = (slice(16, 40), slice(16, 40), slice(8, 20))
    m = _largest_component(mask[crop])
    sig = data[crop][m]
    sig = sig - sig.mean(1, keepdims=True)
    sig /= sig.std(1, keepdims=True)
    u, s, _ = np.linalg.svd(sig, full_matrices=False)
    return (u[:, :20] * s[:20]).astype(np.float32), m


def _nilearn(x: np.ndarray, mask: np.ndarray, k: int, n_iter: int = 10) -> np.ndarray:
    img = nib.Nifti1Image(mask.astype(np.int8), np.eye(4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ReNA(img, n_clusters=k, n_iter=n_iter, scaling=False).fit(x.T).labels_


def _assert_connected(labels: np.ndarray, mask: np.ndarray) -> None:
    vol = np.full(mask.shape, -1)
    vol[mask] = labels
    for p in np.unique(labels):
        assert ndimage.label(vol == p)[1] == 1, f"parcel {p} is not connected"


def _r2(x: np.ndarray, labels: np.ndarray) -> float:
    k = labels.max() + 1
    sums = np.zeros((k, x.shape[1]))
    np.add.at(sums, labels, x)
    means = sums / np.bincount(labels)[:, None]
    return 1 - ((x - means[labels]) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()


@pytest.mark.real_data
@pytest.mark.parametrize("k", [40, 300])
def test_single_block_identical_to_nilearn(real_features, k: int) -> None:  # type: ignore[no-untyped-def]
    x, mask = real_features
    ref = _nilearn(x, mask, k)
    assert len(np.unique(ref)) == k  # nilearn returns exactly K here
    ours = rena(x, k, mask=mask)
    assert adjusted_rand_score(ref, ours) == 1.0
    assert sorted(np.unique(ours)) == list(range(k))


@pytest.mark.real_data
@pytest.mark.parametrize("block_shape", [(12, 12, 6), (7, 24, 5)])
def test_blockwise_identical_to_single_block(real_features, block_shape) -> None:  # type: ignore[no-untyped-def]
    x, mask = real_features
    single = rena(x, 40, mask=mask)
    dx = da.from_array(x, chunks=(700, -1))
    # single_block_below=50: every round runs blockwise, with clusters crossing block borders
    blockwise = rena(dx, 40, mask=mask, block_shape=block_shape, single_block_below=50)
    np.testing.assert_array_equal(blockwise, single)


@pytest.mark.real_data
def test_exactly_k_when_nilearn_stops_early(real_features) -> None:  # type: ignore[no-untyped-def]
    x, mask = real_features
    ref = _nilearn(x, mask, 30, n_iter=2)
    assert len(np.unique(ref)) > 30  # nilearn ran out of rounds
    ours = rena(x, 30, mask=mask, n_iter=2, block_shape=(12, 12, 12))
    assert sorted(np.unique(ours)) == list(range(30))
    _assert_connected(ours, mask)
    # our last step only merges nilearn's clusters: every nilearn cluster lies inside one of ours
    for c in np.unique(ref):
        assert len(np.unique(ours[ref == c])) == 1


def test_two_components_exactly_k_connected(caplog) -> None:  # type: ignore[no-untyped-def]
    mask = np.zeros((12, 6, 4), bool)
    mask[0:4] = True  # 96 voxels
    mask[7:12, 1:5, :2] = True  # 40 voxels
    rng = np.random.default_rng(1)
    x = ndimage.gaussian_filter(rng.standard_normal((*mask.shape, 5)), (1, 1, 1, 0))[mask]
    with caplog.at_level(logging.INFO, logger="daskparcel.clustering.rena"):
        labels = rena(x.astype(np.float32), 10, mask=mask, block_shape=(6, 6, 4))
    assert "2 separate components" in caplog.text
    assert sorted(np.unique(labels)) == list(range(10))
    _assert_connected(labels, mask)
    comp = ndimage.label(mask)[0][mask]
    assert [len(np.unique(labels[comp == c])) for c in (1, 2)] == [7, 3]


@pytest.mark.parametrize("block_shape", [None, (8, 8, 1)])
@pytest.mark.parametrize("k", [1, 5, 20, 60])
def test_exactly_k_on_a_slice_with_identical_voxels(k: int, block_shape) -> None:  # type: ignore[no-untyped-def]
    # one slice whose 6x6 square of all-zero features (air in a background mask) has 16 voxels
    # surrounded only by identical ones: their zero-weight edges leave the graph (as in nilearn), so
    # ReNA's rounds stall above K and the final merge must still see the whole lattice
    mask = np.ones((16, 16, 1), bool)
    rng = np.random.default_rng(3)
    vol = ndimage.gaussian_filter(rng.standard_normal((*mask.shape, 6)), (1, 1, 0, 0))
    vol[4:10, 4:10] = 0.0
    x = vol[mask].astype(np.float32)
    labels = rena(x, k, mask=mask, block_shape=block_shape)
    assert sorted(np.unique(labels)) == list(range(k))
    _assert_connected(labels, mask)


@pytest.mark.real_data
@pytest.mark.parametrize("k", [20, 50])
def test_exactly_k_on_the_single_slice_scan(tmp_path, k: int) -> None:  # type: ignore[no-untyped-def]
    # issue 20 item 6: the pymvpa slice with the background mask gave 94 clusters instead of 20 or 50
    # (nilearn's background mask of this slice is now empty: without the opening it is the whole slice,
    # air included, with many identical voxels, the geometry that broke ReNA)
    from daskparcel import Parcellations

    est = Parcellations(
        method="rena", n_parcels=k, mask_strategy="background", mask_args={"opening": 0},
        store=tmp_path / "store",
    )  # fmt: skip
    est.fit(str(real_scan("pymvpa")))
    labels = np.asarray(est.labels_img_.dataobj)
    mask = np.asarray(est.mask_img_.dataobj).astype(bool)
    assert mask.shape[2] == 1
    assert sorted(np.unique(labels[mask])) == list(range(1, k + 1))
    _assert_connected(labels[mask], mask)


def test_computes_only_at_named_points() -> None:
    mask = np.ones((8, 8, 4), bool)
    x = da.from_array(np.random.default_rng(0).random((256, 4)).astype(np.float32), chunks=(64, -1))
    # per round: one compute (nearest neighbours) and one persist (reduced means); + the finish
    with raise_if_dask_computes(max_computes=2 * 3 + 1) as sched:
        labels = rena(x, 5, mask=mask, n_iter=3, block_shape=(4, 4, 4))
    assert sched.total_computes >= 2
    assert sorted(np.unique(labels)) == list(range(5))


def test_bad_inputs() -> None:
    mask = np.ones((4, 4, 2), bool)
    x = np.random.default_rng(0).random((32, 3))
    with pytest.raises(InputError, match=r"n_clusters=33: larger than the 32 voxels"):
        rena(x, 33, mask=mask)
    with pytest.raises(InputError, match=r"n_clusters=0: must be an integer >= 1"):
        rena(x, 0, mask=mask)
    with pytest.raises(InputError, match=r"mask: has 16 voxels but features have 32 rows"):
        rena(x, 3, mask=np.ones((4, 4, 1), bool))
    with pytest.raises(InputError, match=r"n_iter=0: must be an integer >= 1"):
        rena(x, 3, mask=mask, n_iter=0)
    with pytest.raises(InputError, match=r"block_shape=\(4, 4\): must be three positive integers"):
        rena(x, 3, mask=mask, block_shape=(4, 4))
    two = np.zeros((5, 1, 1), bool)
    two[[0, 1, 3, 4]] = True
    with pytest.raises(
        InputError, match=r"n_clusters=1: the mask \(or connectivity\) has 2 separate"
    ):
        rena(np.zeros((4, 2)), 1, mask=two)


def test_auto_block_shape_bounds_the_voxels_of_a_block():
    from daskparcel.clustering.rena import _block_ids, auto_block_shape

    mask = np.zeros((91, 109, 91), bool)
    mask[10:80, 10:100, 10:80] = True  # 441,000 voxels
    shape = auto_block_shape(mask, max_voxels=50_000)
    assert shape is not None
    counts = np.bincount(_block_ids(mask, shape))
    assert counts.max() <= 2 * 50_000 and len(counts) >= 441_000 // 50_000
    assert auto_block_shape(mask[:20, :20, :20], max_voxels=50_000) is None
