"""CIFTI-2 dense time series end to end: a synthetic dtseries with two cortical structures (icosphere meshes, a
medial wall left out) and two subcortical voxel structures, with a parcellation planted in each structure.

References are computed here, from nibabel's reading of the files: the grayordinates' graph (mesh faces for the
cortex, voxel distance 1 within a subcortical structure), the structure of each grayordinate, the parcel means.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import scipy.sparse as sp
from nibabel import cifti2
from scipy.sparse.csgraph import connected_components
from sklearn.metrics import adjusted_rand_score

from daskparcel import Parcellations, cifti_run, write_fit_outputs
from daskparcel.datasets_cifti import SyntheticCifti, cifti_brain_model, synthetic_cifti_run
from daskparcel.errors import InputError

N_TIME = 60
PLANTED = 30
MESH_PART = {"CIFTI_STRUCTURE_CORTEX_LEFT": "left", "CIFTI_STRUCTURE_CORTEX_RIGHT": "right"}


def brain_model(path: Path) -> Any:
    return nib.load(path).header.get_axis(1)


def structure_index(axis: Any) -> np.ndarray:
    """The structure (0, 1, ...) of each grayordinate, from nibabel's brain model."""
    names = list(dict.fromkeys(axis.name))
    return np.array([names.index(n) for n in axis.name])


def graph(axis: Any, meshes: Any) -> sp.csr_matrix:
    """Grayordinates joined by a mesh side (both ends in the brain model) or by a voxel face (distance 1),
    within one structure."""
    n = len(axis)
    rows, cols = [], []
    for name, span, sub in axis.iter_structures():
        ids = np.arange(span.start, span.start + len(sub))
        if name in MESH_PART:
            faces = np.asarray(meshes.parts[MESH_PART[name]].faces)
            index = np.full(axis.nvertices[name], -1)
            index[sub.vertex] = ids
            for a, b in ((0, 1), (1, 2), (2, 0)):
                i, j = index[faces[:, a]], index[faces[:, b]]
                keep = (i >= 0) & (j >= 0)
                rows.append(i[keep])
                cols.append(j[keep])
        else:
            distance = np.abs(sub.voxel[:, None, :] - sub.voxel[None, :, :]).sum(axis=-1)
            i, j = np.nonzero(distance == 1)
            rows.append(ids[i])
            cols.append(ids[j])
    r, c = np.concatenate(rows), np.concatenate(cols)
    g = sp.coo_matrix((np.ones(len(r)), (r, c)), shape=(n, n)).tocsr()
    return (g + g.T).tocsr()


def disconnected(labels: np.ndarray, g: sp.csr_matrix) -> list[int]:
    out = []
    for value in np.unique(labels):
        ids = np.flatnonzero(labels == value)
        if connected_components(g[ids][:, ids], directed=False)[0] != 1:
            out.append(int(value))
    return out


def spanning(labels: np.ndarray, structure: np.ndarray) -> list[int]:
    """Parcels with grayordinates in more than one structure."""
    return [int(v) for v in np.unique(labels) if len(set(structure[labels == v])) > 1]


