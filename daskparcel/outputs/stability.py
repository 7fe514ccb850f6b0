"""The outputs of a stability run: its table (TSV, JSON), its figure, and its record in a fit folder.

``daskparcel stability ... --out DIR`` writes ``stability.tsv`` (one row per K), ``stability.json`` (the same
table with the run's settings and samples) and ``stability.png`` (accuracy and reproducibility against K, as
in Thirion et al. 2014). With ``--fit FITDIR`` it also writes ``FITDIR/stability.json`` and records the ARI at
the fit's K in ``FITDIR/fit.json``'s metrics (``stability``), which the report shows.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "STABILITY_FILES",
    "record_in_fit",
    "stability_doc",
    "stability_figure",
    "stability_sections",
    "write_stability",
]

STABILITY_FILES = {"table": "stability.tsv", "json": "stability.json", "figure": "stability.png"}

ACCURACY_LABELS = {"r2": "held-out compression R\u00b2", "homogeneity": "held-out homogeneity"}


def _json_value(value: Any) -> Any:
    if isinstance(value, float | np.floating):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def stability_doc(table: pd.DataFrame, argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The JSON record of a stability table: its settings (``table.attrs``) and one mapping per K."""
    from daskparcel import __version__

    rows = [
        {str(key): _json_value(value) for key, value in row.items()}
        for row in table.to_dict(orient="records")
    ]
    return {
        "kind": "stability",
        "version": __version__,
        "command": list(argv) if argv is not None else None,
        **{str(key): _json_value(value) for key, value in table.attrs.items()},
        "table": rows,
    }


