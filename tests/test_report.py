"""The HTML report of a fit folder: content read from fit.json, self-contained figures, a real browser.

One real fit folder is made per module (a synthetic 4 mm run, ward, through ``write_fit_outputs(report=True)``,
the path the CLI takes); the expected numbers are read from its ``fit.json`` in each test.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import re
import shlex
import shutil
import struct
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from daskparcel.errors import InputError
from daskparcel.outputs.report import render_report, write_report

SECTIONS = (
    "summary",
    "figures",
    "metrics",
    "parcels",
    "data",
    "timings",
    "parameters",
    "inputs",
    "files",
    "versions",
)
N_FIGURES = 4
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")


@pytest.fixture(scope="module")
def fit_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from daskparcel import Parcellations, datasets
    from daskparcel.outputs.results import write_fit_outputs

    root = tmp_path_factory.mktemp("report")
    paths, _ = datasets.write_synthetic_nifti(root / "data", 1, 4, 40, n_parcels=30)
    est = Parcellations(method="ward", n_parcels=30, n_components=20, store=root / "cache")
    est.fit(paths[0])
    out = root / "fit"
    argv = ["daskparcel", "fit", str(paths[0]), "--method", "ward", "--out", str(out)]
    write_fit_outputs(est, paths[0], out, report=True, argv=argv)
    return out


@pytest.fixture(scope="module")
def page(fit_folder: Path) -> str:
    return (fit_folder / "report.html").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def doc(fit_folder: Path) -> dict:
    return json.loads((fit_folder / "fit.json").read_text())


class _Parser(HTMLParser):
    """Collects <img> sources, section ids and the text of each section."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str | None]] = []
        self.sections: dict[str, list[str]] = {}
        self._section: str | None = None
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        if tag == "img":
            self.images.append(attributes)
        if tag == "section":
            self._section = attributes.get("id")
            self.sections[str(self._section)] = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self._section = None

    def handle_data(self, data: str) -> None:
        if self._section is not None:
            self.sections[self._section].append(data)


def parse(page: str) -> _Parser:
    parser = _Parser()
    parser.feed(page)
    return parser


def section_text(page: str, name: str) -> str:
    return " ".join(" ".join(parse(page).sections[name]).split())


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def copy_folder(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("report.html", "parcel_signals.zarr"))
    return dst


# --------------------------------------------------------------------------------------------- content
def test_write_fit_outputs_writes_the_report(fit_folder: Path) -> None:
    assert (fit_folder / "report.html").is_file()
    assert not list(fit_folder.glob("*.partial"))
    assert not fit_folder.with_name(fit_folder.name + ".partial").exists()


def test_every_section_is_there(page: str) -> None:
    sections = parse(page).sections
    assert list(sections) == list(SECTIONS)
    for name in SECTIONS:
        assert section_text(page, name), f"section {name} is empty"


def test_metrics_numbers_come_from_fit_json(page: str, doc: dict) -> None:
    m = doc["metrics"]
    text = section_text(page, "metrics")
    assert f"{m['compression_r2']:.3f}" in text
    assert f"{m['sizes']['cv']:.2f}" in text
    assert f"largest parcel (voxels) {m['sizes']['largest']:,}" in text
    assert f"smallest parcel (voxels) {m['sizes']['smallest']:,}" in text
    assert f"median parcel size (voxels) {m['sizes']['median']:.1f}" in text
    assert f"singleton parcels (1 voxel) {m['sizes']['singletons']}" in text
    assert f"contiguity {100 * m['contiguity']:.1f} %" in text
    expected = ", ".join(map(str, m["disconnected_parcels"])) or "none"
    assert f"disconnected parcels {expected}" in text
    summary = section_text(page, "summary")
    assert f"{m['n_parcels']} parcels" in summary
    assert f"{m['compression_r2']:.3f} compression R²" in summary


