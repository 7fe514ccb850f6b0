"""Surface runs (nilearn SurfaceImage, GIfTI pairs) end to end, against nilearn's surface ``Parcellations``.

The data are synthetic fsaverage5 runs (20,484 vertices) with a parcellation planted on the mesh. References are
computed here, independently of the code under test: the mesh graph from the faces, the compression R^2 and the
parcel means in numpy, nilearn's ``Parcellations`` and ``SurfaceLabelsMasker``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import xarray as xr
from conftest import traced_peak
from scipy.sparse.csgraph import connected_components
from sklearn.metrics import adjusted_rand_score

from daskparcel import Parcellations
from daskparcel.datasets_surface import planted_surface_parcellation, synthetic_surface_run
from daskparcel.errors import InputError
from daskparcel.ingest.surface import gifti_run

PARTS = ("left", "right")
N_TIME = 40
PLANTED = 50


def vertices(img: Any) -> np.ndarray:
    """A SurfaceImage's data, hemispheres stacked (left then right)."""
    return np.concatenate([np.asarray(img.data.parts[p]) for p in PARTS], axis=0)


def mesh_graph(img: Any) -> sp.csr_matrix:
    """The vertex adjacency of a SurfaceImage's meshes (both hemispheres, no edge between them)."""
    blocks = []
    for part in PARTS:
        faces = np.asarray(img.mesh.parts[part].faces)
        n = img.mesh.parts[part].n_vertices
        i = faces[:, [0, 1, 2]].ravel()
        j = faces[:, [1, 2, 0]].ravel()
        blocks.append(sp.coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n)))
    graph = sp.block_diag(blocks).tocsr()
    return (graph + graph.T).tocsr()


def compression_r2(data: np.ndarray, labels: np.ndarray) -> float:
    """Variance of the centred vertex series explained by their parcel means (numpy, float64)."""
    x = data.astype(np.float64)
    x -= x.mean(axis=1, keepdims=True)
    codes = np.unique(labels, return_inverse=True)[1].ravel()
    sums = np.zeros((codes.max() + 1, x.shape[1]))
    np.add.at(sums, codes, x)
    means = sums / np.bincount(codes)[:, None]
    return float(1 - ((x - means[codes]) ** 2).sum() / (x**2).sum())


def disconnected(
    labels: np.ndarray, graph: sp.csr_matrix, keep: np.ndarray | None = None
) -> list[int]:
    """Labels (among the kept vertices) that are not one connected region of ``graph``."""
    keep = np.ones(len(labels), dtype=bool) if keep is None else keep
    out = []
    for value in np.unique(labels[keep]):
        ids = np.flatnonzero(keep & (labels == value))
        n, _ = connected_components(graph[ids][:, ids], directed=False)
        if n != 1:
            out.append(int(value))
    return out


def nilearn_fit(img: Any, method: str, k: int, mask: Any = None) -> np.ndarray:
    from nilearn.regions import Parcellations as NilearnParcellations

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = NilearnParcellations(
            method=method, n_parcels=k, smoothing_fwhm=None, mask=mask, random_state=0
        ).fit(img)
    return vertices(est.labels_img_)


@pytest.fixture(scope="module")
def run() -> Any:
    return synthetic_surface_run(N_TIME, n_parcels=PLANTED, random_state=0)


@pytest.fixture(scope="module")
def truth() -> np.ndarray:
    return vertices(planted_surface_parcellation(PLANTED, random_state=0))


@pytest.fixture(scope="module")
def graph(run: Any) -> sp.csr_matrix:
    return mesh_graph(run)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("surface-store")


def fit(img: Any, method: str, k: int, store: Path, **params: Any) -> Parcellations:
    return Parcellations(
        method=method, n_parcels=k, smoothing_fwhm=None, store=store, **params
    ).fit(img)


def test_planted_parcellation_is_contiguous_on_the_mesh(
    truth: np.ndarray, graph: sp.csr_matrix
) -> None:
    assert np.array_equal(np.unique(truth), np.arange(1, PLANTED + 1))
    assert disconnected(truth, graph) == []
    n_left = 10242
    assert not set(truth[:n_left]) & set(truth[n_left:])  # no planted parcel spans both hemispheres


