"""Synthetic data: deterministic, chunk-independent, realistic statistics, a contiguous planted parcellation."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import raise_if_dask_computes
from scipy import ndimage

from daskparcel import datasets
from daskparcel.errors import InputError


def test_grid_and_mask():
    run = datasets.synthetic_run(4, 20)
    assert run["bold"].shape == (50, 59, 50, 20)
    mask = np.asarray(datasets.brain_mask(4).dataobj) > 0
    assert 20_000 < mask.sum() < 40_000
    assert ndimage.label(mask)[1] == 1


def test_lazy_and_chunking_independent():
    with raise_if_dask_computes():
        a = datasets.synthetic_run(4, 40, chunk_volumes=16)
        b = datasets.synthetic_run(4, 40, chunk_volumes=7)
    np.testing.assert_array_equal(a["bold"].values, b["bold"].values)
    c = datasets.synthetic_run(4, 40, random_state=1)
    assert not np.array_equal(a["bold"].values[..., :2], c["bold"].values[..., :2])


def test_realistic_tsnr_and_autocorrelation():
    run = datasets.synthetic_run(4, 168)
    mask = np.asarray(datasets.brain_mask(4).dataobj) > 0
    x = run["bold"].values[mask].astype(np.float64)
    tsnr = x.mean(1) / x.std(1)
    assert 50 <= np.median(tsnr) <= 120
    xc = x - x.mean(1, keepdims=True)
    lag1 = (xc[:, 1:] * xc[:, :-1]).sum(1) / (xc**2).sum(1)
    assert 0.15 <= np.median(lag1) <= 0.35


def test_planted_parcellation_contiguous_and_recoverable():
    labels = np.asarray(datasets.planted_parcellation(4, 30).dataobj)
    mask = np.asarray(datasets.brain_mask(4).dataobj) > 0
    assert set(np.unique(labels[mask])) == set(range(1, 31))
    assert (labels[~mask] == 0).all()
    for k in range(1, 31):
        assert ndimage.label(labels == k)[1] == 1, f"parcel {k} is not connected"
    # voxels of one parcel share a time course: within-parcel correlation beats between-parcel correlation
    x = datasets.synthetic_run(4, 120, n_parcels=30)["bold"].values[mask]
    lab = labels[mask]
    z = (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)
    a, b = np.nonzero(lab == 1)[0][:20], np.nonzero(lab == 2)[0][:20]
    within = (z[a] @ z[a].T / z.shape[1])[np.triu_indices(len(a), 1)].mean()
    between = (z[a] @ z[b].T / z.shape[1]).mean()
    assert within > 0.3 > abs(between)


def test_subjects_share_parcellation_not_signals():
    a, b = datasets.synthetic_cohort(2, 4, 16)
    assert not np.allclose(a["bold"].values, b["bold"].values)


def test_bad_arguments():
    with pytest.raises(InputError, match="resolution=3"):
        datasets.synthetic_run(3)
    with pytest.raises(InputError, match="n_parcels=0"):
        datasets.synthetic_run(4, 10, n_parcels=0)
    with pytest.raises(InputError, match="n_subjects=0"):
        datasets.synthetic_cohort(0)
