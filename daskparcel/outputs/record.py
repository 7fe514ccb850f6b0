"""The fit record behind ``fit.json``: one dataclass, the fit folder's file names, and the quality metrics,
each listed once (where it sits in the record, its label, how it is shown).

The writer (:mod:`daskparcel.outputs.results`), the report, the CLI summary and the demo table all read the
metrics from :data:`METRICS`: a new metric is its function in :mod:`daskparcel.metrics`, the line that stores it
in ``write_fit_outputs`` and one entry here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daskparcel.errors import InputError

SCHEMA = 1

#: The files of a fit folder (beside its BIDS files), by role.
FILES: dict[str, str] = {
    "labels": "labels.nii.gz",
    "mask": "mask.nii.gz",
    "mean": "mean.nii.gz",
    "compressed_mean": "compressed_mean.nii.gz",
    "r2": "r2.nii.gz",
    "parcel_signals": "parcel_signals.zarr",
    "parcels": "parcels.tsv",
    "fit": "fit.json",
    "report": "report.html",
}


def _float(digits: int) -> Callable[[Any], str]:
    return lambda v: f"{float(v):.{digits}f}"


def _int(v: Any) -> str:
    return f"{int(v):,}"


def _percent(v: Any) -> str:
    return f"{100 * float(v):.1f} %"


@dataclass(frozen=True)
class Metric:
    """A quality figure of a fit: its place in ``fit.json``'s metrics (a dotted key), label and format."""

    key: str
    label: str
    fmt: Callable[[Any], str]
    #: Its short name in one-line summaries (CLI, demo); None: not in summaries.
    short: str | None = None
    explain: str = ""


METRICS: tuple[Metric, ...] = (
    Metric("n_parcels", "parcels", _int),
    Metric(
        "compression_r2",
        "compression R\u00b2",
        _float(3),
        "compression R2",
        "the fraction of the variance of the cleaned voxel signals explained by their parcel's mean",
    ),
    Metric(
        "homogeneity",
        "homogeneity",
        _float(3),
        "homogeneity",
        "the size-weighted mean correlation between the voxels of a parcel (Schaefer et al. 2018); on "
        "z-scored signals it nearly equals the compression R\u00b2 when parcels are large (both grow with "
        "each parcel's squared mean series); compare it between fits of one preprocessing",
    ),
    Metric(
        "stability.ari",
        "stability (ARI between resampled fits)",
        _float(3),
        "stability ARI",
        "the mean adjusted Rand index of the parcels of refits on bootstrap samples of subjects or split "
        "halves of time, at this K (`daskparcel stability --fit`; Thirion et al. 2014)",
    ),
    Metric("sizes.cv", "parcel size: coefficient of variation", _float(2), "size cv"),
    Metric("sizes.largest", "largest parcel (voxels)", _int),
    Metric("sizes.smallest", "smallest parcel (voxels)", _int),
    Metric("sizes.median", "median parcel size (voxels)", _float(1)),
    Metric("sizes.singletons", "singleton parcels (1 voxel)", _int),
    Metric(
        "contiguity",
        "contiguity",
        _percent,
        "contiguity",
        "the fraction of parcels that are one 6-connected region of the grid",
    ),
)