def test_data_parameters_timings_versions_come_from_fit_json(page: str, doc: dict) -> None:
    data = section_text(page, "data")
    d = doc["data"]
    assert " × ".join(map(str, d["shape"])) in data
    assert f"voxels in mask {d['voxels_in_mask']:,}" in data
    assert f"runs {d['n_runs']}" in data
    assert f"volumes (all runs) {sum(d['n_volumes'])}" in data
    for run in d["runs"]:
        assert run in data
    # the synthetic run has TR 2 s in its header: recorded although no filter needs it
    assert "repetition time (TR) 2 s (the runs' headers)" in data

    params = section_text(page, "parameters")
    for key, value in doc["parameters"].items():
        shown = repr(value) if isinstance(value, str) else str(value)
        assert f"{key} {shown}" in params

    timings = section_text(page, "timings")
    for key, seconds in doc["timings"].items():
        assert f"{seconds:.2f} s" in timings, key
    # ward's merge loop, timed apart: the one step more cores do not shorten
    assert "serial: ward merge loop of the clustering, on one core whatever the cores" in timings
    bars = re.findall(r'<span style="width:([0-9.]+)%">', page)
    assert len(bars) == len(doc["timings"])
    assert max(map(float, bars)) == pytest.approx(100.0)

    versions = section_text(page, "versions")
    for package, version in doc["versions"].items():
        assert f"{package} {version}" in versions
    assert doc["created"] in versions
    for path in doc["inputs"]:
        assert path in section_text(page, "inputs")
    for item in doc["input_files"]:
        assert Path(item["path"]).is_absolute()
        assert f"{item['path']} {item['sha256']}" in section_text(page, "inputs")


def test_figures_are_embedded_pngs(page: str) -> None:
    images = parse(page).images
    assert len(images) == N_FIGURES
    for img in images:
        src = str(img["src"])
        assert src.startswith("data:image/png;base64,")
        width, height = png_size(base64.b64decode(src.split(",", 1)[1], validate=True))
        assert width > 200 and height > 100
        assert img.get("alt")


def test_page_is_self_contained(page: str) -> None:
    assert not re.search(r"https?://", page)
    tags = parse(page).tags
    assert not [a for t, a in tags if t == "link"]
    assert not [a for t, a in tags if t == "script" and a.get("src")]
    for tag, attrs in tags:
        for name in ("src", "href"):
            value = attrs.get(name)
            if value is not None and tag != "img":
                assert value.startswith("#"), f"<{tag} {name}={value!r}> leaves the page"


# ---------------------------------------------------------------------------------------- robustness
def test_text_from_fit_json_is_escaped(fit_folder: Path, tmp_path: Path) -> None:
    folder = copy_folder(fit_folder, tmp_path / "fit")
    doc = json.loads((folder / "fit.json").read_text())
    doc["inputs"] = ['<script>alert("x")</script>.nii.gz']
    doc["parameters"]["method"] = "<b>ward</b>"
    doc["data"]["runs"] = ["run&<1>"]
    (folder / "fit.json").write_text(json.dumps(doc))
    page = render_report(folder)
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "<b>ward</b>" not in page and "&lt;b&gt;ward&lt;/b&gt;" in page
    assert "run&amp;&lt;1&gt;" in page
    assert len(parse(page).images) == N_FIGURES


def test_missing_optional_files_are_reported_not_fatal(fit_folder: Path, tmp_path: Path) -> None:
    folder = copy_folder(fit_folder, tmp_path / "fit")
    (folder / "r2.nii.gz").unlink()
    (folder / "compressed_mean.nii.gz").write_bytes(b"not a nifti file")
    path = write_report(folder)
    page = path.read_text()
    figures = section_text(page, "figures")
    assert "r2.nii.gz is missing from the fit folder" in figures
    assert "compressed_mean.nii.gz cannot be read" in figures
    assert len(parse(page).images) == N_FIGURES - 2  # labels and sizes are still drawn
    files = section_text(page, "files")
    assert "r2.nii.gz" in files and "missing" in files
    # fit.json with parts absent: the sections say so
    (folder / "fit.json").write_text(json.dumps({"schema": 1}))
    page = render_report(folder)
    assert "fit.json records no quality metrics" in section_text(page, "metrics")
    assert "fit.json records no timings" in section_text(page, "timings")


