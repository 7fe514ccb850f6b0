"""Scheduled jobs: ``daskparcel run JOB.yaml``.

A job file names the inputs, the parcellation, the output folder and where to run::

    inputs:                       # files and globs ...
      files: ["data/sub-*_bold.nii.gz"]
      # ... or a BIDS derivatives folder with filters
      # bids: {root: derivatives/fmriprep, task: rest, space: MNI152NLin2009cAsym}
      confounds_columns: ["trans_*", "rot_*", "csf", "white_matter"]   # optional (BIDS confounds TSVs)
    convert: true                 # convert the runs to a cohort store first (resumable), default true
    parcellation:                 # daskparcel.Parcellations parameters (nilearn's names)
      method: ward
      n_parcels: 1000
      smoothing_fwhm: 4
    output: results/ward-1000     # the job's folder
    where: null                   # null (this machine), "tcp://host:8786", or a cluster YAML (deploy/)

The job's folder holds ``job.log`` (the log), ``job.yaml`` (what ran), ``cache/`` (the stores: converted runs,
signals, reductions), ``fit/`` (labels, mask, parcel signals of every run, fit.json, report.html) and ``done.json``.

Re-running a finished job does nothing and says what exists; re-running a failed or killed one resumes from the
stores already complete in ``cache/``. Exit codes: 0 done (or already done), 2 bad job file or input (nothing run),
1 a failure while running (re-run to resume).
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from daskparcel.errors import InputError

logger = logging.getLogger(__name__)

TOP_KEYS = {"inputs", "convert", "parcellation", "output", "where"}
INPUT_KEYS = {"files", "bids", "confounds_columns"}
BIDS_KEYS = {"root", "subject", "session", "task", "run", "space", "desc"}


@dataclass
class Job:
    """A validated job file."""

    path: Path
    files: list[Path]
    bids: dict[str, Any] | None
    confounds_columns: list[str] | None
    convert: bool
    parcellation: dict[str, Any]
    output: Path
    where: Any
    raw: dict[str, Any] = field(repr=False)

    @property
    def key(self) -> str:
        """A hash of what the job computes (changing any of it makes a different job)."""
        doc = {k: v for k, v in self.raw.items() if k != "where"}
        return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[
            :16
        ]


def load_job(path: str | os.PathLike[str]) -> Job:
    """Read and validate a job file: every key, every input file, every parameter, before anything runs."""
    from daskparcel.estimator import Parcellations

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such job file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML ({exc}); fix the job file") from exc
    if not isinstance(raw, dict):
        raise InputError(f"{path}: a job file is a mapping with keys {sorted(TOP_KEYS)}")
    _no_unknown(raw, TOP_KEYS, path, "")
    for key in ("inputs", "parcellation", "output"):
        if key not in raw:
            raise InputError(
                f"{path}: the key '{key}' is missing; see `daskparcel run --help` for the job file format"
            )
    base = path.parent
    inputs = raw["inputs"]
    if not isinstance(inputs, dict):
        raise InputError(f"{path}: 'inputs' must be a mapping with 'files' or 'bids'")
    _no_unknown(inputs, INPUT_KEYS, path, "inputs.")
    files: list[Path] = []
    for item in _as_list(inputs.get("files")):
        text = str(item) if os.path.isabs(str(item)) else str(base / str(item))
        if glob.has_magic(text):
            found = sorted(glob.glob(text))
            if not found:
                raise InputError(f"{path}: inputs.files: the glob {item!r} matches no file")
            files.extend(Path(f) for f in found)
        else:
            if not Path(text).exists():
                raise InputError(f"{path}: inputs.files: {item!r} does not exist ({text})")
            files.append(Path(text))
    bids = inputs.get("bids")
    if bids is not None:
        if isinstance(bids, str):
            bids = {"root": bids}
        if not isinstance(bids, dict) or "root" not in bids:
            raise InputError(f"{path}: inputs.bids needs a 'root' folder")
        _no_unknown(bids, BIDS_KEYS, path, "inputs.bids.")
        root = Path(bids["root"]) if os.path.isabs(str(bids["root"])) else base / str(bids["root"])
        bids = {**bids, "root": root}
        if not root.is_dir():
            raise InputError(f"{path}: inputs.bids.root: {root} is not a folder")
    if not files and bids is None:
        raise InputError(f"{path}: inputs names no run; give inputs.files or inputs.bids")
    parcellation = raw["parcellation"]
    if not isinstance(parcellation, dict):
        raise InputError(f"{path}: 'parcellation' must be a mapping of Parcellations parameters")
    known = set(Parcellations().get_params()) - {"client", "store"}
    _no_unknown(parcellation, known, path, "parcellation.")
    Parcellations(**parcellation)._validate_params()
    output = Path(raw["output"]) if os.path.isabs(str(raw["output"])) else base / str(raw["output"])
    if output.exists() and not output.is_dir():
        raise InputError(f"{path}: output: {output} is a file; give a folder")
    where = raw.get("where")
    if isinstance(where, str) and where.endswith((".yaml", ".yml")) and not os.path.isabs(where):
        where = str(base / where)
    columns = inputs.get("confounds_columns")
    return Job(
        path,
        files,
        bids,
        _as_list(columns) or None,
        bool(raw.get("convert", True)),
        parcellation,
        output,
        where,
        raw,
    )


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _no_unknown(doc: dict[str, Any], known: set[str], path: Path, prefix: str) -> None:
    unknown = sorted(set(doc) - known)
    if unknown:
        raise InputError(
            f"{path}: unknown key '{prefix}{unknown[0]}'; the keys of {prefix or 'a job file'} are {', '.join(sorted(known))}"
        )


def run_job(path: str | os.PathLike[str]) -> int:
    """Run (or resume, or skip) the job in ``path``; returns the exit code."""
    from daskparcel.estimator import Parcellations
    from daskparcel.ingest.bids import BidsRun, find_bids_runs
    from daskparcel.ingest.convert import convert
    from daskparcel.ingest.nifti import run_name
    from daskparcel.outputs.results import write_fit_outputs

    job = load_job(path)
    runs: list[Any] = list(job.files)
    confounds = None
    if job.bids is not None:
        filters = {k: v for k, v in job.bids.items() if k != "root"}
        found = find_bids_runs(job.bids["root"], **filters)
        runs += found
        if job.confounds_columns:
            confounds = [r.confounds for r in found]
            if any(c is None for c in confounds):
                missing = next(r.path for r in found if r.confounds is None)
                raise InputError(
                    f"{missing}: no confounds TSV beside it, but confounds_columns are asked"
                )
    out = job.output
    done = out / "done.json"
    if done.exists() and json.loads(done.read_text()).get("job") == job.key:
        print(
            f"job already done: outputs in {out / 'fit'} (report: {out / 'fit' / 'report.html'}); nothing to do"
        )
        return 0
    (out / "cache").mkdir(parents=True, exist_ok=True)
    (out / "job.yaml").write_text(yaml.safe_dump(job.raw, sort_keys=False))
    handler = logging.FileHandler(out / "job.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    root_logger = logging.getLogger("daskparcel")
    root_logger.addHandler(handler)
    previous_level = root_logger.level
    root_logger.setLevel(min(previous_level or logging.INFO, logging.INFO))
    try:
        logger.info("job %s (%s): %d runs", job.path, job.key, len(runs))
        imgs: Any = runs
        if job.convert:
            # BIDS runs are named by their entities (sub-01_task-rest_run-1), files by their names
            names = [r.name if isinstance(r, BidsRun) else run_name(r) for r in runs]
            paths = [r.path if isinstance(r, BidsRun) else r for r in runs]
            result = convert(paths, out / "cache" / "runs.zarr", names=names)
            logger.info("%s", result.summary())
            imgs = out / "cache" / "runs.zarr"
        est = Parcellations(**job.parcellation, store=out / "cache", client=job.where)
        est.fit(imgs, confounds=confounds)
        doc = write_fit_outputs(
            est,
            imgs,
            out / "fit",
            confounds=confounds,
            inputs=[str(getattr(r, "path", r)) for r in runs],
            overwrite=True,
        )
        done.write_text(
            json.dumps(
                {"job": job.key, "timings": doc["timings"], "metrics": doc["metrics"]}, indent=1
            )
        )
        logger.info("job done: %s", out / "fit")
        print(
            f"job done: {job.parcellation.get('method')} {est.n_parcels} parcels on {len(runs)} run(s), "
            f"compression R2 {doc['metrics']['compression_r2']:.3f}; outputs in {out / 'fit'}"
        )
        return 0
    except InputError:
        raise
    except Exception:
        logger.exception(
            "job failed: re-run `daskparcel run %s` to resume from the completed stores", job.path
        )
        raise
    finally:
        root_logger.removeHandler(handler)
        root_logger.setLevel(previous_level)
        handler.close()
