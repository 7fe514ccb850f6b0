"""Connectivity of a mask: the 6-neighbour lattice against scikit-learn's grid_to_graph."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import scipy.sparse as sp
from conftest import real_scan
from scipy import ndimage
from sklearn.feature_extraction.image import grid_to_graph

from daskparcel.clustering.connectivity import (
    check_connectivity,
    components,
    grid_connectivity,
    grid_edges,
)
from daskparcel.errors import InputError


def _same_pattern(a: sp.spmatrix, b: sp.spmatrix) -> bool:
    a = sp.csr_matrix(a != 0)
    b = sp.csr_matrix(b != 0)
    return a.shape == b.shape and (a != b).nnz == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shape", [(7, 5, 6), (1, 9, 4), (3, 3, 1)])
def test_grid_connectivity_matches_grid_to_graph_random(
    seed: int, shape: tuple[int, int, int]
) -> None:
    rng = np.random.default_rng(seed)
    mask = rng.random(shape) > 0.3
    mask.flat[0] = True
    ours = grid_connectivity(mask)
    ref = grid_to_graph(*shape, mask=mask)
    assert _same_pattern(ours, ref)
    rows, cols = grid_edges(mask)
    assert np.all(rows < cols)
    assert len(rows) == (ref.nnz - mask.sum()) // 2


@pytest.mark.real_data
def test_grid_connectivity_matches_grid_to_graph_real_mask() -> None:
    mask = np.asarray(nib.load(real_scan("rapidtide_mask")).get_fdata()) > 0
    assert _same_pattern(grid_connectivity(mask), grid_to_graph(*mask.shape, mask=mask))


def test_check_connectivity_symmetrises_and_drops_diagonal() -> None:
    dense = np.zeros((4, 4))
    dense[0, 1] = 2.0
    dense[2, 2] = 1.0
    dense[3, 2] = -1.0
    out = check_connectivity(dense, 4)
    expected = np.zeros((4, 4), dtype=np.int8)
    expected[0, 1] = expected[1, 0] = expected[2, 3] = expected[3, 2] = 1
    np.testing.assert_array_equal(out.toarray(), expected)


@pytest.mark.parametrize("bad", [sp.eye(5, format="csr"), np.zeros((4, 3)), np.zeros(4)])
def test_check_connectivity_wrong_size(bad: object) -> None:
    with pytest.raises(InputError, match=r"connectivity: .*(does not match the 4 voxels|square)"):
        check_connectivity(bad, 4)


def test_components_two_blobs() -> None:
    mask = np.zeros((6, 4, 3), bool)
    mask[0:2] = True
    mask[4:6, :2] = True
    n, labels = components(grid_connectivity(mask))
    lab, n_ref = ndimage.label(mask)
    assert n == n_ref == 2
    np.testing.assert_array_equal(labels, lab[mask] - 1)


def test_empty_mask_is_refused() -> None:
    with pytest.raises(InputError, match="mask: the mask is empty"):
        grid_connectivity(np.zeros((3, 3, 3), bool))
    with pytest.raises(InputError, match="expected a 3D boolean array"):
        grid_connectivity(np.ones((3, 3), bool))