def test_not_a_fit_folder(tmp_path: Path) -> None:
    with pytest.raises(
        InputError, match=r"not a daskparcel fit folder.*daskparcel fit \.\.\. --out DIR"
    ):
        write_report(tmp_path)
    assert not (tmp_path / "report.html").exists()
    with pytest.raises(InputError, match="not a daskparcel fit folder"):
        render_report(tmp_path / "absent")
    (tmp_path / "fit.json").write_text("{not json")
    with pytest.raises(InputError, match=r"fit\.json: cannot be read as JSON"):
        write_report(tmp_path)
    (tmp_path / "fit.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="expected a JSON object"):
        write_report(tmp_path)
    assert not (tmp_path / "report.html").exists()


def test_write_report_replaces_an_old_report(fit_folder: Path, tmp_path: Path) -> None:
    folder = copy_folder(fit_folder, tmp_path / "fit")
    (folder / "report.html").write_text("old")
    path = write_report(folder)
    assert path == folder / "report.html"
    assert path.read_text().startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in folder.iterdir() if "report" in p.name) == ["report.html"]


# ------------------------------------------------------------------------------------- real browser
def chromium() -> str:
    for candidate in CHROMIUM_CANDIDATES:
        if Path(candidate).is_file():
            return candidate
    pytest.skip(
        "chromium is not installed (looked for /usr/bin/chromium): install it with "
        "`apt-get install -y chromium` to run the headless-browser test of the report "
        "(.ci/run does this when run as root)"
    )


def run_chromium(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)


