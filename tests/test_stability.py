"""Stability and the choice of K (issue 21, items 4 and 5): metrics.stability, `daskparcel stability`, the merge
tree of the agglomerative methods (children_, distances_) and its distance-threshold cut."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from sklearn.cluster import AgglomerativeClustering
from sklearn.feature_extraction.image import grid_to_graph
from sklearn.metrics import adjusted_rand_score

from daskparcel import Parcellations, datasets
from daskparcel.cli import main
from daskparcel.clustering.agglomerative import agglomerate
from daskparcel.errors import InputError
from daskparcel.metrics import stability
from daskparcel.metrics.stability import COLUMNS, ClusterSpec, _sample_labels, draw_samples

N_PLANTED = 12


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Three synthetic subjects (4 mm, 24 volumes, 12 planted parcels) as NIfTI, and the truth."""
    folder = tmp_path_factory.mktemp("cohort")
    paths, truth = datasets.write_synthetic_nifti(folder, 3, 4, 24, n_parcels=N_PLANTED)
    return [str(p) for p in paths], truth


@pytest.fixture(scope="module")
def box_mask(cohort, tmp_path_factory):
    """A 9 x 9 x 8 box of brain voxels (a connected mask of a few hundred voxels): small, fast fits."""
    _, truth = cohort
    mask = np.zeros(truth.shape, np.uint8)
    mask[20:29, 25:34, 22:30] = 1
    mask &= np.asarray(datasets.brain_mask(4).dataobj) > 0
    path = tmp_path_factory.mktemp("mask") / "box.nii.gz"
    nib.save(nib.Nifti1Image(mask, truth.affine), path)
    return path, mask.astype(bool)


# ----------------------------------------------------------------------------------- metrics.stability
def test_ward_is_stable_at_the_planted_k(cohort, tmp_path):
    paths, _ = cohort
    est = Parcellations(method="ward", n_components=12, store=tmp_path)
    table = stability(est, paths, [N_PLANTED, 2 * N_PLANTED], n_samples=3)
    assert list(table.columns) == list(COLUMNS)
    assert table["n_parcels"].tolist() == [N_PLANTED, 2 * N_PLANTED]
    assert table.attrs["resampling"] == "bootstrap" and table.attrs["method"] == "ward"
    planted = table.set_index("n_parcels").loc[N_PLANTED]
    assert planted["ari_mean"] >= 0.9
    assert 0 < planted["accuracy_mean"] <= 1 and 0 <= planted["ami_mean"] <= 1
    for sample in table.attrs["samples"]:  # bootstrap: the held-out subjects are not fitted
        assert sample["held_out"] and not set(sample["held_out"]) & set(sample["fit"])


def test_tree_cut_at_each_k_equals_a_refit_at_each_k(cohort, box_mask, tmp_path):
    paths, _ = cohort
    path, mask = box_mask
    for linkage in ("ward", "average"):
        est = Parcellations(method=linkage, n_parcels=4, n_components=8, mask=path, store=tmp_path)
        est.fit(paths[0])
        features = est.components_.T
        ks = [3, 10, 40]
        group = est.store_.features_group(8, 0)  # the fit's features, read by the task
        key = f"stability/test-{linkage}"
        cut = _sample_labels(ClusterSpec.of(est), est.store_, group, key, ks)
        for k in ks:  # a fresh tree per K
            refit = agglomerate(features, k, mask=mask, linkage=linkage)
            np.testing.assert_array_equal(cut[k], refit)