def parcel_means(data: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """(time, parcel) means of (time, grayordinate) data, in float64."""
    x = data.astype(np.float64)
    return np.stack([x[:, labels == p].mean(axis=1) for p in range(1, k + 1)], axis=1)


def one_line(excinfo: pytest.ExceptionInfo[InputError]) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def gifti_meshes(meshes: Any, folder: Path) -> dict[str, Path]:
    """The meshes written as GIfTI ``surf.gii`` files: {"left": path, "right": path}."""
    paths = {}
    for part in ("left", "right"):
        mesh = meshes.parts[part]
        image = nib.gifti.GiftiImage()
        for array, intent in (
            (np.asarray(mesh.coordinates, np.float32), "NIFTI_INTENT_POINTSET"),
            (np.asarray(mesh.faces, np.int32), "NIFTI_INTENT_TRIANGLE"),
        ):
            image.add_gifti_data_array(nib.gifti.GiftiDataArray(array, intent=intent))
        paths[part] = folder / f"hemi-{part[0].upper()}_midthickness.surf.gii"
        nib.save(image, paths[part])
    return paths


def truncated_copy(path: Path, folder: Path) -> Path:
    """The file with its data cut off after the header: reading any frame of it fails."""
    folder.mkdir(exist_ok=True)
    copy = folder / path.name
    offset = int(nib.load(path).dataobj.offset)
    copy.write_bytes(path.read_bytes()[: offset + 16])
    return copy


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> SyntheticCifti:
    folder = tmp_path_factory.mktemp("cifti")
    return synthetic_cifti_run(
        folder / "sub-01_task-rest_bold.dtseries.nii", N_TIME, n_parcels=PLANTED
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cifti-store")


@pytest.fixture(scope="module")
def ward(data: SyntheticCifti, store: Path) -> Parcellations:
    return Parcellations(method="ward", n_parcels=PLANTED, smoothing_fwhm=None, store=store).fit(
        cifti_run(data.path, meshes=data.meshes)
    )


@pytest.fixture(scope="module")
def kmeans(data: SyntheticCifti, store: Path) -> Parcellations:
    # a path given directly: no meshes, which kmeans does not need
    return Parcellations(method="kmeans", n_parcels=20, smoothing_fwhm=None, store=store).fit(
        str(data.path)
    )


def test_synthetic_dtseries(data: SyntheticCifti) -> None:
    """Four structures (two cortical with a medial wall left out, two subcortical), planted parcels that are
    connected and within one structure each, float32 frames with a 2 s step."""
    img = nib.load(data.path)
    axis = img.header.get_axis(1)
    assert isinstance(img.header.get_axis(0), cifti2.SeriesAxis)
    assert img.header.get_axis(0).step == 2.0 and img.shape == (N_TIME, len(axis))
    names = list(dict.fromkeys(axis.name))
    assert names[:2] == ["CIFTI_STRUCTURE_CORTEX_LEFT", "CIFTI_STRUCTURE_CORTEX_RIGHT"]
    assert len(names) == 4 and axis.volume_mask.sum() > 100
    for name in names[:2]:
        kept = int((axis.name == name).sum())
        assert 0.7 * 642 < kept < 642  # a medial wall is out of the brain model
    assert np.array_equal(np.unique(data.labels), np.arange(1, PLANTED + 1))
    g = graph(axis, data.meshes)
    assert disconnected(data.labels, g) == []
    assert spanning(data.labels, structure_index(axis)) == []
    frames = np.asarray(img.dataobj)
    assert frames.dtype == np.float32 and np.all(np.isfinite(frames))


def test_grayordinates_are_read_lazily_in_blocks(data: SyntheticCifti) -> None:
    """The run's bold is (grayordinate, 1, 1, time) in blocks of whole grayordinate series (voxel-chunk of
    them); its graph holds no data (only the path), and a block is the file's grayordinates a:b."""
    import dask

    from daskparcel.ingest.cifti import open_cifti_run

    with dask.config.set({"daskparcel.voxel-chunk": 500}):
        run = open_cifti_run(data.path, 0)
    bold = run.data["bold"].data
    n = len(brain_model(data.path))
    assert bold.shape == (n, 1, 1, N_TIME) and bold.dtype == np.float32
    assert bold.chunks == ((500, 500, n - 1000), (1,), (1,), (N_TIME,))
    assert len(pickle.dumps(dict(bold.__dask_graph__()))) < n * N_TIME * 4 / 10
    reference = np.asarray(nib.load(data.path).dataobj, dtype=np.float32)
    np.testing.assert_array_equal(
        bold.blocks[1, 0, 0, 0].compute()[:, 0, 0, :], reference[:, 500:1000].T
    )
    # the array-like itself: read in runs of grayordinates (shorter than the selection here, the last one
    # partial), frames with a step, and any other selection (through nibabel's proxy)
    from daskparcel.ingest.cifti import CiftiFrames

    frames = CiftiFrames(data.path, nib.load(data.path))
    frames.GRAYORDINATES_PER_READ = 300
    np.testing.assert_array_equal(frames[:, :, :, 5:50:3][:, 0, 0], reference[5:50:3].T)
    np.testing.assert_array_equal(frames[10:20, :, :, 3:7][:, 0, 0], reference[3:7, 10:20].T)
    np.testing.assert_array_equal(frames[250:1100][:, 0, 0], reference[:, 250:1100].T)
    assert run.t_r == 2.0 and run.geometry.n_elements == n


def _bytes_read() -> int:
    """Bytes this process has read through read(2) so far (page cache included)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux's /proc/self/io")
def test_signals_pass_reads_each_byte_of_a_dtseries_once(tmp_path: Path) -> None:
    """A dtseries stores each grayordinate's series contiguously: the signals pass reads it by grayordinate
    blocks, so it reads the file once, whatever chunk_volumes (by blocks of 16 frames it read it 13 times),
    and no task holds more than a block of grayordinates (never the whole run)."""
    import dask
    from dask.callbacks import Callback

    from daskparcel.ingest.resolve import prepare_runs
    from daskparcel.preprocessing.pipeline import write_signals
    from daskparcel.store.signals import CleanParams

    run = synthetic_cifti_run(tmp_path / "long.dtseries.nii", 200, subdivisions=4, n_parcels=12)
    size = run.path.stat().st_size
    largest = [0]

    def record(key: Any, result: Any, *args: Any) -> None:
        largest[0] = max(largest[0], int(getattr(result, "nbytes", 0)))

    with dask.config.set({"daskparcel.voxel-chunk": 1024}), Callback(posttask=record):
        runs = prepare_runs(str(run.path), chunk_volumes=16)
        mask = runs[0].geometry.grid_mask()
        params = CleanParams(smoothing_fwhm=None, standardize="zscore_sample")
        write_signals(
            runs, mask, np.eye(4), params, tmp_path / "warm"
        )  # modules imported on first use
        before = _bytes_read()
        store = write_signals(runs, mask, np.eye(4), params, tmp_path / "s")
        read = _bytes_read() - before
    assert size > 3_000_000 and read < 1.3 * size, (read, size)
    assert 0 < largest[0] <= 1024 * 200 * 8 < size, (
        largest[0],
        size,
    )  # a block, in float64 at most
    expected = np.asarray(nib.load(run.path).dataobj).T
    np.testing.assert_array_equal(np.asarray(store.signals("smoothed")), expected)
    assert store.zscore_on_read == "zscore_sample"


def test_lazy_cohort_is_the_written_runs_generated_when_read(tmp_path: Path) -> None:
    """Lazy synthetic runs have the values of the files written with the same arguments (one planted
    parcellation, other signals per subject); resolving and building a fit's signals graph generates nothing;
    their identity is their arguments."""
    from daskparcel.datasets_cifti import synthetic_cifti_cohort
    from daskparcel.ingest.cifti import CiftiArrayRun, CiftiRun
    from daskparcel.ingest.resolve import prepare_runs
    from daskparcel.preprocessing.pipeline import voxel_signals
    from daskparcel.testing import raise_if_dask_computes

    lazy = synthetic_cifti_cohort(2, 40, n_parcels=12, random_state=3)
    files = synthetic_cifti_cohort(2, 40, n_parcels=12, random_state=3, folder=tmp_path)
    assert all(isinstance(r, CiftiArrayRun) for r in lazy.runs)
    assert all(isinstance(r, CiftiRun) for r in files.runs)
    assert np.array_equal(lazy.labels, files.labels)
    with raise_if_dask_computes():
        runs = prepare_runs(lazy.runs)
        mask = runs[0].geometry.grid_mask()
        graphs = [voxel_signals(r.data["bold"], mask) for r in runs]
    for graph_, path in zip(graphs, sorted(tmp_path.glob("*.dtseries.nii")), strict=True):
        written = np.asarray(nib.load(path).dataobj)
        np.testing.assert_array_equal(graph_.compute(), written.T)
    first, second = (
        np.asarray(nib.load(p).dataobj) for p in sorted(tmp_path.glob("*.dtseries.nii"))
    )
    assert not np.allclose(first, second)
    again = synthetic_cifti_cohort(2, 40, n_parcels=12, random_state=3)
    assert [r.identity for r in again.runs] == [r.identity for r in lazy.runs]
    assert len({r.identity for r in lazy.runs}) == 2
    assert runs[0].geometry.same_mesh(cifti_run(files.runs[0].path, files.meshes).geometry)


def test_lazy_cohort_fits_as_its_files(tmp_path: Path) -> None:
    """Ward on the lazy runs gives the labels of ward on the written files (meshes included)."""
    from daskparcel.datasets_cifti import synthetic_cifti_cohort

    lazy = synthetic_cifti_cohort(2, 40, n_parcels=12, random_state=3)
    files = synthetic_cifti_cohort(2, 40, n_parcels=12, random_state=3, folder=tmp_path / "f")
    fits = [
        Parcellations(method="ward", n_parcels=12, smoothing_fwhm=None, store=tmp_path / "s").fit(
            cohort.runs
        )
        for cohort in (lazy, files)
    ]
    np.testing.assert_array_equal(fits[0].labels_.values, fits[1].labels_.values)
    assert adjusted_rand_score(lazy.labels, fits[0].labels_.values) > 0.9


def test_brain_model_split_once_per_geometry(data: SyntheticCifti) -> None:
    """Splitting a brain model into structures is slow in nibabel (~0.4 s at fs_LR size) and every run's is
    compared with the first's: a geometry splits it once (40 lazy fs_LR runs took ~30 s to resolve)."""
    geometry = cifti_run(data.path, meshes=data.meshes).geometry
    assert geometry.structures is geometry.structures
    names = [name for name, _, _ in geometry.structures]
    assert names == list(dict.fromkeys(brain_model(data.path).name))
    other = cifti_run(data.path).geometry
    assert geometry.same_mesh(other) and other.token() == geometry.token()


def test_lazy_run_refused_when_its_array_is_not_on_its_brain_model() -> None:
    from daskparcel.datasets_cifti import synthetic_cifti_cohort
    from daskparcel.ingest.cifti import CiftiArrayRun

    run = synthetic_cifti_cohort(1, 10, n_parcels=12).runs[0]
    bad = CiftiArrayRun(run.data[:-1], run.geometry, "x", "bad")
    with pytest.raises(InputError, match=r"bad: data of shape .* on its brain model") as excinfo:
        Parcellations(method="kmeans", n_parcels=4, smoothing_fwhm=None).fit(bad)
    one_line(excinfo)


def test_ward_and_kmeans_round_trip(
    data: SyntheticCifti, ward: Parcellations, kmeans: Parcellations
) -> None:
    """Exactly K parcels over all structures, none spanning two, every ward parcel connected on the
    grayordinates' graph, the planted parcels found; labels_img_ is a dlabel on the run's brain model."""
    axis = brain_model(data.path)
    structure = structure_index(axis)
    g = graph(axis, data.meshes)
    for est, k, floor in ((ward, PLANTED, 0.9), (kmeans, 20, 0.6)):
        labels = np.asarray(est.labels_.values)
        assert np.array_equal(np.unique(labels), np.arange(1, k + 1))
        assert spanning(labels, structure) == []
        ari = adjusted_rand_score(data.labels, labels)
        print(f"{est.method} {k}: ARI {ari:.3f}")
        assert ari > floor
        img = est.labels_img_
        assert isinstance(img, cifti2.Cifti2Image)
        assert isinstance(img.header.get_axis(0), cifti2.LabelAxis)
        assert img.header.get_axis(1) == axis
        np.testing.assert_array_equal(np.asarray(img.dataobj)[0], labels)
        assert set(img.header.get_axis(0).label[0]) == set(range(k + 1))
    assert disconnected(np.asarray(ward.labels_.values), g) == []


def test_transform_is_parcel_means_and_inverse_gives_a_dtseries(
    data: SyntheticCifti, ward: Parcellations, tmp_path: Path
) -> None:
    labels = np.asarray(ward.labels_.values)
    frames = np.asarray(nib.load(data.path).dataobj)
    reference = parcel_means(frames, labels, PLANTED)
    signals = ward.transform(
        str(data.path)
    )  # the fitted run, named by its path: read from the store
    assert signals.dims == ("time", "parcel")
    np.testing.assert_allclose(np.asarray(signals), reference, rtol=1e-5)
    other = synthetic_cifti_run(
        tmp_path / "sub-02.dtseries.nii", N_TIME, n_parcels=PLANTED, subject=1
    )
    other_frames = np.asarray(nib.load(other.path).dataobj)
    np.testing.assert_allclose(
        np.asarray(ward.transform(cifti_run(other.path))),
        parcel_means(other_frames, labels, PLANTED),
        rtol=1e-5,
    )
    # a Cifti2Image loaded from the file is read from it; one made in memory is refused
    loaded = nib.load(data.path)
    np.testing.assert_allclose(np.asarray(ward.transform(loaded)), reference, rtol=1e-5)
    compressed = ward.inverse_transform(signals)
    with pytest.raises(InputError) as excinfo:
        ward.transform(compressed)
    assert "save it as one" in one_line(excinfo)
    assert isinstance(compressed, cifti2.Cifti2Image)
    assert isinstance(compressed.header.get_axis(0), cifti2.SeriesAxis)
    assert compressed.header.get_axis(1) == brain_model(data.path)
    np.testing.assert_allclose(np.asarray(compressed.dataobj), reference[:, labels - 1], rtol=1e-5)


def test_cleaning_as_nilearn(data: SyntheticCifti, store: Path) -> None:
    """Detrending and z-scoring of the grayordinates: the fitted signals are nilearn's ``signal.clean``."""
    from nilearn.signal import clean

    params = {"detrend": True, "standardize": "zscore_sample"}
    est = Parcellations(
        method="kmeans", n_parcels=10, smoothing_fwhm=None, store=store, **params
    ).fit(str(data.path))
    frames = np.asarray(nib.load(data.path).dataobj, dtype=np.float64)
    expected = clean(frames, **params).T
    np.testing.assert_allclose(np.asarray(est.store_.signals("cleaned")), expected, atol=2e-4)


def test_fit_folder(data: SyntheticCifti, ward: Parcellations, tmp_path: Path) -> None:
    """The dlabel read back by nibabel is labels_ with the look-up table; parcels.tsv, the R^2 dscalar, the
    cortex as GIfTI (drawn in the report) and fit.json agree with the fit."""
    out = tmp_path / "fit"
    doc = write_fit_outputs(ward, cifti_run(data.path, data.meshes), out)
    labels = np.asarray(ward.labels_.values)
    dlabel = nib.load(out / f"atlas-ward{PLANTED}_dseg.dlabel.nii")
    np.testing.assert_array_equal(np.asarray(dlabel.dataobj)[0], labels)
    assert dlabel.header.get_axis(1) == brain_model(data.path)
    table = dlabel.header.get_axis(0).label[0]
    lut = (out / f"atlas-ward{PLANTED}_dseg.tsv").read_text().splitlines()
    assert len(lut) == PLANTED + 2 and table[1][0] == lut[2].split("\t")[1]
    rows = [line.split("\t") for line in (out / "parcels.tsv").read_text().splitlines()[1:]]
    assert [int(r[1]) for r in rows] == np.bincount(labels)[1:].tolist()
    r2 = nib.load(out / "r2.dscalar.nii")
    assert r2.shape == (1, len(labels)) and np.all(np.asarray(r2.dataobj) <= 1)
    frames = np.asarray(nib.load(data.path).dataobj, dtype=np.float64)
    centred = frames - frames.mean(axis=0)
    means = parcel_means(centred, labels, PLANTED)[:, labels - 1]
    expected_r2 = 1 - ((centred - means) ** 2).sum() / (centred**2).sum()
    assert doc["metrics"]["compression_r2"] == pytest.approx(expected_r2, abs=1e-4)
    assert doc["metrics"]["contiguity"] == 1.0 and doc["data"]["grayordinates"] == len(labels)
    left = nib.load(out / f"atlas-ward{PLANTED}_hemi-L_dseg.label.gii").darrays[0].data
    axis = brain_model(data.path)
    cortex = axis.name == "CIFTI_STRUCTURE_CORTEX_LEFT"
    np.testing.assert_array_equal(left[axis.vertex[cortex]], labels[cortex])
    assert json.loads((out / "fit.json").read_text())["files"]["labels"].endswith(".dlabel.nii")
    html = (out / "report.html").read_text()
    assert "Parcels on the mesh" in html and "Figure not drawn" not in html


def test_fit_folder_without_meshes(
    data: SyntheticCifti, kmeans: Parcellations, tmp_path: Path
) -> None:
    """Without meshes: no cortex drawn; the run's BIDS tables and connectome as for volumes."""
    from nilearn.connectome import ConnectivityMeasure

    out = tmp_path / "fit"
    doc = write_fit_outputs(kmeans, str(data.path), out, connectomes=["correlation"])
    np.testing.assert_array_equal(
        np.asarray(nib.load(out / "atlas-kmeans20_dseg.dlabel.nii").dataobj)[0],
        np.asarray(kmeans.labels_.values),
    )
    assert doc["metrics"]["contiguity"] is None
    (series_tsv,) = out.rglob("sub-*_atlas-kmeans20_stat-mean_timeseries.tsv")
    series = np.loadtxt(series_tsv, skiprows=1, dtype=np.float32).astype(np.float64)
    np.testing.assert_allclose(series, np.asarray(kmeans.transform(str(data.path))), rtol=1e-6)
    (relmat_tsv,) = out.rglob("sub-*_atlas-kmeans20_stat-correlation_relmat.tsv")
    expected = ConnectivityMeasure(kind="correlation").fit_transform([series])[0]
    np.testing.assert_allclose(np.loadtxt(relmat_tsv, skiprows=1), expected, rtol=1e-7)
    html = (out / "report.html").read_text()
    assert "No brain figure" in html and "Figure not drawn" not in html
    assert "Group connectome (correlation)" in html


def test_bad_inputs_refused_before_any_data_is_read(data: SyntheticCifti, tmp_path: Path) -> None:
    """The runs here have no data after their header: reading a frame would fail with another error."""
    cut = truncated_copy(data.path, tmp_path / "cut")
    store = tmp_path / "store"
    with pytest.raises(InputError, match="could not read its frames"):  # the trap works
        Parcellations(method="kmeans", n_parcels=5, smoothing_fwhm=None, store=store).fit(str(cut))
    store = tmp_path / "store2"
    for method in ("ward", "complete", "average", "rena"):
        with pytest.raises(InputError) as excinfo:
            Parcellations(method=method, n_parcels=10, smoothing_fwhm=None, store=store).fit(
                str(cut)
            )
        message = one_line(excinfo)
        assert message.startswith(f"meshes: method='{method}' needs") and "cifti_run" in message
        assert not store.exists()
    from daskparcel.datasets_surface import surface_mesh

    with pytest.raises(InputError) as excinfo:
        cifti_run(cut, meshes=surface_mesh("ico2"))
    assert "162 vertices" in one_line(excinfo) and "642" in str(excinfo.value)
    with pytest.raises(InputError) as excinfo:  # smoothing, as for surfaces
        Parcellations(method="kmeans", n_parcels=10, store=store).fit(str(cut))
    assert "smoothing_fwhm=None" in one_line(excinfo)
    # another brain model: a wider medial wall
    axis, _ = cifti_brain_model(3, medial_wall=0.5)
    series = cifti2.SeriesAxis(start=0.0, step=2.0, size=N_TIME, unit="second")
    other = tmp_path / "other" / "sub-02_bold.dtseries.nii"
    other.parent.mkdir()
    nib.save(
        cifti2.Cifti2Image(np.zeros((N_TIME, len(axis)), np.float32), header=(series, axis)), other
    )
    other = truncated_copy(other, tmp_path / "cut2")
    with pytest.raises(InputError) as excinfo:
        Parcellations(method="kmeans", n_parcels=10, smoothing_fwhm=None, store=store).fit(
            [str(cut), str(other)]
        )
    assert "another brain model" in one_line(excinfo)
    assert not store.exists()
    fitted = Parcellations(method="kmeans", n_parcels=8, smoothing_fwhm=None, store=store).fit(
        str(data.path)
    )
    with pytest.raises(InputError) as excinfo:  # transform of a run on another brain model
        fitted.transform(str(other))
    assert "fitted on the brain model" in one_line(excinfo) and str(other) in str(excinfo.value)
    with pytest.raises(InputError) as excinfo:  # a mask
        Parcellations(method="kmeans", n_parcels=10, smoothing_fwhm=None, mask=str(cut)).fit(
            str(cut)
        )
    assert "mask=None" in one_line(excinfo)


@pytest.mark.parametrize("method", ["complete", "average", "rena", "hierarchical_kmeans"])
def test_other_methods(data: SyntheticCifti, store: Path, method: str) -> None:
    """Exactly K, no parcel across structures; the connected methods' parcels connected."""
    est = Parcellations(method=method, n_parcels=24, smoothing_fwhm=None, store=store).fit(
        cifti_run(data.path, data.meshes)
    )
    labels = np.asarray(est.labels_.values)
    axis = brain_model(data.path)
    assert np.array_equal(np.unique(labels), np.arange(1, 25))
    assert spanning(labels, structure_index(axis)) == []
    if method != "hierarchical_kmeans":
        assert disconnected(labels, graph(axis, data.meshes)) == []
    if method in ("rena", "hierarchical_kmeans"):  # complete and average make a few giant parcels
        assert adjusted_rand_score(data.labels, labels) > 0.5


def test_several_runs(data: SyntheticCifti, store: Path, tmp_path: Path) -> None:
    """Two subjects on one brain model: the meshes given with one run serve the fit; both are transformed."""
    second = synthetic_cifti_run(
        tmp_path / "sub-02.dtseries.nii", N_TIME, n_parcels=PLANTED, subject=1
    )
    est = Parcellations(method="ward", n_parcels=PLANTED, smoothing_fwhm=None, store=store).fit(
        [str(second.path), cifti_run(data.path, data.meshes)]
    )
    assert len(est.runs_) == 2 and est.n_elements_ == PLANTED
    labels = np.asarray(est.labels_.values)
    assert disconnected(labels, graph(brain_model(data.path), data.meshes)) == []
    assert adjusted_rand_score(data.labels, labels) > 0.9
    out = est.transform([str(data.path), str(second.path)])
    for signals, run in zip(out, (data, second), strict=True):
        frames = np.asarray(nib.load(run.path).dataobj)
        np.testing.assert_allclose(
            np.asarray(signals), parcel_means(frames, labels, PLANTED), rtol=1e-5
        )
    with pytest.raises(InputError) as excinfo:  # fewer parcels than structures
        Parcellations(method="kmeans", n_parcels=3, smoothing_fwhm=None, store=store).fit(
            str(data.path)
        )
    assert "n_parcels>=4" in one_line(excinfo)


def test_command_line_fit(
    data: SyntheticCifti, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``daskparcel fit run.dtseries.nii`` (kmeans: no meshes on the command line) writes the dlabel."""
    from daskparcel.cli import main

    out = tmp_path / "fit"
    code = main(
        ["fit", str(data.path), "--method", "kmeans", "--n-parcels", "12", "--smoothing-fwhm", "0",
         "--store", str(tmp_path / "store"), "--out", str(out), "--quiet"]
    )  # fmt: skip
    assert code == 0
    assert f"{len(data.labels)} grayordinates" in capsys.readouterr().out
    labels = np.asarray(nib.load(out / "atlas-kmeans12_dseg.dlabel.nii").dataobj)[0]
    assert np.array_equal(np.unique(labels), np.arange(1, 13))
    assert spanning(labels.astype(int), structure_index(brain_model(data.path))) == []


def test_command_line_fit_with_meshes(
    data: SyntheticCifti, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``daskparcel fit run.dtseries.nii --meshes L.surf.gii R.surf.gii --method ward``: K parcels, each
    connected on the grayordinates' graph and within one structure; --meshes without a dtseries, or with a
    missing file, refused in one line before anything is written."""
    from daskparcel.cli import main

    paths = gifti_meshes(data.meshes, tmp_path)
    meshes = [str(paths["left"]), str(paths["right"])]
    out = tmp_path / "fit"
    common = ["--method", "ward", "--n-parcels", "20", "--smoothing-fwhm", "0", "--quiet"]
    code = main(
        ["fit", str(data.path), "--meshes", *meshes, *common,
         "--store", str(tmp_path / "store"), "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    labels = np.asarray(nib.load(out / "atlas-ward20_dseg.dlabel.nii").dataobj)[0].astype(int)
    assert np.array_equal(np.unique(labels), np.arange(1, 21))
    assert disconnected(labels, graph(brain_model(data.path), data.meshes)) == []
    assert spanning(labels, structure_index(brain_model(data.path))) == []
    capsys.readouterr()
    bad = tmp_path / "bad"
    missing = str(tmp_path / "none.surf.gii")
    for inputs, flags, message in (
        ([str(data.path)], ["--meshes", meshes[0], missing], "none.surf.gii is not a file"),
        (["run.nii.gz"], ["--meshes", *meshes], "no .dtseries.nii input"),
    ):
        assert main(["fit", *inputs, *flags, *common, "--out", str(bad)]) == 2
        err = capsys.readouterr().err
        assert "--meshes" in err and message in err, err
        assert not bad.exists()


def test_trees_cached_per_mesh(data: SyntheticCifti, ward: Parcellations, store: Path) -> None:
    """The same file with other meshes (the vertices renumbered: another graph) in the same store: the ward
    tree of the first meshes is not reused, the parcels are connected on the second graph."""
    from nilearn.surface import InMemoryMesh, PolyMesh

    perm = np.random.default_rng(0).permutation(642)
    inverse = np.argsort(perm)
    parts = {}
    for part in ("left", "right"):
        mesh = data.meshes.parts[part]
        parts[part] = InMemoryMesh(
            np.asarray(mesh.coordinates)[perm], inverse[np.asarray(mesh.faces)]
        )
    other = PolyMesh(**parts)
    est = Parcellations(method="ward", n_parcels=PLANTED, smoothing_fwhm=None, store=store).fit(
        cifti_run(data.path, meshes=other)
    )
    assert est.store_.path == ward.store_.path  # one signals store: the run is the same file
    labels = np.asarray(est.labels_.values)
    assert disconnected(labels, graph(brain_model(data.path), other)) == []


def test_gifti_meshes_and_the_series_step(
    data: SyntheticCifti, store: Path, tmp_path: Path
) -> None:
    """Meshes given as GIfTI surf.gii paths give the grayordinates' graph; the series' step (2 s) is the TR
    that filtering uses, as nilearn's ``signal.clean`` with t_r=2."""
    from nilearn.signal import clean

    paths = gifti_meshes(data.meshes, tmp_path)
    rows, cols = cifti_run(data.path, meshes=paths).geometry.edges()
    expected = sp.triu(graph(brain_model(data.path), data.meshes), k=1).tocoo()
    assert set(zip(rows.tolist(), cols.tolist(), strict=True)) == set(
        zip(expected.row.tolist(), expected.col.tolist(), strict=True)
    )
    est = Parcellations(
        method="kmeans", n_parcels=10, smoothing_fwhm=None, high_pass=0.02, store=store
    ).fit(str(data.path))
    frames = np.asarray(nib.load(data.path).dataobj, dtype=np.float64)
    expected_signals = clean(frames, high_pass=0.02, t_r=2.0, detrend=False, standardize=None).T
    np.testing.assert_allclose(
        np.asarray(est.store_.signals("cleaned")), expected_signals, rtol=1e-4, atol=1e-2
    )


def test_runs_are_written_by_blocks_of_grayordinates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Written 500 grayordinates at a time (three blocks, the last partial): every series is filled (no
    placeholder zero left), its baseline in 600-1200, and grayordinates of one planted parcel share their
    course (correlated more than grayordinates of different parcels)."""
    import daskparcel.datasets_cifti as module

    monkeypatch.setattr(module, "BLOCK", 500)
    run = module.synthetic_cifti_run(tmp_path / "blocks.dtseries.nii", 80, n_parcels=12)
    frames = np.asarray(nib.load(run.path).dataobj, dtype=np.float64)
    assert frames.shape == (80, 1248) and np.all(np.isfinite(frames)) and np.all(frames > 0)
    assert 600 < frames.mean(axis=0).min() and frames.mean(axis=0).max() < 1200 * 1.1
    corr = np.corrcoef(frames.T)
    same = run.labels[:, None] == run.labels[None, :]
    off = ~np.eye(len(run.labels), dtype=bool)
    assert corr[same & off].mean() > corr[~same].mean() + 0.2


def test_convert_refuses_a_dtseries_saying_to_fit_it_as_it_is(
    data: SyntheticCifti, tmp_path: Path
) -> None:
    """`convert` writes volume stores: a CIFTI file is refused with what to do instead, nothing written."""
    from daskparcel.cli import main

    out = tmp_path / "store"
    with pytest.raises(InputError, match=r"is a CIFTI-2 file.*fit it as it is"):
        from daskparcel import convert

        convert(str(data.path), out)
    assert main(["convert", str(data.path), "--out", str(out)]) == 2
    assert not out.exists()