def stability_figure(rows: Sequence[Mapping[str, Any]], method: str, accuracy: str) -> Any:
    """Accuracy and reproducibility (ARI, AMI) against K, side by side, with their standard deviations.

    Parameters
    ----------
    rows : sequence of mappings
        The table's rows (``n_parcels``, ``ari_mean``, ``ari_sd``, ``ami_mean``, ``ami_sd``,
        ``accuracy_mean``, ``accuracy_sd``), as :func:`stability_doc` records them.
    method, accuracy : str
        For the titles.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    def column(name: str) -> np.ndarray:
        return np.array([np.nan if r.get(name) is None else float(r[name]) for r in rows])

    ks = column("n_parcels")
    fig = Figure(figsize=(9, 3.4), dpi=100, layout="constrained")
    left, right = fig.subplots(1, 2)
    left.errorbar(ks, column("accuracy_mean"), yerr=column("accuracy_sd"), marker="o", capsize=3)
    left.set_ylabel(ACCURACY_LABELS.get(accuracy, accuracy))
    left.set_title("accuracy")
    right.errorbar(
        ks, column("ari_mean"), yerr=column("ari_sd"), marker="o", capsize=3, label="ARI"
    )
    right.errorbar(
        ks, column("ami_mean"), yerr=column("ami_sd"), marker="s", capsize=3, label="AMI"
    )
    right.set_ylabel("agreement between samples")
    right.set_title("reproducibility")
    right.legend(loc="best")
    for ax in (left, right):
        ax.set_xlabel("number of parcels K")
        if len(ks) > 1 and np.nanmax(ks) / max(np.nanmin(ks), 1) >= 8:
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{method}: stability and accuracy against K")
    return fig


def write_stability(
    table: pd.DataFrame, out: str | os.PathLike[str], argv: Sequence[str] | None = None
) -> dict[str, Any]:
    """Write ``stability.tsv``, ``stability.json`` and ``stability.png`` into the folder ``out``.

    Returns
    -------
    dict
        The JSON record written (see :func:`stability_doc`).
    """
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    doc = stability_doc(table, argv)
    table.to_csv(folder / STABILITY_FILES["table"], sep="\t", index=False, float_format="%.6g")
    _write_json(folder / STABILITY_FILES["json"], doc)
    fig = stability_figure(doc["table"], str(doc.get("method")), str(doc.get("accuracy")))
    fig.savefig(folder / STABILITY_FILES["figure"])
    return doc


def _write_json(path: Path, doc: Mapping[str, Any], indent: int = 2) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(doc, indent=indent) + "\n", encoding="utf-8")
    os.replace(partial, path)


def fit_summary(doc: Mapping[str, Any], n_parcels: Any) -> dict[str, Any]:
    """What fit.json's metrics keep of a stability record: the row at the fit's K (None where absent)."""
    row = next((r for r in doc.get("table", []) if r.get("n_parcels") == n_parcels), None)
    keys = ("ari_mean", "ari_sd", "ami_mean", "ami_sd", "accuracy_mean", "accuracy_sd")
    out = {
        "ari": None if row is None else row.get("ari_mean"),
        **({} if row is None else {k: row.get(k) for k in keys}),
        "resampling": doc.get("resampling"),
        "accuracy": doc.get("accuracy"),
        "n_samples": None if row is None else row.get("n_samples"),
        "n_parcels": [r.get("n_parcels") for r in doc.get("table", [])],
    }
    return out


def record_in_fit(fit_dir: str | os.PathLike[str], stability: Mapping[str, Any]) -> dict[str, Any]:
    """Keep a stability record in a fit folder: ``stability.json``, ``fit.json``'s ``metrics.stability``
    (the ARI, AMI and accuracy at the fit's K) and the report, rewritten.

    Returns
    -------
    dict
        The ``metrics.stability`` mapping written.
    """
    from daskparcel.outputs.report import write_report

    folder = Path(fit_dir)
    doc = json.loads((folder / "fit.json").read_text())
    metrics = doc.setdefault("metrics", {})
    n_parcels = metrics.get("n_parcels", doc.get("parameters", {}).get("n_parcels"))
    summary = fit_summary(stability, n_parcels)
    metrics["stability"] = summary
    _write_json(folder / STABILITY_FILES["json"], stability)
    _write_json(folder / "fit.json", doc, indent=1)
    write_report(folder)
    return summary


def stability_sections(folder: Path, n_parcels: Any) -> list[tuple[str, str, str]]:
    """The report's stability section of a fit folder (none without ``stability.json``): the table, the fit's
    K marked, and the figure."""
    from daskparcel.outputs._html import e, fmt_float, note
    from daskparcel.outputs.plotting import figure_to_data_uri

    path = folder / STABILITY_FILES["json"]
    if not path.is_file():
        return []
    try:
        doc = json.loads(path.read_text())
        rows = list(doc["table"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        return [("stability", "Stability", note(f"{path.name} could not be read: {exc}"))]
    head = "".join(
        f"<th>{e(h)}</th>"
        for h in ("K", "ARI", "ARI sd", "AMI", "AMI sd", "accuracy", "accuracy sd", "samples")
    )
    body = "".join(
        "<tr"
        + (' class="fit"' if r.get("n_parcels") == n_parcels else "")
        + ">"
        + f"<td>{e(r.get('n_parcels'))}{' (this fit)' if r.get('n_parcels') == n_parcels else ''}</td>"
        + "".join(
            f"<td>{fmt_float(r.get(k))}</td>"
            for k in ("ari_mean", "ari_sd", "ami_mean", "ami_sd", "accuracy_mean", "accuracy_sd")
        )
        + f"<td>{e(r.get('n_samples'))}</td></tr>"
        for r in rows
    )
    accuracy = str(doc.get("accuracy"))
    intro = (
        f"<p>{e(doc.get('method'))}: {e(doc.get('resampling'))} resampling, the pairwise agreement of the "
        f"refits' parcels (ARI, AMI) and their {e(ACCURACY_LABELS.get(accuracy, accuracy))} on the data each "
        "sample left out (Thirion et al. 2014), from stability.json.</p>"
    )
    try:
        uri = figure_to_data_uri(stability_figure(rows, str(doc.get("method")), accuracy), dpi=100)
        figure = f'<figure><img src="{uri}" alt="accuracy and ARI against K"></figure>'
    except Exception as exc:  # a figure failing must not lose the report
        figure = note(f"Figure not drawn: {type(exc).__name__}: {exc}")
    html_table = f"<table><tr>{head}</tr>{body}</table>"
    return [("stability", "Stability and the choice of K", intro + html_table + figure)]