def test_mesh_edges_are_nilearns(run: Any) -> None:
    """The edges of a masked surface geometry: nilearn's ``make_edges_surface`` within each hemisphere,
    restricted to the mask, numbered in the kept vertices' order; the hemispheres are separate components."""
    from nilearn.regions.rena_clustering import make_edges_surface

    from daskparcel.geometry.surface import SurfaceGeometry

    geometry = SurfaceGeometry.from_mesh(run.mesh)
    keep = np.random.default_rng(0).random(20484) > 0.1
    masked = geometry.with_mask(geometry.surface_image(keep, fill=False))
    index = np.cumsum(keep) - 1
    expected, start = set(), 0
    for part in PARTS:
        n = run.mesh.parts[part].n_vertices
        edges, inside = make_edges_surface(run.mesh.parts[part].faces, keep[start : start + n])
        for a, b in edges[:, inside].T + start:
            expected.add((int(min(index[a], index[b])), int(max(index[a], index[b]))))
        start += n
    rows, cols = masked.edges()
    assert set(zip(rows.tolist(), cols.tolist(), strict=True)) == expected
    assert len(rows) == len(expected)  # each edge once
    n_comp, comp = geometry.components()
    assert n_comp == 2 and set(comp[:10242]) == {0} and set(comp[10242:]) == {1}


@pytest.mark.parametrize(("method", "k"), [("ward", 100), ("kmeans", 50)])
def test_ward_and_kmeans_against_nilearn(
    run: Any, truth: np.ndarray, graph: sp.csr_matrix, store: Path, method: str, k: int
) -> None:
    est = fit(run, method, k, store)
    labels = vertices(est.labels_img_)
    assert labels.dtype == np.int32
    # exactly K over both hemispheres, every vertex labelled
    assert np.array_equal(np.unique(labels), np.arange(1, k + 1))
    data, nilearn_labels = vertices(run), nilearn_fit(run, method, k)
    ours, theirs = compression_r2(data, labels), compression_r2(data, nilearn_labels)
    assert ours >= theirs - 0.01, (ours, theirs)
    if method == "ward":
        assert disconnected(labels, graph) == []
        est.set_params(n_parcels=PLANTED).fit(run)  # the kept tree, cut at the planted K
        ari = adjusted_rand_score(truth, vertices(est.labels_img_))
    else:
        ari = adjusted_rand_score(truth, labels)
    nilearn_ari = adjusted_rand_score(truth, nilearn_labels)
    print(
        f"{method} {k}: R2 {ours:.4f} (nilearn {theirs:.4f}), ARI {ari:.3f} (nilearn {nilearn_ari:.3f} at {k})"
    )
    assert ari > (0.95 if method == "ward" else 0.85)
    assert ari >= nilearn_ari - 0.02


@pytest.mark.parametrize(("method", "k"), [("hierarchical_kmeans", 50), ("rena", 100)])
def test_hierarchical_kmeans_and_rena_against_nilearn(
    run: Any, truth: np.ndarray, graph: sp.csr_matrix, store: Path, method: str, k: int
) -> None:
    labels = vertices(fit(run, method, k, store).labels_img_)
    assert np.array_equal(np.unique(labels), np.arange(1, k + 1))
    data, nilearn_labels = vertices(run), nilearn_fit(run, method, k)
    ours, theirs = compression_r2(data, labels), compression_r2(data, nilearn_labels)
    assert ours >= theirs - 0.01, (ours, theirs)
    ari, nilearn_ari = (
        adjusted_rand_score(truth, labels),
        adjusted_rand_score(truth, nilearn_labels),
    )
    print(
        f"{method} {k}: R2 {ours:.4f} (nilearn {theirs:.4f}), ARI {ari:.3f} (nilearn {nilearn_ari:.3f})"
    )
    assert ari >= nilearn_ari - 0.02, (ari, nilearn_ari)
    if method == "rena":
        assert disconnected(labels, graph) == []


