"""The HTML report of a fit folder: one self-contained page a researcher can open, mail or archive.

:func:`write_report` reads what :func:`daskparcel.outputs.results.write_fit_outputs` left in a fit folder
(``fit.json`` and the NIfTI images) and writes ``report.html`` beside them. The page has no external
resource: the CSS is inline, the figures are PNG ``data:`` URIs (:func:`daskparcel.outputs.plotting.figure_to_data_uri`),
and the only script is a few inline lines that record, once the page has loaded, how many figures
decoded (``<body data-images-loaded=N data-images-total=M>``), which the browser test reads.

Sections: summary (with a warnings box: singletons, a tiny mask, very short runs, NaN R^2), figures
(:mod:`daskparcel.outputs.figures`: parcels outlined over the mean image, original vs compressed mean on one
grey scale, parcel-size histogram, the R^2 map in the mask, on the same cuts), quality metrics, the per-parcel
table (``parcels.tsv``), data (with the TR), timings, parameters, the command and input files (absolute paths,
sha256), files, versions. An optional file that is missing (e.g. ``r2.nii.gz``) turns its figure into a note;
only ``fit.json`` is required.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import os
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from daskparcel.outputs._html import CSS, SCRIPT
from daskparcel.outputs._html import card as _card
from daskparcel.outputs._html import e as _e
from daskparcel.outputs._html import fmt_float as _fmt_float
from daskparcel.outputs._html import fmt_int as _fmt_int
from daskparcel.outputs._html import fmt_seconds as _fmt_seconds
from daskparcel.outputs._html import fmt_value as _fmt_value
from daskparcel.outputs._html import is_number as _is_number
from daskparcel.outputs._html import mapping as _mapping
from daskparcel.outputs._html import note as _note
from daskparcel.outputs._html import rows as _rows
from daskparcel.outputs.figures import Figures
from daskparcel.outputs.parcel_table import parcel_table, read_parcel_table
from daskparcel.outputs.record import FILES, METRICS, FitRecord, shown
from daskparcel.outputs.stability import stability_sections

logger = logging.getLogger(__name__)

__all__ = ["render_report", "write_report"]

REPORT_NAME = "report.html"
FIT_JSON = FILES["fit"]
DEFAULT_FILES = {k: v for k, v in FILES.items() if k not in ("fit", "report")}
FILE_DESCRIPTIONS = {
    "labels": "parcel labels (int32, 0 = background, 1..K)",
    "mask": "the mask the parcellation was learnt in",
    "mean": "temporal mean of the smoothed data in the mask",
    "compressed_mean": "the mean after compression (each voxel its parcel's mean)",
    "r2": "per-voxel compression R\u00b2",
    "parcel_signals": "parcel signals (time, parcel) of every run (zarr)",
    "parcels": "each parcel's size, centroid (mm) and mean R\u00b2 (tab-separated)",
}
# timing keys of fit.json in pipeline order, with what each step does
TIMING_STEPS = (
    ("inputs", "inputs", "read the runs' headers and hash their files (the cache's identity)"),
    ("mask", "mask", "compute the brain mask (one pass over the runs)"),
    ("signals", "signals", "smooth, mask and clean; write the signals store"),
    ("reduction", "reduction", "randomized SVD of the signals"),
    ("clustering", "clustering", "cluster the voxels"),
    ("total", "fit (total)", "the whole fit, the steps above included"),
    ("fit", "fit (total)", "the whole fit, the steps above included"),
    ("transform", "transform", "parcel signals of every run and quality metrics"),
    ("outputs", "outputs", "writing the images, signals and fit.json"),
)
#: Below these, the report warns: a mask of fewer voxels, a run of fewer volumes.
TINY_MASK_VOXELS = 1000
SHORT_RUN_VOLUMES = 30


# ------------------------------------------------------------------------------------------------ public
def write_report(out_dir: str | os.PathLike[str]) -> Path:
    """Write ``out_dir/report.html``, the self-contained HTML report of a fit folder.

    Parameters
    ----------
    out_dir : path
        A fit folder written by ``daskparcel fit ... --out DIR`` (or
        :func:`daskparcel.outputs.results.write_fit_outputs`): it must hold ``fit.json``; the images are optional.

    Returns
    -------
    pathlib.Path
        The path of ``report.html`` (written to a temporary name, then renamed: an existing report is only
        replaced by a complete one).

    Raises
    ------
    InputError
        ``out_dir`` is not a fit folder (no ``fit.json``) or its ``fit.json`` cannot be read.
    """
    folder = Path(out_dir)
    page = render_report(folder)
    target = folder / REPORT_NAME
    partial = folder / (REPORT_NAME + ".partial")
    partial.write_text(page, encoding="utf-8")
    os.replace(partial, target)
    logger.info("report written to %s (%.0f kB)", target, len(page) / 1024)
    return target


def render_report(out_dir: str | os.PathLike[str]) -> str:
    """The HTML of the report of a fit folder (see :func:`write_report`), as a string.

    Parameters
    ----------
    out_dir : path
        A fit folder holding ``fit.json``.

    Returns
    -------
    str
        A complete HTML5 document with its CSS and figures inline (errors as :func:`write_report`'s).
    """
    folder = Path(out_dir)
    doc = load_fit_json(folder)
    files = {**DEFAULT_FILES, **_mapping(doc.get("files"))}
    figures = Figures(folder, files, doc)
    params = _mapping(doc.get("parameters"))
    metrics = _mapping(doc.get("metrics"))
    method = params.get("method", "unknown method")
    n_parcels = metrics.get("n_parcels", params.get("n_parcels"))
    name = folder.resolve().name
    if name.endswith(
        ".partial"
    ):  # written by write_fit_outputs before the folder is moved into place
        name = name[: -len(".partial")]
    title = f"{method} parcellation, {_fmt_int(n_parcels)} parcels"
    sections = [
        ("summary", "Summary", _warnings_box(doc) + _summary(doc)),
        ("figures", "Figures", figures.html()),
        ("metrics", "Quality of the parcellation", _metrics_section(metrics)),
        *stability_sections(folder, metrics.get("n_parcels")),
        (
            "parcels",
            "Parcels",
            _parcels_section(folder / str(files.get("parcels", FILES["parcels"])), figures),
        ),
        ("data", "Data", _data_section(_mapping(doc.get("data")), doc, folder)),
        ("timings", "Timings", _timings_section(_mapping(doc.get("timings")))),
        ("parameters", "Parameters", _parameters_section(params)),
        ("inputs", "Command and inputs", _inputs_section(doc)),
        ("files", "Files", _files_section(folder, files)),
        ("versions", "Versions", _versions_section(doc)),
    ]
    nav = "".join(f'<a href="#{key}">{_e(label)}</a>' for key, label, _ in sections)
    body = "\n".join(
        f'<section id="{key}">\n<h2>{_e(label)}</h2>\n{content}\n</section>'
        for key, label, content in sections
    )
    created = doc.get("created")
    now = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    subtitle = f"fit folder {name}" + (f" \u00b7 fitted {created}" if created else "")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="daskparcel {_e(doc.get("daskparcel_version", ""))}">
<title>{_e(title)} \u2014 daskparcel report</title>
<style>{CSS}</style>
</head>
<body>
<header><div class="wrap">
<h1>{_e(title)}</h1>
<p>{_e(subtitle)}</p>
<nav>{nav}</nav>
</div></header>
<main>
{body}
</main>
<footer>Report written {_e(now)} by daskparcel {_e(doc.get("daskparcel_version", "?"))}.
Self-contained: no network resource is used.</footer>
<script>{SCRIPT}</script>
</body>
</html>
"""


def load_fit_json(folder: Path) -> dict[str, Any]:
    """The content of ``folder/fit.json``, or an :class:`InputError` saying how to make one."""
    return FitRecord.read(folder).to_dict()


# -------------------------------------------------------------------------------------------- sections
def _summary(doc: Mapping[str, Any]) -> str:
    metrics = _mapping(doc.get("metrics"))
    data = _mapping(doc.get("data"))
    timings = _mapping(doc.get("timings"))
    sizes = _mapping(metrics.get("sizes"))
    fit_time = timings.get("total", timings.get("fit"))
    contig = metrics.get("contiguity")
    cards = [
        _card(_fmt_int(metrics.get("n_parcels")), "parcels"),
        _card(_fmt_float(metrics.get("compression_r2")), "compression R\u00b2"),
        _card(f"{100 * contig:.1f} %" if _is_number(contig) else "?", "parcels connected"),
        _card(_fmt_float(sizes.get("cv"), 2), "parcel-size CV"),
        _card(_fmt_int(data.get("voxels_in_mask")), "voxels in the mask"),
        _card(_fmt_seconds(fit_time), "fit time"),
    ]
    return f'<div class="cards">{"".join(cards)}</div>'


def _parameters_section(params: Mapping[str, Any]) -> str:
    if not params:
        return _note("fit.json records no parameters.")
    first = ("method", "n_parcels", "n_components", "random_state", "smoothing_fwhm", "standardize")
    keys = [k for k in first if k in params] + sorted(k for k in params if k not in first)
    table = "".join(
        f"<tr><th><code>{_e(k)}</code></th><td><code>{_e(_fmt_value(params[k]))}</code></td></tr>"
        for k in keys
    )
    return (
        f'<table>{table}</table><p class="muted">The estimator\'s parameters, as passed to '
        "<code>daskparcel.Parcellations</code> (nilearn's names and defaults).</p>"
    )


def _header_t_r(doc: Mapping[str, Any], folder: Path) -> float | None:
    """The TR in the header of the first input, when it is a readable NIfTI file."""
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        return None
    path = Path(str(inputs[0]))
    if not path.is_absolute():
        path = folder / path
    if not path.is_file() or not path.name.endswith((".nii", ".nii.gz")):
        return None
    try:
        import nibabel as nib

        header: Any = nib.load(path).header
        zooms = header.get_zooms()
        if len(zooms) < 4 or not zooms[3] > 0:
            return None
        unit = header.get_xyzt_units()[1]
        scale = {"msec": 1e-3, "usec": 1e-6}.get(unit, 1.0)
        return float(zooms[3]) * scale
    except Exception:  # a header we cannot read only means no TR to show
        return None


def _data_section(data: Mapping[str, Any], doc: Mapping[str, Any], folder: Path) -> str:
    if not data:
        return _note("fit.json records no data description.")
    shape = data.get("shape")
    voxel_size = data.get("voxel_size")
    runs: list[Any] = data["runs"] if isinstance(data.get("runs"), list) else []
    n_volumes: list[Any] = data["n_volumes"] if isinstance(data.get("n_volumes"), list) else []
    t_r = data.get("t_r")
    if _is_number(t_r):
        source = data.get("t_r_source")
        t_r_text = f"{t_r:g} s" + (f" ({source})" if isinstance(source, str) and source else "")
    else:
        from_header = _header_t_r(doc, folder)
        t_r_text = (
            f"{from_header:g} s (from the header of the first input; not used by the fit)"
            if from_header is not None
            else f"not recorded: {data.get('t_r_source') or 'no TR in the inputs'}"
        )
    n_vol_total = sum(v for v in n_volumes if _is_number(v))
    rows = [
        (
            "grid shape (x, y, z)",
            " \u00d7 ".join(str(s) for s in shape) if isinstance(shape, list) else "?",
        ),
        (
            "voxel size",
            " \u00d7 ".join(f"{v:g}" for v in voxel_size) + " mm"
            if isinstance(voxel_size, list) and all(_is_number(v) for v in voxel_size)
            else "not recorded",
        ),
        ("voxels in mask", _fmt_int(data.get("voxels_in_mask"))),
        ("repetition time (TR)", t_r_text),
        ("runs", _fmt_int(data.get("n_runs", len(runs)))),
        ("volumes (all runs)", _fmt_int(n_vol_total) if n_volumes else "not recorded"),
    ]
    out = _rows(rows)
    if runs:
        body = "".join(
            f'<tr><td>{_e(run)}</td><td class="num">{_e(_fmt_int(n))}</td></tr>'
            for run, n in zip(runs, list(n_volumes) + [None] * (len(runs) - len(n_volumes)))
        )
        out += (
            f'<h3>Runs</h3><table><tr><th>run</th><th class="num">volumes</th></tr>{body}</table>'
        )
    return out


def _timings_section(timings: Mapping[str, Any]) -> str:
    if not timings:
        return _note("fit.json records no timings.")
    known = {key for key, _, _ in TIMING_STEPS}
    steps = [(k, label, what) for k, label, what in TIMING_STEPS if k in timings]
    steps += [
        (
            k,
            k,
            "of the clustering, on one core whatever the cores" if k.startswith("serial: ") else "",
        )
        for k in timings
        if k not in known
    ]
    total_keys = ("total", "fit")
    longest = max((float(timings[k]) for k, _, _ in steps if _is_number(timings[k])), default=0.0)
    rows = []
    for key, label, what in steps:
        value = timings[key]
        width = 100.0 * float(value) / longest if _is_number(value) and longest > 0 else 0.0
        css = ' class="total"' if key in total_keys else ""
        rows.append(
            f'<tr{css}><td>{_e(label)}</td><td class="muted">{_e(what)}</td>'
            f'<td class="num">{_e(_fmt_seconds(value))}</td>'
            f'<td class="bar-cell"><div class="bar"><span style="width:{width:.1f}%"></span></div></td></tr>'
        )
    head = '<tr><th>step</th><th>what it does</th><th class="num">time</th><th></th></tr>'
    return f'<table class="timings">{head}{"".join(rows)}</table>'


def _metrics_section(metrics: Mapping[str, Any]) -> str:
    if not metrics:
        return _note("fit.json records no quality metrics.")
    contig = metrics.get("contiguity")
    disconnected = metrics.get("disconnected_parcels")
    n_parcels = metrics.get("n_parcels")
    if isinstance(disconnected, list):
        shown_ids = ", ".join(str(p) for p in disconnected[:10])
        more = f" and {len(disconnected) - 10} more" if len(disconnected) > 10 else ""
        disc_text = "none" if not disconnected else f"{len(disconnected)}: {shown_ids}{more}"
    else:
        disc_text = "not recorded"
    connected = ""
    if _is_number(contig) and _is_number(n_parcels):
        connected = (
            f" ({round(contig * n_parcels)} of {int(n_parcels)} parcels are one connected region)"
        )
    rows = [(m.label, shown(metrics, m)) for m in METRICS]
    rows[[m.key for m in METRICS].index("contiguity")] = (
        "contiguity",
        shown(metrics, METRICS[[m.key for m in METRICS].index("contiguity")]) + connected,
    )
    rows.append(("disconnected parcels", disc_text))
    explain = (
        '<p class="muted">'
        + " ".join(
            f"{_e(m.label[0].upper() + m.label[1:])}: {_e(m.explain)}."
            for m in METRICS
            if m.explain
        )
        + "</p>"
    )
    return _rows(rows) + explain


def _inputs_section(doc: Mapping[str, Any]) -> str:
    command = _mapping(doc.get("command"))
    argv = command.get("argv")
    parts = []
    if isinstance(argv, list) and argv:
        parts.append(
            f"<h3>Command</h3><pre><code>{_e(shlex.join(str(a) for a in argv))}</code></pre>"
        )
        rows = [("working folder", str(command.get("cwd", "not recorded")))]
        if command.get("job"):
            rows.insert(0, ("job file", str(command["job"])))
        parts.append(_rows(rows))
    else:
        parts.append(_note("fit.json records no command (written by an older daskparcel)."))
    files = doc.get("input_files")
    if isinstance(files, list) and files:
        body = "".join(
            f"<tr><td><code>{_e(f.get('path'))}</code></td>"
            f"<td><code>{_e(f.get('sha256') or 'n/a')}</code></td></tr>"
            for f in files
            if isinstance(f, Mapping)
        )
        parts.append(
            f"<h3>Input files</h3><table><tr><th>path</th><th>sha256</th></tr>{body}</table>"
        )
    inputs = doc.get("inputs")
    if isinstance(inputs, list) and inputs:
        items = "".join(f"<li><code>{_e(i)}</code></li>" for i in inputs)
        parts.append(f"<h3>As given</h3><ul>{items}</ul>")
    elif not files:
        parts.append(_note("fit.json records no inputs."))
    return "".join(parts)


def _parcels_section(path: Path, figures: Figures) -> str:
    rows, source = read_parcel_table(path), ""
    if rows is None:  # a fit folder from before parcels.tsv: the table from its images
        labels, r2 = figures.image("labels"), figures.image("r2")
        if labels is None:
            return _note(
                f"Table not shown: {path.name} and the labels image are missing or unreadable."
            )
        volume = np.asarray(labels.dataobj)
        mask = volume > 0
        r2_values = None if r2 is None else np.asarray(r2.dataobj, dtype=np.float64)[mask]
        table = parcel_table(volume[mask], mask, labels.affine, r2_values)
        rows = [{c: float(table[c][i]) for c in table} for i in range(len(table["index"]))]
        source = f" ({path.name} is missing: computed from the images)"

    def cell(value: float, fmt: str) -> str:
        return "n/a" if math.isnan(value) else format(value, fmt)

    body = "".join(
        f'<tr><td class="num">{int(r["index"])}</td><td class="num">{int(r["voxels"]):,}</td>'
        f'<td class="num">{cell(r["x_mm"], ".1f")}, {cell(r["y_mm"], ".1f")}, {cell(r["z_mm"], ".1f")}</td>'
        f'<td class="num">{cell(r["mean_r2"], ".3f")}</td></tr>'
        for r in rows
    )
    head = (
        '<tr><th class="num">parcel</th><th class="num">voxels</th><th class="num">centroid (x, y, z mm)</th>'
        '<th class="num">mean R\u00b2</th></tr>'
    )
    return (
        f'<div class="scroll"><table>{head}{body}</table></div><p class="muted">{len(rows):,} parcels{source}; the '
        f"same table is <code>{_e(path.name)}</code> in the fit folder (mean R\u00b2: the mean of the "
        "per-voxel compression R\u00b2 over the parcel's voxels).</p>"
    )


def fit_warnings(doc: Mapping[str, Any]) -> list[str]:
    """What a reader of the report should be warned about: singleton parcels, a tiny mask, very short runs,
    NaN R^2 (each a sentence with its count)."""
    metrics, data = _mapping(doc.get("metrics")), _mapping(doc.get("data"))
    out = []
    singletons = _mapping(metrics.get("sizes")).get("singletons")
    if _is_number(singletons) and singletons > 0:
        out.append(
            f"{int(singletons):,} singleton parcel(s): parcels of one voxel carry no spatial average."
        )
    voxels, n_parcels = data.get("voxels_in_mask"), metrics.get("n_parcels")
    if _is_number(voxels) and voxels < TINY_MASK_VOXELS:
        per = f" ({voxels / n_parcels:.1f} voxels per parcel)" if _is_number(n_parcels) else ""
        out.append(
            f"The mask is tiny: {int(voxels):,} voxels{per}; check the mask strategy or pass a brain mask."
        )
    runs: list[Any] = data["runs"] if isinstance(data.get("runs"), list) else []
    volumes: list[Any] = data["n_volumes"] if isinstance(data.get("n_volumes"), list) else []
    short = [
        (str(r), int(n)) for r, n in zip(runs, volumes) if _is_number(n) and n < SHORT_RUN_VOLUMES
    ]
    if short:
        shown_runs = ", ".join(f"{r} ({n} volumes)" for r, n in short[:5])
        more = f" and {len(short) - 5} more" if len(short) > 5 else ""
        out.append(
            f"{len(short)} very short run(s), under {SHORT_RUN_VOLUMES} volumes: {shown_runs}{more}; their "
            "signals give unreliable parcels."
        )
    r2 = metrics.get("compression_r2")
    if isinstance(r2, float) and math.isnan(r2):
        out.append(
            "The compression R\u00b2 is NaN: the signals have no variance (constant or empty data)."
        )
    nan_voxels = metrics.get("nan_r2_voxels")
    if _is_number(nan_voxels) and nan_voxels > 0:
        out.append(
            f"{int(nan_voxels):,} voxel(s) have a NaN R\u00b2 (a constant signal), shown as 0."
        )
    return out


def _warnings_box(doc: Mapping[str, Any]) -> str:
    items = fit_warnings(doc)
    if not items:
        return ""
    body = "".join(f"<li>{_e(w)}</li>" for w in items)
    return f'<div class="warnings" id="warnings"><strong>Warnings</strong><ul>{body}</ul></div>'


def _files_section(folder: Path, files: Mapping[str, Any]) -> str:
    rows = []
    for key, rel in files.items():
        if key in ("fit", "report"):
            continue
        path = folder / str(rel)
        present = "present" if path.exists() else "missing"
        rows.append(
            f'<tr><td><code>{_e(rel)}</code></td><td class="muted">{_e(FILE_DESCRIPTIONS.get(key, ""))}</td>'
            f"<td>{present}</td></tr>"
        )
    return f"<table>{''.join(rows)}</table>"


def _versions_section(doc: Mapping[str, Any]) -> str:
    versions = _mapping(doc.get("versions"))
    rows = [(k, str(v)) for k, v in versions.items()]
    rows.append(("fitted (UTC)", str(doc.get("created", "not recorded"))))
    rows.append(("fit.json schema", str(doc.get("schema", "?"))))
    return _rows(rows)