def metric_value(metrics: Mapping[str, Any], key: str) -> Any:
    """The value at a dotted ``key`` of a metrics mapping, or None when it is not recorded."""
    value: Any = metrics
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def shown(metrics: Mapping[str, Any], metric: Metric) -> str:
    """A metric as the report and the summaries show it ("not recorded" when absent)."""
    value = metric_value(metrics, metric.key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "not recorded"
    if value != value:  # NaN
        return "NaN"
    return metric.fmt(value)


def summary_line(metrics: Mapping[str, Any]) -> str:
    """The metrics of one-line summaries, e.g. ``R2 0.512, size cv 0.83, contiguity 100.0 %``."""
    return ", ".join(
        f"{m.short} {shown(metrics, m)}"
        for m in METRICS
        if m.short and metric_value(metrics, m.key) is not None
    )


@dataclass
class FitRecord:
    """What ``fit.json`` holds (schema :data:`SCHEMA`)."""

    daskparcel_version: str
    versions: dict[str, str]
    created: str
    inputs: list[str]
    parameters: dict[str, Any]
    data: dict[str, Any]
    timings: dict[str, float]
    metrics: dict[str, Any]
    files: dict[str, str] = field(default_factory=lambda: dict(FILES))
    bids: dict[str, Any] = field(default_factory=dict)
    schema: int = SCHEMA
    #: What ran the fit: ``{"argv": [...], "cwd": str, "job": absolute job file path or None}``.
    command: dict[str, Any] = field(default_factory=dict)
    #: The input files: ``[{"path": absolute path, "sha256": hex or None, "bytes": int or None}]``.
    input_files: list[dict[str, Any]] = field(default_factory=list)
    #: Where it ran: ``{"client": {"host", "pid", "slurm_job_id"?}, "workers": [{"name", "address", "host", "pid",
    #: "threads", "slurm_job_id"?, "left"?}]}``: every dask worker the fit had (none on the local threaded
    #: scheduler; see :mod:`daskparcel.runtime.workers`).
    runtime: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def write(self, folder: str | os.PathLike[str]) -> Path:
        path = Path(folder) / FILES["fit"]
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def read(cls, folder: str | os.PathLike[str]) -> FitRecord:
        """The record of a fit folder; an InputError naming the folder when it has none or it is damaged."""
        folder = Path(folder)
        path = folder / FILES["fit"]
        if not path.is_file():
            raise InputError(
                f"{folder}: not a daskparcel fit folder (no {FILES['fit']}); run daskparcel fit ... --out DIR "
                "to make one"
            )
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(
                f"{path}: cannot be read as JSON ({exc}); re-run daskparcel fit ... --out {folder} "
                "--overwrite"
            ) from None
        if not isinstance(doc, dict):
            raise InputError(
                f"{path}: expected a JSON object, got {type(doc).__name__}; re-run daskparcel fit ... "
                f"--out {folder} --overwrite"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in doc.items() if k in names}
        defaults: dict[str, Any] = {
            "daskparcel_version": "",
            "versions": {},
            "created": "",
            "inputs": [],
            "parameters": {},
            "data": {},
            "timings": {},
            "metrics": {},
        }
        for key, value in defaults.items():
            if not isinstance(known.get(key, value), type(value)):
                raise InputError(
                    f"{path}: its {key!r} is a {type(known[key]).__name__}, not a "
                    f"{type(value).__name__}; re-run daskparcel fit to write it again"
                )
            known.setdefault(key, value)
        return cls(**known)


def command_record(
    argv: Sequence[str] | None = None, job: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """The ``command`` of a fit record: the command line (default: this process's ``sys.argv``), the working
    folder it ran in, and the job file's absolute path when a job ran it."""
    return {
        "argv": [str(a) for a in (sys.argv if argv is None else argv)],
        "cwd": os.getcwd(),
        "job": None if job is None else str(Path(job).resolve()),
    }


def describe_input_files(items: Iterable[Any]) -> list[dict[str, Any]]:
    """Absolute path, sha256 and size of every input file behind ``items`` (paths, globs, BIDS runs, images
    loaded from files, run stores: their source files as ``convert`` recorded them)."""
    from daskparcel._checks import expand_glob
    from daskparcel.store.runs import file_sha256, store_info

    out: list[dict[str, Any]] = []
    for item in items:
        path = getattr(item, "path", None)
        if path is None and hasattr(item, "get_filename"):
            path = item.get_filename()
        if path is None and isinstance(item, str | os.PathLike):
            path = item
        if path is None:
            continue
        text = str(path)
        if any(c in text for c in "*?[") and not Path(text).exists():
            out += describe_input_files(expand_glob(text))
        elif Path(text).is_file():
            resolved = Path(text).resolve()
            out.append(
                {
                    "path": str(resolved),
                    "sha256": file_sha256(resolved),
                    "bytes": resolved.stat().st_size,
                }
            )
        else:
            sources = (store_info(text) or {}).get("identity", {})
            sources = sources.get("sources", []) if isinstance(sources, dict) else []
            out.append({"path": str(Path(text).resolve()), "sha256": None, "bytes": None})
            out += [
                {"path": str(s.get("path")), "sha256": s.get("sha256"), "bytes": None}
                for s in sources
                if isinstance(s, dict)
            ]
    return out


def quality_metrics(
    r2: float,
    homogeneity: float,
    n_parcels: int,
    sizes: Any,
    contiguity: float,
    disconnected: Iterable[Any],
) -> dict[str, Any]:
    """The quality part of ``fit.json``'s ``metrics``, the same for voxel and surface fits."""
    from numpy import median

    return {
        "compression_r2": float(r2),
        "homogeneity": float(homogeneity),
        "n_parcels": int(n_parcels),
        "sizes": {
            "cv": float(sizes.cv),
            "largest": int(sizes.largest),
            "smallest": int(sizes.sizes.min()),
            "median": float(median(sizes.sizes)),
            "singletons": int(sizes.n_singletons),
        },
        "contiguity": float(contiguity),
        "disconnected_parcels": [int(p) for p in disconnected],
    }


def runtime_record(est: Any) -> dict[str, Any]:
    """``fit.json``'s ``runtime``: where the client ran, and every dask worker the fit had."""
    from daskparcel.runtime.workers import client_identity

    return {"client": client_identity(), "workers": list(getattr(est, "workers_", []))}


def saved_parameters(fit_json: Path, fix: str = "or give --labels labels.nii.gz") -> dict[str, Any]:
    """The ``parameters`` of a fit folder's fit.json; a one-line InputError (ending with ``fix``) when it
    cannot be read."""
    try:
        doc = json.loads(fit_json.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(
            f"{fit_json}: not a readable fit.json ({exc}); re-run `daskparcel fit`, {fix}"
        ) from exc
    params = doc.get("parameters") if isinstance(doc, dict) else None
    if not isinstance(params, dict):
        raise InputError(f"{fit_json}: has no 'parameters' mapping; re-run `daskparcel fit`, {fix}")
    return params
