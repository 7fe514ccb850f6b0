"""The HTML report of a fit folder: one self-contained page a researcher can open, mail or archive.

:func:`write_report` reads what :func:`daskparcel.outputs.results.write_fit_outputs` left in a fit folder
(``fit.json`` and the NIfTI images) and writes ``report.html`` beside them. The page has no external
resource: the CSS is inline, the figures are PNG ``data:`` URIs (:func:`daskparcel.outputs.plotting.figure_to_data_uri`),
and the only script is a few inline lines that record, once the page has loaded, how many figures
decoded (``<body data-images-loaded=N data-images-total=M>``), which the browser test reads.

Sections: summary, parameters, data, timings, quality metrics, figures (labels over the mean image,
original vs compressed mean on one grey scale, parcel-size histogram, compression R^2 map), inputs,
files, versions. An optional file that is missing (e.g. ``r2.nii.gz``) turns its figure into a note;
only ``fit.json`` is required.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np

from daskparcel.outputs.record import FILES, METRICS, FitRecord, shown

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
}
# timing keys of fit.json in pipeline order, with what each step does
TIMING_STEPS = (
    ("mask", "mask", "compute the brain mask (one pass over the runs)"),
    ("signals", "signals", "smooth, mask and clean; write the signals store"),
    ("reduction", "reduction", "randomized SVD of the signals"),
    ("clustering", "clustering", "cluster the voxels"),
    ("total", "fit (total)", "the whole fit, the steps above included"),
    ("fit", "fit (total)", "the whole fit, the steps above included"),
    ("transform", "transform", "parcel signals of every run and quality metrics"),
    ("outputs", "outputs", "writing the images, signals and fit.json"),
)
DPI = 100

CSS = """
:root { --ink:#1f2933; --muted:#616e7c; --line:#e4e7eb; --accent:#2f6f9f; --bg:#f5f7fa; --card:#fff; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header { background:#16324f; color:#fff; padding:28px 0 22px; }
header .wrap, main { max-width:1040px; margin:0 auto; padding:0 24px; }
header h1 { margin:0 0 4px; font-size:26px; font-weight:600; }
header p { margin:0; color:#c8d6e5; }
nav { margin-top:14px; font-size:13px; }
nav a { color:#dbe7f3; margin-right:14px; text-decoration:none; border-bottom:1px dotted #9fb3c8; }
main { padding-top:22px; padding-bottom:40px; }
section { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:18px 22px;
  margin:0 0 18px; }
h2 { margin:0 0 12px; font-size:19px; font-weight:600; color:#16324f; }
h3 { margin:18px 0 6px; font-size:16px; font-weight:600; }
table { border-collapse:collapse; width:100%; font-size:14px; }
th, td { text-align:left; padding:5px 10px 5px 0; border-bottom:1px solid var(--line); vertical-align:top; }
th { color:var(--muted); font-weight:500; width:34%; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; width:auto; white-space:nowrap; }
table.timings th, table.timings td { width:auto; }
table.timings td.bar-cell { width:38%; }
tr.total td { font-weight:600; }
code { font: 13px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.cards { display:grid; grid-template-columns:repeat(auto-fit, minmax(135px, 1fr)); gap:12px; }
.card { border:1px solid var(--line); border-radius:8px; padding:10px 14px; background:#fbfcfd; }
.card .value { font-size:24px; font-weight:600; color:var(--accent); font-variant-numeric:tabular-nums; }
.card .label { font-size:13px; color:var(--muted); }
.bar { background:#e9eef3; border-radius:3px; height:12px; min-width:160px; }
.bar span { display:block; height:12px; border-radius:3px; background:var(--accent); }
figure { margin:10px 0 22px; }
figure img { display:block; max-width:100%; height:auto; border:1px solid var(--line); border-radius:4px; }
figcaption { color:var(--muted); font-size:13px; margin-top:6px; }
.note { color:#8a4b08; background:#fff8e6; border:1px solid #f3d9a4; border-radius:6px; padding:8px 12px; }
.muted { color:var(--muted); }
p.muted { font-size:13px; margin:10px 0 0; }
footer { color:var(--muted); font-size:13px; text-align:center; padding:0 0 28px; }
"""

# Records how many figures decoded once the page has loaded (read by the headless-browser test).
SCRIPT = """
window.addEventListener("load", function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) { if (imgs[i].complete && imgs[i].naturalWidth > 0) { ok++; } }
  document.body.setAttribute("data-images-total", String(imgs.length));
  document.body.setAttribute("data-images-loaded", String(ok));
});
"""


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
        A complete HTML5 document with its CSS and figures inline.

    Raises
    ------
    InputError
        ``out_dir`` is not a fit folder (no ``fit.json``) or its ``fit.json`` cannot be read.
    """
    folder = Path(out_dir)
    doc = load_fit_json(folder)
    files = {**DEFAULT_FILES, **_mapping(doc.get("files"))}
    figures = _Figures(folder, files, doc)
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
        ("summary", "Summary", _summary(doc)),
        ("figures", "Figures", figures.html()),
        ("metrics", "Quality of the parcellation", _metrics_section(metrics)),
        ("data", "Data", _data_section(_mapping(doc.get("data")), doc, folder)),
        ("timings", "Timings", _timings_section(_mapping(doc.get("timings")))),
        ("parameters", "Parameters", _parameters_section(params)),
        ("inputs", "Inputs", _inputs_section(doc.get("inputs"))),
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


# --------------------------------------------------------------------------------------------- helpers
def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _fmt_int(value: Any) -> str:
    if _is_number(value) and float(value).is_integer():
        return f"{int(value):,}"
    return "?" if value is None else str(value)


def _fmt_float(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if _is_number(value) else "not recorded"


def _fmt_seconds(value: Any) -> str:
    if not _is_number(value):
        return "not recorded"
    return f"{value:.2f} s" if value < 60 else f"{value / 60:.1f} min ({value:.0f} s)"


def _fmt_value(value: Any) -> str:
    """A parameter value as Python shows it (what the user passed)."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, list | tuple | dict):
        return json.dumps(value)
    return str(value)


def _rows(rows: Iterable[tuple[str, str]], raw: bool = False) -> str:
    """A two-column table; values are escaped unless ``raw`` (already HTML)."""
    body = "".join(f"<tr><th>{_e(k)}</th><td>{v if raw else _e(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


def _card(value: str, label: str) -> str:
    return f'<div class="card"><div class="value">{_e(value)}</div><div class="label">{_e(label)}</div></div>'


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
        t_r_text = f"{t_r:g} s"
    else:
        from_header = _header_t_r(doc, folder)
        t_r_text = (
            f"{from_header:g} s (from the header of the first input; not used by the fit)"
            if from_header is not None
            else "not recorded (not needed: no temporal filtering)"
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
    steps += [(k, k, "") for k in timings if k not in known]
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


def _inputs_section(inputs: Any) -> str:
    if not isinstance(inputs, list) or not inputs:
        return _note("fit.json records no inputs.")
    items = "".join(f"<li><code>{_e(i)}</code></li>" for i in inputs)
    return f"<ul>{items}</ul>"


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


# --------------------------------------------------------------------------------------------- figures
class _Figures:
    """The figures of the report, each a PNG data URI or a note saying why it is absent."""

    def __init__(self, folder: Path, files: Mapping[str, Any], doc: Mapping[str, Any]) -> None:
        self.folder = folder
        self.files = files
        self.doc = doc
        self._images: dict[str, Any] = {}
        self._errors: dict[str, str] = {}

    def image(self, key: str) -> Any:
        """The nibabel image of ``files[key]`` (loaded in memory: these are 3D volumes), or None."""
        if key in self._images or key in self._errors:
            return self._images.get(key)
        import nibabel as nib

        path = self.folder / str(self.files.get(key, DEFAULT_FILES.get(key, key)))
        if not path.is_file():
            self._errors[key] = f"{path.name} is missing from the fit folder"
            return None
        try:
            img: Any = nib.load(path)
            img = nib.Nifti1Image(np.asarray(img.dataobj), img.affine, img.header)
        except Exception as exc:  # a damaged optional file: say so in the page, keep the report
            logger.warning("report: cannot read %s: %s", path, exc)
            self._errors[key] = f"{path.name} cannot be read ({exc})"
            return None
        self._images[key] = img
        return img

    def _missing(self, keys: Iterable[str]) -> str | None:
        problems = [self._errors[k] for k in keys if self.image(k) is None and k in self._errors]
        return "; ".join(problems) if problems else None

    def _figure(
        self, title: str, needs: tuple[str, ...], draw: Callable[[], Any], caption: str, alt: str
    ) -> str:
        from daskparcel.outputs.plotting import figure_to_data_uri

        head = f"<h3>{_e(title)}</h3>"
        missing = self._missing(needs)
        if missing:
            return head + _note(f"Figure not drawn: {missing}.")
        try:
            uri = figure_to_data_uri(draw(), dpi=DPI)
        except Exception as exc:  # one figure failing must not lose the rest of the report
            logger.warning("report: figure %r failed", title, exc_info=True)
            return head + _note(f"Figure not drawn: {type(exc).__name__}: {exc}")
        return (
            f'{head}<figure><img src="{uri}" alt="{_e(alt)}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>"
        )

    def html(self) -> str:
        from daskparcel.outputs.plotting import plot_compressed, plot_labels, plot_r2_map

        params = _mapping(self.doc.get("parameters"))
        metrics = _mapping(self.doc.get("metrics"))
        data = _mapping(self.doc.get("data"))
        method = str(params.get("method", ""))
        n_parcels = _fmt_int(metrics.get("n_parcels", params.get("n_parcels")))
        n_voxels = _fmt_int(data.get("voxels_in_mask"))
        cuts: dict[str, Any] = {}

        def labels() -> Any:
            display = plot_labels(
                self.image("labels"),
                self.image("mean"),
                title=f"{method} parcellation",
                display_mode="xz",
            )
            cuts["xz"] = display.cut_coords
            return display

        def compressed() -> Any:
            return plot_compressed(
                self.image("mean"),
                self.image("compressed_mean"),
                cut_coords=cuts.get("xz"),
                titles=(
                    f"Original ({n_voxels} voxels)",
                    f"{method} compressed representation ({n_parcels} parcels)",
                ),
            )

        def histogram() -> Any:
            return _size_histogram(self.image("labels"), method)

        def r2() -> Any:
            return plot_r2_map(self.image("r2"), self.image("mean"), title="Compression R\u00b2")

        parts = [
            self._figure(
                "Parcels over the mean image",
                ("labels", "mean"),
                labels,
                "Each colour is one parcel, drawn over the temporal mean of the smoothed data "
                "(as in nilearn's example, sagittal and axial cuts).",
                f"{method} parcels over the mean image",
            ),
            self._figure(
                "Original vs compressed mean image",
                ("mean", "compressed_mean"),
                compressed,
                "Top: the mean image; bottom: the same after compression, each voxel replaced by its "
                "parcel's mean. Both panels share one grey scale (same vmin / vmax).",
                "original and compressed mean images",
            ),
            self._figure(
                "Parcel sizes",
                ("labels",),
                histogram,
                "Number of parcels per size bin (log-spaced bins; the dashed line is the median size).",
                "histogram of parcel sizes",
            ),
            self._figure(
                "Compression R\u00b2 map",
                ("r2", "mean"),
                r2,
                "Per voxel, the fraction of its signal's variance explained by its parcel's mean.",
                "map of the per-voxel compression R squared",
            ),
        ]
        return "\n".join(parts)


def _size_histogram(labels_img: Any, method: str) -> Any:
    """One parcellation's parcel sizes: the panel of :func:`daskparcel.outputs.plotting.plot_size_histograms`
    (same log-spaced bins), for a single fit, with its median marked."""
    from matplotlib.figure import Figure

    from daskparcel.metrics import parcel_sizes

    sizes = parcel_sizes(np.asarray(labels_img.dataobj))
    values = sizes.sizes[sizes.sizes > 0]
    top = max(int(sizes.largest), 2)
    edges = np.logspace(0, np.log10(top), 31)
    edges[0], edges[-1] = 1.0, float(top)
    fig = Figure(figsize=(8.0, 3.2), layout="constrained")
    ax = fig.subplots()
    ax.hist(values, bins=list(edges), color="tab:blue", edgecolor="white")
    median = float(np.median(values))
    ax.axvline(median, color="0.25", linestyle="--", linewidth=1)
    ax.annotate(
        f"median {median:g}", (median, 1.0), xycoords=("data", "axes fraction"),
        xytext=(4, -14), textcoords="offset points", fontsize=9, color="0.25",
    )  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("parcel size (voxels)")
    ax.set_ylabel("number of parcels")
    ax.set_title(f"{method}: {sizes.n_parcels} parcels, CV {sizes.cv:.2f}")
    return fig