@pytest.mark.parametrize("method", ["complete", "average", "ward"])
def test_agglomerations_on_a_surface_mask_against_nilearn(
    run: Any, graph: sp.csr_matrix, store: Path, method: str
) -> None:
    """A mask keeping the front of each hemisphere (nilearn's average linkage is too slow on all 20k
    vertices for a test): parcels inside the mask, connected, R^2 at least nilearn's - 0.01."""
    from daskparcel.geometry.surface import SurfaceGeometry

    geometry = SurfaceGeometry.from_mesh(run.mesh)
    coords = np.concatenate(geometry.coordinates)
    keep = coords[:, 1] > np.quantile(coords[:, 1], 0.85)
    mask = geometry.surface_image(keep, fill=False)
    k = 40
    labels = vertices(fit(run, method, k, store, mask=mask).labels_img_)
    assert np.all(labels[~keep] == 0)
    assert np.array_equal(np.unique(labels[keep]), np.arange(1, k + 1))
    assert disconnected(labels, graph, keep) == []
    data = vertices(run)[keep]
    theirs = compression_r2(data, nilearn_fit(run, method, k, mask=mask)[keep])
    ours = compression_r2(data, labels[keep])
    assert ours >= theirs - 0.01, (ours, theirs)


def test_transform_is_parcel_means_and_inverse_gives_a_surface_image(run: Any, store: Path) -> None:
    from nilearn.maskers import SurfaceLabelsMasker

    est = fit(run, "ward", 30, store)
    labels = vertices(est.labels_img_)
    data = vertices(run).astype(np.float64)
    reference = np.stack([data[labels == p].mean(axis=0) for p in range(1, 31)], axis=1)
    signals = est.transform(run)
    assert signals.dims == ("time", "parcel")
    np.testing.assert_allclose(np.asarray(signals), reference, rtol=1e-5)
    # nilearn reads our labels image as its own
    theirs = SurfaceLabelsMasker(est.labels_img_, standardize=None).fit_transform(run)
    np.testing.assert_allclose(np.asarray(signals), theirs, rtol=1e-5)
    # a run that was not fitted is read from its image
    other = synthetic_surface_run(N_TIME, n_parcels=PLANTED, subject=1)
    other_data = vertices(other).astype(np.float64)
    np.testing.assert_allclose(
        np.asarray(est.transform(other)),
        np.stack([other_data[labels == p].mean(axis=0) for p in range(1, 31)], axis=1),
        rtol=1e-5,
    )
    # the same data on the inflated surfaces (same vertices and faces) are read with the same labels
    from nilearn.datasets import load_fsaverage
    from nilearn.surface import SurfaceImage

    inflated = SurfaceImage(load_fsaverage("fsaverage5")["inflated"], dict(run.data.parts))
    np.testing.assert_allclose(np.asarray(est.transform(inflated)), reference, rtol=1e-5)
    compressed = est.inverse_transform(signals)
    assert isinstance(compressed, SurfaceImage)
    assert compressed.shape == run.shape
    np.testing.assert_allclose(vertices(compressed), reference[:, labels - 1].T, rtol=1e-5)
    both = est.inverse_transform([signals, np.asarray(signals)])
    assert [b.shape for b in both] == [run.shape, run.shape]


def test_cleaning_as_nilearn_surface_labels_masker(run: Any, store: Path) -> None:
    """Detrending, confounds and z-scoring of a surface fit: the fitted vertex signals are nilearn's
    ``signal.clean`` of the run's, and ``transform`` is nilearn's ``SurfaceLabelsMasker`` with the same
    cleaning."""
    from nilearn.maskers import SurfaceLabelsMasker
    from nilearn.signal import clean

    confounds = np.random.default_rng(0).standard_normal((N_TIME, 2))
    params = {"detrend": True, "standardize": "zscore_sample"}
    est = Parcellations(
        method="kmeans", n_parcels=20, smoothing_fwhm=None, store=store, **params
    ).fit(run, confounds=confounds)
    fitted = np.asarray(est.store_.signals("cleaned"))
    expected = clean(vertices(run).T.astype(np.float64), confounds=confounds, **params).T
    np.testing.assert_allclose(fitted, expected, atol=2e-4)
    masker = SurfaceLabelsMasker(est.labels_img_, **params)
    theirs = masker.fit_transform(run, confounds=confounds)
    np.testing.assert_allclose(
        np.asarray(est.transform(run, confounds=confounds)), theirs, atol=2e-4
    )