def test_a_surface_sample_is_clustered_on_the_mesh(tmp_path):
    """A surface fit's samples are clustered with the fit's geometry (mesh edges, one component per
    hemisphere), not the store's pseudo-grid: the fit's own features give the fit's own labels, and every
    parcel of every K is connected on the mesh."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components

    from daskparcel.datasets_surface import surface_mesh, synthetic_surface_run

    run = synthetic_surface_run(12, n_parcels=12, mesh="ico3")
    est = Parcellations(
        method="ward", n_parcels=12, n_components=6, smoothing_fwhm=None, store=tmp_path
    )
    est.fit(run)
    ks = [6, 12, 30]
    group = est.store_.features_group(6, 0)
    cut = _sample_labels(ClusterSpec.of(est), est.store_, group, "stability/test-surface", ks)
    assert adjusted_rand_score(cut[12], est.labels_.values) == 1.0  # the same partition
    mesh = surface_mesh("ico3")
    faces, offset = [], 0
    for part in ("left", "right"):  # both hemispheres in one vertex numbering, as the labels
        faces.append(np.asarray(mesh.parts[part].faces) + offset)
        offset += mesh.parts[part].n_vertices
    f = np.concatenate(faces)
    rows, cols = (
        np.concatenate([f[:, 0], f[:, 1], f[:, 2]]),
        np.concatenate([f[:, 1], f[:, 2], f[:, 0]]),
    )
    graph = sp.coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(offset, offset)).tocsr()
    for k in ks:
        assert np.unique(cut[k]).size == k
        for label in range(k):
            members = np.flatnonzero(cut[k] == label)
            assert connected_components(graph[members][:, members], directed=False)[0] == 1, (
                k,
                label,
            )


def test_split_half_of_one_subject(cohort, box_mask, tmp_path):
    paths, _ = cohort
    path, _ = box_mask
    est = Parcellations(method="complete", n_components=6, mask=path, store=tmp_path)
    table = stability(
        est, paths[0], [3, 6], n_samples=2, n_blocks=4, accuracy="homogeneity", random_state=1
    )
    assert table.attrs["resampling"] == "split-half" and table.attrs["n_blocks"] == 4
    assert np.isfinite(table["ari_mean"]).all() and np.isfinite(table["accuracy_mean"]).all()
    assert (table["accuracy_mean"].abs() <= 1).all()


def test_samples_group_runs_by_subject_and_split_time_in_blocks():
    subjects = ["a", "a", "b", "c", "d"]
    for sample in draw_samples("bootstrap", subjects, [10] * 5, 20, 10, 0):
        fitted = {run for run, _ in sample.fit}
        held = {run for run, _ in sample.held_out}
        assert held and not fitted & held and fitted | held == set(range(5))
        assert ({0, 1} <= fitted or {0, 1} <= held) and not ({0, 1} & fitted and {0, 1} & held)
        assert [r for r, _ in sample.fit].count(0) == [r for r, _ in sample.fit].count(1)
    for sample in draw_samples("split-half", ["a", "a"], [23, 30], 5, 6, 0):
        for (run, fit), (run2, held) in zip(sample.fit, sample.held_out, strict=True):
            assert run == run2 and fit is not None and held is not None
            assert not set(fit) & set(held) and sorted(fit + held) == list(range([23, 30][run]))
            assert abs(len(fit) - len(held)) <= [23, 30][run] // 6 + 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_parcels": [1, 5]}, "n_parcels=1: must be an integer >= 2"),
        ({"n_parcels": [5], "n_samples": 1}, "n_samples=1: must be an integer >= 2"),
        ({"n_parcels": [5], "resampling": "jackknife"}, "resampling='jackknife': unknown"),
        ({"n_parcels": [5], "accuracy": "r3"}, "accuracy='r3': unknown"),
    ],
)
def test_bad_arguments_refused_before_data_is_read(kwargs, message):
    est = Parcellations(method="ward")
    with pytest.raises(InputError, match=message):
        stability(est, "/nonexistent/run.nii.gz", **kwargs)


def test_bootstrap_of_one_subject_refused(cohort, tmp_path):
    paths, _ = cohort
    est = Parcellations(method="ward", store=tmp_path / "store")
    with pytest.raises(InputError, match=r"bootstrap.*1 subject.*split-half"):
        stability(est, paths[0], [5], resampling="bootstrap")
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").glob("signals-*"))


# ------------------------------------------------------------------- the merge tree and its threshold cut
@pytest.mark.parametrize("linkage", ["ward", "complete", "average"])
def test_children_distances_and_threshold_cut_equal_sklearn(linkage, cohort, box_mask, tmp_path):
    paths, _ = cohort
    path, mask = box_mask
    est = Parcellations(method=linkage, n_parcels=5, n_components=8, mask=path, store=tmp_path)
    est.fit(paths[0])
    features = est.components_.T
    conn = grid_to_graph(*mask.shape, mask=mask)
    threshold = float(np.sort(est.distances_)[-15])  # about 15 parcels
    ref = AgglomerativeClustering(
        n_clusters=None, distance_threshold=threshold, linkage=linkage, connectivity=conn
    ).fit(features)
    np.testing.assert_array_equal(est.children_, ref.children_)
    np.testing.assert_allclose(est.distances_, ref.distances_, rtol=1e-12)
    cut = Parcellations(
        method=linkage, n_parcels=None, distance_threshold=threshold, n_components=8, mask=path,
        store=tmp_path,
    ).fit(paths[0])  # fmt: skip
    assert cut.n_elements_ == ref.n_clusters_ > 5
    assert adjusted_rand_score(ref.labels_, cut.labels_.values) == 1.0
    assert np.asarray(cut.transform(paths[0])).shape == (24, ref.n_clusters_)


def test_no_tree_attributes_for_partition_methods(cohort, box_mask, tmp_path):
    paths, _ = cohort
    path, _ = box_mask
    est = Parcellations(method="ward", n_parcels=4, n_components=6, mask=path, store=tmp_path)
    est.fit(paths[0])
    assert hasattr(est, "children_")
    est.set_params(method="kmeans").fit(paths[0])
    assert not hasattr(est, "children_") and not hasattr(est, "distances_")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "ward", "distance_threshold": 1.0}, "n_parcels=50 and distance_threshold=1.0"),
        ({"method": "kmeans", "n_parcels": None, "distance_threshold": 1.0}, "has none"),
        ({"method": "ward", "n_parcels": None}, "n_parcels=None: without distance_threshold"),
        ({"method": "ward", "n_parcels": None, "distance_threshold": -1.0}, "distance_threshold"),
    ],
)
def test_bad_threshold_parameters(kwargs, message, tmp_path):
    with pytest.raises(InputError, match=message):
        Parcellations(store=tmp_path, **kwargs).fit("/nonexistent/run.nii.gz")


# --------------------------------------------------------------------------------------- the command
def test_cli_writes_table_and_figure_and_records_in_the_fit(cohort, box_mask, tmp_path, capsys):
    paths, _ = cohort
    path, _ = box_mask
    common = ["--method", "ward", "--n-components", "6", "--mask", str(path)]
    store = ["--store", str(tmp_path / "cache")]
    assert (
        main(["fit", *paths, *common, "--n-parcels", "5", "--out", str(tmp_path / "fit"), *store])
        == 0
    )
    out = tmp_path / "stab"
    code = main(
        ["stability", *paths, *common, "--n-parcels", "5", "3", "--n-samples", "2",
         "--output", str(out), "--fit", str(tmp_path / "fit"), *store]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    table = pd.read_csv(out / "stability.tsv", sep="\t")
    assert table["n_parcels"].tolist() == [3, 5] and list(table.columns) == list(COLUMNS)
    doc = json.loads((out / "stability.json").read_text())
    assert doc["method"] == "ward" and doc["resampling"] == "bootstrap" and len(doc["table"]) == 2
    assert (out / "stability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # item 5: the fit folder records the ARI at its K, and the report shows it
    fit = json.loads((tmp_path / "fit" / "fit.json").read_text())
    ari = table.set_index("n_parcels").loc[5, "ari_mean"]
    assert fit["metrics"]["stability"]["ari"] == pytest.approx(ari)
    report = (tmp_path / "fit" / "report.html").read_text()
    assert "Stability and the choice of K" in report and f"{ari:.3f}" in report
    assert "homogeneity" in report


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--n-parcels", "1", "5"], "n_parcels=1: must be an integer >= 2"),
        (["--n-parcels", "5", "--n-samples", "1"], "n_samples=1: must be an integer >= 2"),
    ],
)
def test_cli_bad_input_exits_2_before_reading(args, message, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(
        ["stability", "/nonexistent/run.nii.gz", "--method", "ward", *args, "--out", str(out)]
    )
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_bootstrap_of_one_subject_exits_2(cohort, tmp_path, capsys):
    paths, _ = cohort
    out = tmp_path / "out"
    code = main(
        ["stability", paths[0], "--method", "ward", "--n-parcels", "5", "--resampling", "bootstrap",
         "--out", str(out), "--store", str(tmp_path / "cache")]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "bootstrap" in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not list((tmp_path / "cache").glob("signals-*"))


def test_cli_fit_with_a_distance_threshold(cohort, box_mask, tmp_path):
    paths, _ = cohort
    path, _ = box_mask
    common = ["--method", "average", "--n-components", "6", "--mask", str(path)]
    store = ["--store", str(tmp_path / "cache")]
    assert (
        main(["fit", paths[0], *common, "--n-parcels", "4", "--out", str(tmp_path / "k"), *store])
        == 0
    )
    est = Parcellations(
        method="average", n_parcels=4, n_components=6, mask=path, store=tmp_path / "cache"
    )
    threshold = float(np.sort(est.fit(paths[0]).distances_)[-9])  # 9 merges at or above: 10 parcels
    out = tmp_path / "d"
    argv = [
        "fit",
        paths[0],
        *common,
        "--distance-threshold",
        repr(threshold),
        "--out",
        str(out),
        *store,
    ]
    assert main(argv) == 0
    doc = json.loads((out / "fit.json").read_text())
    assert (
        doc["metrics"]["n_parcels"] == 10 and doc["parameters"]["distance_threshold"] == threshold
    )
    assert doc["parameters"]["n_parcels"] is None


def test_cli_fit_of_another_method_exits_2(tmp_path, capsys):
    fit = tmp_path / "fit"
    fit.mkdir()
    (fit / "fit.json").write_text(json.dumps({"parameters": {"method": "kmeans"}}))
    out = tmp_path / "out"
    argv = ["stability", "/nonexistent/run.nii.gz", "--method", "ward", "--n-parcels", "5"]
    assert main([*argv, "--out", str(out), "--fit", str(fit)]) == 2
    err = capsys.readouterr().err
    assert "a kmeans fit, but --method is ward; pass --method kmeans" in err and not out.exists()


def test_kmeans_refits_and_samples_kept_in_the_store(cohort, box_mask, tmp_path):
    import zarr

    paths, _ = cohort
    path, _ = box_mask
    for method in ("kmeans", "ward"):
        est = Parcellations(method=method, n_components=6, mask=path, store=tmp_path)
        table = stability(est, paths, [3, 6], n_samples=2, random_state=1)
        assert np.isfinite(table[["ari_mean", "ami_mean", "accuracy_mean"]].to_numpy()).all()
    root = zarr.open_group(table.attrs["signals_store"], mode="r")
    kept = sorted(name for name, _ in root["stability"].members())
    assert any(k.endswith("-weighted") for k in kept)  # kmeans clusters the weighted reduction
    distinct = {json.dumps(sample["fit"]) for sample in table.attrs["samples"]}
    assert sum(k.endswith("-ward") for k in kept) == len(
        distinct
    )  # one tree a sample, cut at both K
