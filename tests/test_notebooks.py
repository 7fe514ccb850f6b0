"""The notebooks run to the end (quick sizes, ``DASKPARCEL_NOTEBOOK_QUICK=1``) and are committed without outputs.

Each notebook is executed with nbclient in a temporary working folder (what it writes stays there) on the
``python3`` kernel, which jupyter_client starts with this interpreter.
"""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat is needed to read the notebooks")
nbclient = pytest.importorskip("nbclient", reason="nbclient is needed to execute the notebooks")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
TOUR = NOTEBOOKS / "01_parcellation_tour.ipynb"
COHORT = NOTEBOOKS / "02_cohort_on_a_cluster.ipynb"
CELL_TIMEOUT = 300  # seconds per cell


def execute(path: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[object, str]:
    """Run the notebook in ``workdir``; return it and the text of its stream outputs."""
    monkeypatch.setenv("DASKPARCEL_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    for name in ("DASKPARCEL_NOTEBOOK_DATA", "DASKPARCEL_SCHEDULER", "DASK_SCHEDULER_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute()  # raises CellExecutionError (with the cell and the traceback) when a cell fails
    text = "\n".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "stream"
    )
    return notebook, text


@pytest.mark.parametrize("path", [TOUR, COHORT], ids=lambda p: p.stem)
def test_notebook_is_valid_and_saved_without_outputs(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    assert notebook.nbformat == 4
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code
    for cell in code:
        assert cell.outputs == [], f"committed with outputs: {cell.source[:60]!r}"
        assert cell.execution_count is None
    # the first code cell holds the parameters, read from the quick-mode environment variable
    assert "DASKPARCEL_NOTEBOOK_QUICK" in code[0].source


@pytest.mark.slow
def test_parcellation_tour_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    notebook, text = execute(TOUR, tmp_path, monkeypatch)
    out = tmp_path / "tour_outputs"
    # every method fitted and timed, with a dashboard link
    assert re.search(r"dashboard: \S+/status", text)
    fitted = dict(re.findall(r"^(.+?) (\d+) clusters: [0-9.]+s$", text, flags=re.M))
    assert set(fitted) == {
        "Ward agglomeration",
        "KMeans",
        "Hierarchical KMeans",
        "ReNA",
    }, text
    assert len(re.findall(r"^Ward agglomeration \d+ clusters", text, flags=re.M)) == 2
    assert "(tree reused)" in text
    # the labels images are on disk, each with the number of parcels the notebook printed
    ward_sizes = [
        int(n) for n in re.findall(r"^Ward agglomeration (\d+) clusters", text, flags=re.M)
    ]
    expected = {
        "ward_parcellation.nii.gz": ward_sizes[0],
        f"ward_parcellation_{ward_sizes[1]}.nii.gz": ward_sizes[1],
        "kmeans_parcellation.nii.gz": int(fitted["KMeans"]),
        "hierarchical_kmeans_parcellation.nii.gz": int(fitted["Hierarchical KMeans"]),
        "rena_parcellation.nii.gz": int(fitted["ReNA"]),
    }
    for name, n_parcels in expected.items():
        labels = np.asarray(nib.load(out / name).dataobj)
        assert np.issubdtype(labels.dtype, np.integer)
        assert np.array_equal(np.unique(labels), np.arange(n_parcels + 1)), name
    # the figures were drawn: labels of each fit, two compressed comparisons, the size histograms
    images = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if "image/png" in output.get("data", {})
    ]
    assert len(images) >= 8


@pytest.mark.slow
def test_cohort_notebook_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import xarray as xr

    _, text = execute(COHORT, tmp_path, monkeypatch)
    work = tmp_path / "cohort_outputs"
    assert re.search(r"dashboard: \S+/status", text)
    stores = sorted((work / "stores").glob("*.zarr"))
    assert len(stores) >= 2
    # parcel signals of every subject, in one store
    signals = xr.open_zarr(work / "parcel_signals.zarr", consolidated=False)
    subjects = np.unique(signals["subject"].values)
    assert sorted(subjects) == sorted(p.name.removesuffix(".zarr") for p in stores)
    assert np.isfinite(signals["parcel_signals"].values).all()
    # the group fit folder with its report
    fit = work / "group_fit"
    for name in ("labels.nii.gz", "fit.json", "report.html"):
        assert (fit / name).is_file(), name
    n_parcels = signals.sizes["parcel"]
    labels = np.asarray(nib.load(fit / "labels.nii.gz").dataobj)
    assert labels.max() == n_parcels
    # split halves were printed
    assert re.search(r"half A: \[.+\]\s+half B: \[.+\]", text)