def test_several_runs_and_a_gifti_pair(run: Any, store: Path, tmp_path: Path) -> None:
    """Two subjects are two runs; a run written as GIfTI func.gii files reads back as the same run."""
    second = synthetic_surface_run(N_TIME, n_parcels=PLANTED, subject=1)
    est = fit([run, second], "kmeans", 20, store)
    assert len(est.runs_) == 2
    assert [np.asarray(s).shape for s in est.transform([run, second])] == [(N_TIME, 20)] * 2
    func = {}
    for part, hemi in zip(PARTS, "LR", strict=True):
        data = np.asarray(run.data.parts[part], dtype=np.float32)
        image = nib.gifti.GiftiImage(
            darrays=[nib.gifti.GiftiDataArray(data[:, t]) for t in range(data.shape[1])]
        )
        func[part] = tmp_path / f"sub-01_hemi-{hemi}_bold.func.gii"
        nib.save(image, func[part])
    pair = gifti_run(func, mesh="fsaverage5")
    np.testing.assert_array_equal(vertices(pair), vertices(run))
    direct = vertices(fit(run, "ward", 20, store).labels_img_)
    np.testing.assert_array_equal(vertices(fit(pair, "ward", 20, store).labels_img_), direct)


def one_line_error(excinfo: pytest.ExceptionInfo[InputError]) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_smoothing_refused_before_anything_is_written(run: Any, tmp_path: Path) -> None:
    with pytest.raises(InputError) as excinfo:
        # smoothing_fwhm left at nilearn's default, 4 mm
        Parcellations(method="ward", n_parcels=10, store=tmp_path).fit(run)
    assert "smoothing_fwhm=None" in one_line_error(excinfo)
    assert list(tmp_path.iterdir()) == []


def test_mixed_runs_refused_before_any_file_is_read(run: Any, tmp_path: Path) -> None:
    """The NIfTI path does not exist: reading or hashing it would fail with another error."""
    with pytest.raises(InputError) as excinfo:
        Parcellations(method="ward", smoothing_fwhm=None, store=tmp_path).fit(
            [run, str(tmp_path / "sub-01_bold.nii.gz")]
        )
    message = one_line_error(excinfo)
    assert "SurfaceImage" in message and "separately" in message
    assert list(tmp_path.iterdir()) == []
    volume = nib.Nifti1Image(np.zeros((4, 4, 4, 5), dtype=np.float32), np.eye(4))
    with pytest.raises(InputError) as excinfo:  # a surface mask for volume runs
        Parcellations(method="ward", mask=run, store=tmp_path).fit(volume)
    assert "mask: a SurfaceImage for volume runs" in one_line_error(excinfo)
    assert list(tmp_path.iterdir()) == []


def test_mesh_and_data_of_different_sizes_refused(run: Any, tmp_path: Path) -> None:
    cache = tmp_path / "store"
    data = np.zeros((100, 5), dtype=np.float32)
    path = tmp_path / "hemi-L.func.gii"
    nib.save(nib.gifti.GiftiImage(darrays=[nib.gifti.GiftiDataArray(c) for c in data.T]), path)
    with pytest.raises(InputError) as excinfo:
        gifti_run({"left": path}, mesh="fsaverage5")
    assert "100 vertices" in one_line_error(excinfo) and "10242" in str(excinfo.value)
    # a mask on other meshes
    from daskparcel.geometry.surface import SurfaceGeometry

    geometry = SurfaceGeometry.from_mesh(run.mesh)
    left_only = geometry.surface_image(np.ones(20484, dtype=bool), fill=False)
    del left_only.data.parts["right"]
    del left_only.mesh.parts["right"]
    with pytest.raises(InputError) as excinfo:
        Parcellations(method="ward", smoothing_fwhm=None, mask=left_only, store=cache).fit(run)
    assert "mask" in one_line_error(excinfo)
    assert not cache.exists()


