"""The notebooks are committed executed (with their outputs, on the real scan) and run to the end in CI.

The committed notebooks are checked as stored: every code cell executed, figures small, only daskparcel's public
API, and what their markdown states is what their outputs show. The execution tests clear the stored outputs and
run each notebook again (quick sizes, ``DASKPARCEL_NOTEBOOK_QUICK=1``) with nbclient in a temporary working
folder (what it writes stays there) on the ``python3`` kernel, which jupyter_client starts with this interpreter.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import REAL_DATA, REAL_SCANS

import daskparcel

nbformat = pytest.importorskip("nbformat", reason="nbformat is needed to read the notebooks")
nbclient = pytest.importorskip("nbclient", reason="nbclient is needed to execute the notebooks")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
TOUR = NOTEBOOKS / "01_parcellation_tour.ipynb"
COHORT = NOTEBOOKS / "02_cohort_on_a_cluster.ipynb"
CELL_TIMEOUT = 300  # seconds per cell
MAX_BYTES = 1_500_000  # a committed notebook, outputs included


def execute(path: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[object, str]:
    """Clear the stored outputs and run the notebook in ``workdir``; return it and the text of its stream
    outputs."""
    monkeypatch.setenv("DASKPARCEL_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    for name in ("DASKPARCEL_NOTEBOOK_DATA", "DASKPARCEL_SCHEDULER", "DASK_SCHEDULER_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    # the real scan when the shared data is there (the notebook's own fallback: synthetic data)
    monkeypatch.setenv("DASKPARCEL_REAL_DATA", str(REAL_DATA))
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute()  # raises CellExecutionError (with the cell and the traceback) when a cell fails
    return notebook, stream_text(notebook)


def stream_text(notebook: object) -> str:
    return "\n".join(
        output.get("text", "")
        for cell in notebook.cells  # type: ignore[attr-defined]
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "stream"
    )


def images(notebook: object) -> list[dict]:
    return [
        output
        for cell in notebook.cells  # type: ignore[attr-defined]
        if cell.cell_type == "code"
        for output in cell.outputs
        if "image/png" in output.get("data", {})
    ]


def dashboard_displays(notebook: object) -> int:
    """How many outputs are daskparcel's dashboard link display (shown when it starts or joins a cluster,
    not at each fit on the notebook's own client)."""
    return sum(
        "dask dashboard: <a href" in "".join(output.get("data", {}).get("text/html", ""))
        for cell in notebook.cells  # type: ignore[attr-defined]
        if cell.cell_type == "code"
        for output in cell.outputs
    )


def private_uses(source: str) -> list[str]:
    """What the code reaches of daskparcel beyond ``daskparcel.__all__``, and any ``_private`` attribute."""
    public = set(daskparcel.__all__)
    aliases = {"daskparcel"}
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("daskparcel."):
                    found.append(f"import {alias.name}")
                elif alias.name == "daskparcel":
                    aliases.add(alias.asname or alias.name)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "daskparcel":
            if node.module != "daskparcel":
                found.append(f"from {node.module} import ...")
            found += [f"daskparcel.{a.name}" for a in node.names if a.name not in public]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute):
            if node.attr.startswith("_") and not node.attr.startswith("__"):
                found.append(f".{node.attr}")
            elif isinstance(node.value, ast.Name) and node.value.id in aliases:
                if node.attr not in public:
                    found.append(f"{node.value.id}.{node.attr}")
    return found


def test_private_uses_finds_internals() -> None:
    code = (
        "import daskparcel as dp\nfrom daskparcel.outputs.results import write_fit_outputs\n"
        "from daskparcel import Parcellations, _log\nimport daskparcel.jobs\n"
        "dp.results.write(x)\nest._cluster()\ndp.Parcellations().labels_img_\n"
    )
    assert sorted(private_uses(code)) == sorted(
        [
            "from daskparcel.outputs.results import ...",
            "daskparcel._log",
            "import daskparcel.jobs",
            "dp.results",
            "._cluster",
        ]
    )


@pytest.mark.parametrize("path", [TOUR, COHORT], ids=lambda p: p.stem)
def test_notebook_is_committed_executed_with_small_figures(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    assert notebook.nbformat == 4
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code
    # every code cell executed, once, in order, with no error
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1))
    for cell in code:
        kinds = {output["output_type"] for output in cell.outputs}
        assert "error" not in kinds, cell.source[:60]
        assert not any(output.get("name") == "stderr" for output in cell.outputs), cell.source[:60]
    assert images(notebook), "no figure in the committed outputs"
    assert dashboard_displays(notebook) == 0
    assert path.stat().st_size < MAX_BYTES
    # the stored outputs are the full sizes; the first code cell reads the quick mode of CI
    assert "DASKPARCEL_NOTEBOOK_QUICK" in code[0].source
    assert "quick=False" in stream_text(notebook)