def test_report_renders_in_headless_chromium(fit_folder: Path, tmp_path: Path) -> None:
    from PIL import Image

    browser = chromium()
    url = (fit_folder / "report.html").resolve().as_uri()

    # the DOM after load: the page's script counts the images that decoded (naturalWidth > 0)
    dom = run_chromium(
        browser, tmp_path / "profile1", "--virtual-time-budget=10000", "--dump-dom", url
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", dom.stdout)
    assert body is not None, dom.stdout[:500]
    loaded = re.search(r'data-images-loaded="(\d+)"', body.group(1))
    total = re.search(r'data-images-total="(\d+)"', body.group(1))
    assert loaded and total, f"the load script did not run: {body.group(0)}"
    assert int(total.group(1)) == N_FIGURES
    assert int(loaded.group(1)) == N_FIGURES

    # a screenshot: the page is drawn, with its figures (many distinct colours, not a blank page)
    shot = tmp_path / "report.png"
    result = run_chromium(
        browser, tmp_path / "profile2", f"--screenshot={shot}", "--window-size=1200,3000", url
    )
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (3000, 1200)
    packed = pixels.astype(np.uint32) @ np.array([1 << 16, 1 << 8, 1], dtype=np.uint32)
    colours = np.unique(packed)
    assert len(colours) > 2000, f"only {len(colours)} colours: the figures are not drawn"
    rows_with_ink = np.mean(pixels.std(axis=(1, 2)) > 5)
    assert rows_with_ink > 0.5, "most of the page is blank"


# ------------------------------------------------------------------------------ TR, command, warnings, parcels
def test_tr_comes_from_the_input_header(doc: dict) -> None:
    header = nib.load(doc["input_files"][0]["path"]).header
    assert header.get_xyzt_units()[1] == "sec"
    assert doc["data"]["t_r"] == pytest.approx(float(header.get_zooms()[3]))


def test_command_is_recorded_and_shown(page: str, doc: dict, fit_folder: Path) -> None:
    argv = doc["command"]["argv"]
    assert argv[:2] == ["daskparcel", "fit"] and argv[-1] == str(fit_folder)
    assert shlex.join(argv) in section_text(page, "inputs")
    assert Path(doc["command"]["cwd"]).is_absolute()


def test_input_files_have_their_sha256(doc: dict) -> None:
    for item in doc["input_files"]:
        digest = hashlib.sha256(Path(item["path"]).read_bytes()).hexdigest()
        assert item["sha256"] == digest


def test_parcel_table_matches_the_images(fit_folder: Path, page: str) -> None:
    from scipy import ndimage

    labels_img = nib.load(fit_folder / "labels.nii.gz")
    labels = np.asarray(labels_img.dataobj)
    r2 = np.asarray(nib.load(fit_folder / "r2.nii.gz").dataobj, dtype=np.float64)
    k = int(labels.max())
    index = np.arange(1, k + 1)
    centres = nib.affines.apply_affine(
        labels_img.affine, np.array(ndimage.center_of_mass(labels > 0, labels, index))
    )
    rows = list(csv.DictReader((fit_folder / "parcels.tsv").open(), delimiter="\t"))
    assert [int(r["index"]) for r in rows] == list(index)
    assert [int(r["voxels"]) for r in rows] == list(np.bincount(labels.ravel())[1:])
    table_xyz = np.array([[float(r[c]) for c in ("x_mm", "y_mm", "z_mm")] for r in rows])
    np.testing.assert_allclose(table_xyz, centres, atol=0.01)
    mean_r2 = ndimage.mean(r2, labels, index)
    np.testing.assert_allclose([float(r["mean_r2"]) for r in rows], mean_r2, atol=1e-4)
    text = section_text(page, "parcels")
    assert f"{k} parcels" in text
    first = rows[0]
    assert f"1 {int(first['voxels']):,} {float(first['x_mm']):.1f}, " in text


def test_warnings_box(fit_folder: Path, tmp_path: Path, page: str, doc: dict) -> None:
    from daskparcel.outputs.report import SHORT_RUN_VOLUMES, TINY_MASK_VOXELS

    quiet = (
        doc["metrics"]["sizes"]["singletons"] == 0
        and doc["data"]["voxels_in_mask"] >= TINY_MASK_VOXELS
        and min(doc["data"]["n_volumes"]) >= SHORT_RUN_VOLUMES
    )
    assert ('id="warnings"' in page) == (not quiet)
    folder = copy_folder(fit_folder, tmp_path / "fit")
    bad = json.loads((folder / "fit.json").read_text())
    bad["metrics"]["sizes"]["singletons"] = 3
    bad["metrics"]["compression_r2"] = float("nan")
    bad["metrics"]["nan_r2_voxels"] = 12
    bad["data"]["voxels_in_mask"] = 120
    bad["data"]["runs"] = ["run-a", "run-b"]
    bad["data"]["n_volumes"] = [7, 300]
    (folder / "fit.json").write_text(json.dumps(bad))
    rendered = render_report(folder)
    box = re.search(r'<div class="warnings" id="warnings">(.*?)</div>', rendered, re.S)
    assert box is not None
    items = re.findall(r"<li>(.*?)</li>", box.group(1))
    assert len(items) == 5, items
    text = " ".join(items)
    assert "3 singleton parcel(s)" in text
    assert "120 voxels" in text
    assert "run-a (7 volumes)" in text and "run-b" not in text
    assert "R\u00b2 is NaN" in text
    assert "12 voxel(s) have a NaN R\u00b2" in text


def test_parcel_table_of_an_older_fit_folder(fit_folder: Path, tmp_path: Path) -> None:
    folder = copy_folder(fit_folder, tmp_path / "fit")
    rows = list(csv.DictReader((folder / "parcels.tsv").open(), delimiter="\t"))
    (folder / "parcels.tsv").unlink()  # written by daskparcel before parcels.tsv existed
    text = section_text(render_report(folder), "parcels")
    assert "parcels.tsv is missing: computed from the images" in text
    last = rows[-1]
    assert (
        f"{last['index']} {int(last['voxels']):,} {float(last['x_mm']):.1f}, "
        f"{float(last['y_mm']):.1f}, {float(last['z_mm']):.1f} {float(last['mean_r2']):.3f}"
    ) in text


def test_a_job_is_recorded_as_its_file_and_command(tmp_path: Path) -> None:
    from daskparcel import datasets
    from daskparcel.cli import main

    paths, _ = datasets.write_synthetic_nifti(tmp_path / "data", 1, 4, 30, n_parcels=10)
    job = tmp_path / "jobs" / "job.yaml"
    job.parent.mkdir()
    job.write_text(
        json.dumps(
            {
                "inputs": {"files": [str(paths[0])]},
                "parcellation": {"method": "kmeans", "n_parcels": 10, "n_components": 5},
                "output": "out",
            }
        )
    )
    assert main(["run", str(job)]) == 0
    fit = job.parent / "out" / "fit"
    doc = json.loads((fit / "fit.json").read_text())
    assert doc["command"]["job"] == str(job.resolve())
    assert doc["command"]["argv"] == ["daskparcel", "run", str(job)]
    sources = {item["path"]: item["sha256"] for item in doc["input_files"]}
    digest = hashlib.sha256(Path(paths[0]).read_bytes()).hexdigest()
    assert sources[str(Path(paths[0]).resolve())] == digest  # through the converted store
    text = section_text((fit / "report.html").read_text(), "inputs")
    assert f"job file {job.resolve()}" in text
    assert f"daskparcel run {job}" in text