def test_transform_of_another_kind_of_run_refused(run: Any, store: Path) -> None:
    import nibabel as nib

    est = fit(run, "kmeans", 10, store)
    volume = nib.Nifti1Image(np.zeros((4, 4, 4, 5), dtype=np.float32), np.eye(4))
    with pytest.raises(InputError) as excinfo:
        est.transform(volume)
    assert "fitted on the meshes" in one_line_error(excinfo)


def test_fit_folder_of_a_surface_fit(run: Any, store: Path, tmp_path: Path) -> None:
    """GIfTI label files per hemisphere with the look-up table, read back by nibabel and nilearn."""
    from nilearn.connectome import ConnectivityMeasure
    from nilearn.surface import load_surf_data

    from daskparcel.outputs.results import write_fit_outputs

    est = fit(run, "ward", 12, store)
    doc = write_fit_outputs(est, run, tmp_path / "out", connectomes=["correlation"])
    out = tmp_path / "out"
    lut = pd.read_csv(out / "atlas-ward12_dseg.tsv", sep="\t")
    assert lut["index"].tolist() == list(range(13))
    labels = vertices(est.labels_img_)
    assert lut["size"].tolist()[1:] == np.bincount(labels, minlength=13)[1:].tolist()
    for part, hemi in zip(PARTS, "LR", strict=True):
        path = out / f"atlas-ward12_hemi-{hemi}_dseg.label.gii"
        image = nib.load(path)
        values = np.asarray(est.labels_img_.data.parts[part])
        np.testing.assert_array_equal(image.darrays[0].data, values)
        np.testing.assert_array_equal(load_surf_data(path), values)
        table = image.labeltable.get_labels_as_dict()
        assert set(np.unique(values)) <= set(table)
        assert {table[v] for v in np.unique(values)} == set(lut["name"][lut["hemisphere"] == hemi])
        assert nib.load(out / f"r2_hemi-{hemi}.shape.gii").darrays[0].data.shape == values.shape
    r2 = compression_r2(vertices(run), labels)
    assert doc["metrics"]["compression_r2"] == pytest.approx(r2, abs=1e-4)
    assert doc["metrics"]["contiguity"] == 1.0 and doc["data"]["vertices_in_mask"] == 20484
    signals = xr.open_zarr(out / "parcel_signals.zarr", consolidated=False)["parcel_signals"]
    np.testing.assert_allclose(signals.values, np.asarray(est.transform(run)), rtol=1e-6)
    # the meshes are kept, and the report draws the parcels and the R^2 on them
    for part, hemi in zip(PARTS, "LR", strict=True):
        mesh = nib.load(out / f"mesh_hemi-{hemi}.surf.gii")
        np.testing.assert_allclose(
            mesh.darrays[0].data, run.mesh.parts[part].coordinates, rtol=1e-6
        )
        np.testing.assert_array_equal(mesh.darrays[1].data, run.mesh.parts[part].faces)
    # the run's BIDS tables, as for volumes: its parcel time series and connectome, and the group's
    (series_tsv,) = out.rglob("sub-*_atlas-ward12_stat-mean_timeseries.tsv")
    series = pd.read_csv(series_tsv, sep="\t")
    assert list(series.columns) == lut["name"].tolist()[1:]
    np.testing.assert_allclose(series.to_numpy(), np.asarray(est.transform(run)), rtol=1e-6)
    (relmat_tsv,) = out.rglob("sub-*_atlas-ward12_stat-correlation_relmat.tsv")
    values = series.to_numpy(np.float32).astype(np.float64)  # written from float32 signals
    expected = ConnectivityMeasure(kind="correlation").fit_transform([values])[0]
    np.testing.assert_allclose(pd.read_csv(relmat_tsv, sep="\t").to_numpy(), expected, rtol=1e-7)
    assert (out / "atlas-ward12_stat-correlation_relmat.tsv").is_file()
    assert doc["bids"]["connectomes"] == ["correlation"]
    html = (out / "report.html").read_text()
    assert "Parcels on the mesh" in html and "Figure not drawn" not in html
    assert "Group connectome (correlation)" in html
    assert html.count('<img src="data:image/png;base64,') == 3