@pytest.mark.parametrize("path", [TOUR, COHORT], ids=lambda p: p.stem)
def test_notebook_uses_only_the_public_api(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert private_uses(cell.source) == [], cell.source[:80]


def test_tour_states_the_parcel_balance_its_outputs_show() -> None:
    """Notebook 1's markdown gives the size CV of kmeans and hierarchical kmeans that its stored run printed,
    on the real scan."""
    notebook = nbformat.read(TOUR, as_version=4)
    text = stream_text(notebook)
    assert REAL_SCANS["rapidtide"].name in text  # the stored outputs are the real scan's
    printed = dict(re.findall(r"^(KMeans|Hierarchical KMeans): size CV ([0-9.]+)", text, re.M))
    assert set(printed) == {"KMeans", "Hierarchical KMeans"}, text
    markdown = " ".join(
        " ".join(cell.source.split()) for cell in notebook.cells if cell.cell_type == "markdown"
    )
    stated = re.search(r"([0-9.]+) for KMeans and ([0-9.]+) for hierarchical KMeans", markdown)
    assert stated, "the markdown does not state both size CVs"
    assert stated.groups() == (printed["KMeans"], printed["Hierarchical KMeans"])
    more = float(printed["Hierarchical KMeans"]) < float(printed["KMeans"])
    assert ("Not here" not in markdown) == more  # the claim follows the numbers


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
    # the size CVs it prints are those of the labels it saved (sizes counted here with numpy)
    printed = dict(re.findall(r"^(KMeans|Hierarchical KMeans): size CV ([0-9.]+)", text, re.M))
    for name, file in (("KMeans", "kmeans"), ("Hierarchical KMeans", "hierarchical_kmeans")):
        labels = np.asarray(nib.load(out / f"{file}_parcellation.nii.gz").dataobj).ravel()
        sizes = np.bincount(labels)[1:]
        assert printed[name] == f"{sizes.std() / sizes.mean():.2f}", (name, printed)
    # on the real scan when it is there
    if REAL_SCANS["rapidtide"].exists():
        assert REAL_SCANS["rapidtide"].name in text
    # the figures were drawn: labels of each fit, two compressed comparisons, the size histograms
    assert len(images(notebook)) >= 8
    assert dashboard_displays(notebook) == 0  # the notebook's client: its own repr shows the link


@pytest.mark.slow
def test_cohort_notebook_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import xarray as xr

    notebook, text = execute(COHORT, tmp_path, monkeypatch)
    work = tmp_path / "cohort_outputs"
    # the scheduled job ran through the command, on the local cluster of its cluster file
    assert re.search(r"daskparcel run \S*job\.yaml: exit code 0", text), text
    assert re.search(r"dask dashboard \(\S*cluster\.yaml\): http://127\.0\.0\.1:\d+/status", text)
    job = work / "job"
    for name in ("job.log", "job.yaml", "done.json", "cache/runs.zarr"):
        assert (job / name).exists(), name
    fit = job / "fit"
    for name in ("labels.nii.gz", "mask.nii.gz", "fit.json", "report.html", "parcels.tsv"):
        assert (fit / name).is_file(), name
    runs = sorted((work / "nifti").glob("sub-*_bold.nii.gz"))
    assert len(runs) >= 2
    # the library's parcel signals of every subject, with the job's labels, in one store
    signals = xr.open_zarr(work / "parcel_signals.zarr", consolidated=False)
    assert sorted(np.unique(signals["subject"].values)) == [
        p.name.removesuffix("_bold.nii.gz") for p in runs
    ]
    n_parcels = signals.sizes["parcel"]
    assert np.asarray(nib.load(fit / "labels.nii.gz").dataobj).max() == n_parcels
    # ... equal to the job's (read here, not from the notebook's print)
    job_signals = xr.open_zarr(fit / "parcel_signals.zarr", consolidated=False)
    np.testing.assert_allclose(
        signals["parcel_signals"].values, job_signals["parcel_signals"].values, atol=1e-4
    )
    # the library's client and its progress bar; split halves compared
    assert re.search(r"dashboard: \S+/status", text)
    assert "100% Completed" in text
    assert re.search(r"half A: \[.+\]\s+half B: \[.+\]", text)
    assert len(images(notebook)) >= 1
    assert dashboard_displays(notebook) == 0
