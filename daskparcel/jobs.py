"""Scheduled jobs: ``daskparcel run JOB.yaml``.

A job file names the inputs, the parcellation, the output folder and where to run::

    inputs:                       # files and globs ...
      files: ["data/sub-*_bold.nii.gz"]
      # ... or a BIDS derivatives folder with filters
      # bids: {root: derivatives/fmriprep, task: rest, space: MNI152NLin2009cAsym}
      confounds_columns: ["trans_*", "rot_*", "csf", "white_matter"]   # optional (BIDS confounds TSVs)
    convert: true                 # convert the runs to a cohort store first (resumable), default true
    parcellation:                 # daskparcel.Parcellations parameters (nilearn's names; all but store, client)
      method: ward
      n_parcels: 1000
      smoothing_fwhm: 4
      # mask: brain_mask.nii.gz   # paths are relative to this file
    output: results/ward-1000     # the job's folder
    where: null                   # null (this machine), "tcp://host:8786", or a cluster YAML (deploy/)

Every key is checked before anything is written: types (true/false unquoted, numbers as numbers), paths
(inputs, mask, a cluster file), the output's writability. The parcellation keys are the parameters
``daskparcel fit`` has flags for (one table for both, ``daskparcel.jobs.PARAMETERS``).

The job's folder holds ``job.log`` (the log), ``job.yaml`` (what ran), ``cache/`` (the stores: converted runs,
signals, reductions), ``fit/`` (labels, mask, parcel signals of every run, fit.json, report.html) and ``done.json``.

Re-running a finished job does nothing and says what exists; re-running a failed or killed one resumes from the
stores already complete in ``cache/``. Exit codes: 0 done (or already done), 2 bad job file or input (nothing run),
1 a failure while running (re-run to resume).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from daskparcel._checks import expand_glob
from daskparcel.clustering import METHODS
from daskparcel.errors import InputError

logger = logging.getLogger(__name__)

TOP_KEYS = {
    "inputs", "convert", "parcellation", "output", "where", "connectomes", "performance_report"
}  # fmt: skip
INPUT_KEYS = {"files", "bids", "confounds_columns"}
BIDS_KEYS = {"root", "subject", "session", "task", "run", "space", "desc"}


# --------------------------------------------------------------------------------- the parameter table
# Every Parcellations parameter a user can set from the command line (``--smoothing-fwhm``) or a job file
# (``parcellation: {smoothing_fwhm: ...}``): one table, read by both, so the two cannot drift. ``store`` and
# ``client`` are not here: the CLI spells them ``--store`` / ``--scheduler`` / ``--cluster``, a job ``output``
# (its ``cache/``) and ``where``.
@dataclass(frozen=True)
class Param:
    """One estimator parameter: its kind (how a value is checked and parsed from text) and its help.

    kind is one of ``int`` (``minimum`` applies), ``float`` (> 0), ``bool``, ``choice`` (``choices``),
    ``fwhm`` (mm >= 0, or none), ``standardize``, ``path`` (an existing file), ``mapping`` (``mask_args``:
    JSON or key=value words) and ``strings`` (a list of names or globs). ``preprocessing`` marks the
    parameters ``transform`` applies (carried over from a fit folder's fit.json); ``transform`` marks the
    others that ``transform`` also takes.
    """

    name: str
    kind: str
    help: str
    choices: tuple[Any, ...] = ()
    minimum: int = 0
    preprocessing: bool = False
    transform: bool = False

    @property
    def flag(self) -> str:
        """The command-line spelling (``--smoothing-fwhm``)."""
        return "--" + self.name.replace("_", "-")

    def check(self, value: Any, base: Path | None = None) -> Any:
        """``value`` as the estimator takes it; raises ValueError saying what is wrong and what to give.

        Paths are resolved against ``base`` (the job file's folder; None: the current directory).
        """
        kind = self.kind
        if kind == "int":
            if isinstance(value, bool) or not isinstance(value, int) or value < self.minimum:
                raise ValueError(f"must be an integer >= {self.minimum}")
            return value
        if kind == "float":
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError("must be a positive number")
            return float(value)
        if kind == "bool":
            if not isinstance(value, bool):
                raise ValueError("must be a boolean: true or false (unquoted)")
            return value
        if kind == "choice":
            if value not in self.choices:
                raise ValueError(f"must be one of {', '.join(map(str, self.choices))}")
            return value
        if kind == "fwhm":
            if value is None or (isinstance(value, str) and value.lower() == "none"):
                return None
            if value == "fast":
                return value
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise ValueError("must be >= 0 (a FWHM in mm), fast, or none")
            return float(value) or None  # 0: no smoothing, as nilearn
        if kind == "standardize":
            if value in (None, False, "none"):
                return False
            if value is True or value in ("zscore_sample", "zscore", "psc"):
                return value
            raise ValueError("must be one of none, zscore_sample, zscore, psc")
        if kind == "path":
            if value is None:
                return None
            if not isinstance(value, str | os.PathLike):
                raise ValueError("must be a file path")
            path = Path(value)
            if base is not None and not path.is_absolute():
                path = base / path
            if not path.is_file():
                raise ValueError(f"must be an existing file ({path} does not exist)")
            return str(path)
        if kind == "mapping":
            if value is None:
                return None
            if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
                raise ValueError("must be a mapping of keyword arguments")
            return dict(value)
        if kind == "strings":
            if value is None:
                return None
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, list | tuple) or not all(isinstance(v, str) for v in items):
                raise ValueError("must be a name or a list of names")
            return list(items)
        raise AssertionError(kind)  # pragma: no cover

    def parse(self, text: Any) -> Any:
        """A command-line value (text, a list of words, or a boolean flag's True/False) as ``check`` takes it."""
        kind = self.kind
        if kind in ("bool", "strings") or not isinstance(text, str):
            return text
        if kind == "int":
            try:
                return int(text)
            except ValueError:
                return text
        if kind in ("float", "fwhm"):
            if text.lower() in ("none", "fast"):
                return None if text.lower() == "none" else "fast"
            try:
                return float(text)
            except ValueError:
                return text
        if kind == "mapping":
            return _parse_mapping(text)
        return text

    def from_cli(self, text: Any) -> Any:
        """Parse and check a command-line value; InputError naming the flag."""
        try:
            return self.check(self.parse(text))
        except ValueError as exc:
            raise InputError(f"{self.flag} {_words(text)}: {exc}; see `--help`") from exc


def _words(text: Any) -> str:
    return " ".join(map(str, text)) if isinstance(text, list | tuple) else str(text)


def _parse_mapping(text: str) -> Any:
    """``mask_args`` from the command line: a JSON object, or ``key=value`` words (values read as YAML)."""
    text = text.strip()
    if text.startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"must be a JSON object or key=value words (not valid JSON: {exc.msg})"
            ) from exc
    doc: dict[str, Any] = {}
    for word in text.replace(",", " ").split():
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise ValueError(
                f"must be a JSON object or key=value words ({word!r} is not key=value)"
            )
        doc[key] = yaml.safe_load(value)
    return doc


# the estimator's and the masking module's own tuples (a test keeps them equal): importing those modules here
# would make `daskparcel --help` wait for dask and scikit-learn
MASK_STRATEGIES = ("epi", "background", "whole-brain-template", "gm-template", "wm-template")
_pre = functools.partial(Param, preprocessing=True)  # a parameter of the signals' preprocessing
PARAMETERS: tuple[Param, ...] = (
    Param("method", "choice", "the clustering", tuple(METHODS)),
    Param("n_parcels", "int", "number of parcels (default 50)", minimum=1),
    Param("random_state", "int", "seed of the reduction and kmeans (default 0)"),
    Param("mask", "path", "a mask image (default: computed by --mask-strategy)"),
    _pre("smoothing_fwhm", "fwhm", "FWHM in mm (0 or none: no smoothing; default 4)"),
    _pre("standardize", "standardize", "per-voxel standardization (default: none)"),
    _pre("standardize_confounds", "bool", "z-score the confounds (default: yes)"),
    _pre("detrend", "bool", "remove linear trends (default: no)"),
    _pre("low_pass", "float", "low-pass cut-off (Hz)"),
    _pre("high_pass", "float", "high-pass cut-off (Hz)"),
    _pre("t_r", "float", "repetition time (s); default: from the headers"),
    Param("mask_strategy", "choice", "how the mask is computed (default epi)", MASK_STRATEGIES),
    Param("mask_args", "mapping", "mask function arguments: JSON or key=value words"),
    Param("scaling", "bool", "ReNA: scale features by sqrt(cluster size) (default: no)"),
    Param("n_iter", "int", "ReNA: iterations (default 10)", minimum=1),
    Param("verbose", "int", "0 silent, 1 steps, 2 details (default: from -v)", transform=True),
    Param("n_components", "int", "components of the reduction (default 200)", minimum=1),
    Param("voxel_chunk", "int", "voxels per chunk of the signals store", minimum=1),
    Param("chunk_volumes", "int", "volumes per chunk read from NIfTI", minimum=1, transform=True),
    Param("connectivity", "path", "ward/complete/average: a voxel graph (.npz, scipy.sparse)"),
    Param(
        "kmeans_method", "choice", "kmeans: minibatch (nilearn) or lloyd", ("minibatch", "lloyd")
    ),
    Param("n_init", "int", "kmeans family: starts, the best by R^2 kept (default 1)", minimum=1),
    Param("weighting", "bool", "kmeans family: weigh components by their signal (default: yes)"),
    Param("distance_threshold", "float", "ward/complete/average: cut the tree at this distance"),
    _pre("confounds_columns", "strings", "columns of the confounds files (names or globs)"),
)
PARAMETER_NAMES = {p.name: p for p in PARAMETERS}


def estimator_kwargs(values: dict[str, Any]) -> dict[str, Any]:
    """Checked parameter values as ``Parcellations`` keyword arguments (a connectivity file loaded)."""
    kwargs = dict(values)
    if kwargs.get("distance_threshold") is not None and "n_parcels" not in kwargs:
        kwargs["n_parcels"] = (
            None  # the tree is cut at the distance (scikit-learn's n_clusters=None)
        )
    path = kwargs.get("connectivity")
    if path is not None:
        import scipy.sparse

        try:
            kwargs["connectivity"] = scipy.sparse.load_npz(path)
        except (OSError, ValueError) as exc:
            raise InputError(
                f"{path}: not a scipy.sparse .npz file ({exc}); save the graph with scipy.sparse.save_npz"
            ) from exc
    return kwargs


def check_writable(path: str | os.PathLike[str], what: str) -> Path:
    """Refuse an output location that cannot be written, before any data is read.

    The location (or the nearest folder above it that exists) gets a probe folder made and removed.
    """
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    folder = existing if existing.is_dir() else existing.parent
    try:
        probe = tempfile.mkdtemp(prefix=".daskparcel-probe-", dir=folder)
        os.rmdir(probe)
    except OSError as exc:
        raise InputError(
            f"{what} {path}: cannot write in {folder} ({exc.strerror}); give a writable location"
        ) from exc
    return path


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
    connectomes: list[str] = field(default_factory=list)
    performance_report: Path | None = None

    @property
    def key(self) -> str:
        """A hash of what the job computes (changing any of it makes a different job)."""
        doc = {k: v for k, v in self.raw.items() if k != "where"}
        return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[
            :16
        ]


def load_job(path: str | os.PathLike[str]) -> Job:
    """Read and validate a job file: every key, every input file, every parameter, before anything runs.

    Parameters
    ----------
    path : path
        The job YAML file; relative paths in it (inputs, mask, output, a cluster file) are relative to its folder.

    Returns
    -------
    Job

    Raises
    ------
    InputError
        A missing or unknown key, a value of the wrong type, a path that does not exist, an output that
        cannot be written: the first one found, named.
    """
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
    for item in _strings(inputs.get("files"), path, "inputs.files"):
        text = item if os.path.isabs(item) else str(base / item)
        found = expand_glob(text, source=f"{path}: inputs.files")
        if len(found) == 1 and not found[0].exists():
            raise InputError(f"{path}: inputs.files: {item!r} does not exist ({text})")
        files.extend(found)
    bids = inputs.get("bids")
    if bids is not None:
        if isinstance(bids, str):
            bids = {"root": bids}
        if not isinstance(bids, dict) or "root" not in bids:
            raise InputError(f"{path}: inputs.bids needs a 'root' folder")
        _no_unknown(bids, BIDS_KEYS, path, "inputs.bids.")
        if not isinstance(bids["root"], str):
            raise InputError(f"{path}: inputs.bids.root: {bids['root']!r} is not a folder path")
        for key, value in bids.items():
            if key != "root":
                _strings(value, path, f"inputs.bids.{key}")
        root = Path(bids["root"]) if os.path.isabs(bids["root"]) else base / bids["root"]
        bids = {**bids, "root": root}
        if not root.is_dir():
            raise InputError(f"{path}: inputs.bids.root: {root} is not a folder")
    if not files and bids is None:
        raise InputError(f"{path}: inputs names no run; give inputs.files or inputs.bids")
    columns = _strings(inputs.get("confounds_columns"), path, "inputs.confounds_columns")
    convert = raw.get("convert", True)
    if not isinstance(convert, bool):
        raise InputError(f"{path}: convert: {convert!r} is not a boolean; write true or false")
    parcellation = raw["parcellation"]
    if not isinstance(parcellation, dict):
        raise InputError(f"{path}: 'parcellation' must be a mapping of Parcellations parameters")
    _no_unknown(parcellation, set(PARAMETER_NAMES), path, "parcellation.")
    checked: dict[str, Any] = {}
    for name, value in parcellation.items():
        try:
            checked[name] = PARAMETER_NAMES[name].check(value, base)
        except ValueError as exc:
            raise InputError(
                f"{path}: parcellation.{name}: {value!r} {exc}; fix the job file"
            ) from exc
    try:
        Parcellations(**estimator_kwargs(checked))._validate_params()
    except InputError as exc:
        raise InputError(f"{path}: parcellation: {exc}") from exc
    output_text = raw["output"]
    if not isinstance(output_text, str) or not output_text.strip():
        raise InputError(f"{path}: output: {output_text!r} is not a folder path; give one path")
    output = Path(output_text) if os.path.isabs(output_text) else base / output_text
    if output.exists() and not output.is_dir():
        raise InputError(f"{path}: output: {output} is a file; give a folder")
    check_writable(output, f"{path}: output:")
    where = _check_where(raw.get("where"), base, path)
    from daskparcel.outputs.connectomes import check_kinds
    from daskparcel.runtime.connect import performance_report_path

    report = raw.get("performance_report")
    if report is not None and not isinstance(report, str):
        raise InputError(f"{path}: performance_report: {report!r} is not a file path (.html)")
    try:
        connectomes = check_kinds(raw.get("connectomes"), name="connectomes")
        report_path = performance_report_path(
            None if report is None else str(report if os.path.isabs(report) else base / report),
            where,
            "performance_report:",
        )
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from exc
    return Job(
        path,
        files,
        bids,
        columns or None,
        convert,
        checked,
        output,
        where,
        raw,
        connectomes,
        report_path,
    )


def _check_where(where: Any, base: Path, path: Path) -> Any:
    """``where``: null, a scheduler address, or a cluster YAML file (relative to the job file), validated."""
    from daskparcel.runtime import load_cluster_config

    if where is None:
        return None
    if not isinstance(where, str) or not where.strip():
        raise InputError(
            f"{path}: where: {where!r} must be null, a scheduler address (tcp://host:8786) or a cluster YAML file"
        )
    if re.fullmatch(r"[a-z]+://\S+|[\w.\-]+:\d+", where.strip()):
        return where
    file = Path(where) if os.path.isabs(where) else base / where
    if not file.is_file():
        raise InputError(
            f"{path}: where: {where!r} is neither a scheduler address (tcp://host:8786) nor an existing "
            f"cluster YAML file ({file})"
        )
    try:
        load_cluster_config(file)
    except InputError as exc:
        raise InputError(f"{path}: where: {exc}") from exc
    return str(file)


def _strings(value: Any, path: Path, key: str) -> list[str]:
    items = _as_list(value)
    if not all(isinstance(v, str) for v in items):
        raise InputError(f"{path}: {key}: {value!r} must be a name or a list of names (text)")
    return items


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
    from daskparcel.runtime import load_cluster_config
    from daskparcel.runtime.connect import performance_report

    job = load_job(path)
    if (
        isinstance(job.where, str) and Path(job.where).is_file()
    ):  # before converting: sinfo, no data read
        from daskparcel.runtime.site import check_site

        check_site(load_cluster_config(job.where))
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
        with performance_report(job.performance_report, job.where) as client:
            est = Parcellations(
                **estimator_kwargs(job.parcellation), store=out / "cache", client=client
            )
            est.fit(imgs, confounds=confounds)
        doc = write_fit_outputs(
            est,
            imgs,
            out / "fit",
            confounds=confounds,
            inputs=[str(getattr(r, "path", r)) for r in runs],
            overwrite=True,
            connectomes=job.connectomes,
            job=job.path,
            argv=["daskparcel", "run", str(path)],  # however run_job was called
        )
        done.write_text(
            json.dumps(
                {"job": job.key, "timings": doc["timings"], "metrics": doc["metrics"]}, indent=1
            )
        )
        logger.info("job done: %s", out / "fit")
        print(
            f"job done: {job.parcellation.get('method')} {est.n_elements_} parcels on {len(runs)} run(s), "
            f"compression R2 {doc['metrics']['compression_r2']:.3f}; outputs in {out / 'fit'}"
        )
        return 0
    except InputError as exc:
        logger.error("job failed: bad input: %s", " ".join(str(exc).split()))
        raise
    except KeyboardInterrupt:
        logger.error(
            "job interrupted: re-run `daskparcel run %s` to resume from the completed stores",
            job.path,
        )
        raise
    except BaseException:
        logger.exception(
            "job failed: re-run `daskparcel run %s` to resume from the completed stores", job.path
        )
        raise
    finally:
        root_logger.removeHandler(handler)
        root_logger.setLevel(previous_level)
        handler.close()