@pytest.mark.parametrize("method", ["ward", "rena"])
def test_fewer_parcels_than_hemispheres_refused_before_anything_is_written(
    run: Any, tmp_path: Path, method: str
) -> None:
    with pytest.raises(InputError) as excinfo:
        Parcellations(method=method, n_parcels=1, smoothing_fwhm=None, store=tmp_path).fit(run)
    assert "n_parcels>=2" in one_line_error(excinfo)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InputError) as excinfo:
        Parcellations(method=method, n_parcels=30000, smoothing_fwhm=None, store=tmp_path).fit(run)
    assert "20484" in one_line_error(excinfo)
    assert list(tmp_path.iterdir()) == []


def test_icosphere_meshes_for_scale_runs(tmp_path: Path) -> None:
    """Closed triangulated spheres (V - E + F = 2, every edge in two faces, outward faces) of 10 * 4**n + 2
    vertices; a planted run on them is parcellated into connected parcels."""
    from daskparcel.datasets_surface import icosphere

    for n in range(4):
        coords, faces = icosphere(n)
        assert len(coords) == 10 * 4**n + 2 and len(faces) == 20 * 4**n
        sides = np.sort(
            np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1
        )
        _, counts = np.unique(sides, axis=0, return_counts=True)
        assert set(counts.tolist()) == {2}
        assert len(coords) - len(counts) + len(faces) == 2
        normals = np.cross(
            coords[faces[:, 1]] - coords[faces[:, 0]], coords[faces[:, 2]] - coords[faces[:, 0]]
        )
        assert np.all(np.einsum("ij,ij->i", normals, coords[faces].mean(axis=1)) > 0)
    small = synthetic_surface_run(20, n_parcels=20, mesh="ico3")
    assert small.shape == (2 * 642, 20)
    labels = vertices(fit(small, "ward", 20, tmp_path).labels_img_)
    assert np.array_equal(np.unique(labels), np.arange(1, 21))
    assert disconnected(labels, mesh_graph(small)) == []
    truth = vertices(planted_surface_parcellation(20, mesh="ico3"))
    assert adjusted_rand_score(truth, labels) > 0.9


def test_more_vertices_than_a_nifti_axis_holds(tmp_path: Path) -> None:
    """81,924 vertices (two ico6 spheres): no NIfTI image of the pseudo-grid is made (nibabel warns beyond
    32,767 voxels along an axis); labels_ name the kept vertices."""
    big = synthetic_surface_run(10, n_parcels=40, mesh="ico6")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est = fit(big, "rena", 40, tmp_path)
    assert not [w for w in caught if "Freesurfer" in str(w.message)]
    assert np.array_equal(est.labels_["vertex"].values, np.arange(81924))
    assert np.array_equal(np.unique(vertices(est.labels_img_)), np.arange(1, 41))


def test_an_in_memory_surface_run_is_copied_once() -> None:
    """A SurfaceImage's hemispheres are stacked once (one copy of the run), and that copy is chunked in place."""
    from daskparcel.ingest.resolve import resolve_runs

    img = synthetic_surface_run(100, n_parcels=20)
    data = np.concatenate([np.asarray(v) for v in img.data.parts.values()])
    (run,), peak = traced_peak(resolve_runs, [img], chunk_volumes=32)
    assert peak < 1.5 * data.nbytes, (
        f"resolving a surface run allocated {peak} bytes for {data.nbytes}"
    )
    bold = run.data["bold"].data
    np.testing.assert_array_equal(bold.compute(scheduler="sync")[:, 0, 0, :], data)
