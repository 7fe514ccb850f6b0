"""Cluster files: their schema and validation, and the clusters they start (SLURM / PBS through dask-jobqueue,
Kubernetes through dask-kubernetes' operator, or a ``LocalCluster``). Examples live in ``deploy/``.

A cluster file is YAML: ``kind`` (local | slurm | pbs | kubernetes), the options of that backend's cluster
class (checked here, with the typo's nearest valid key in the error), and ``adapt`` / ``scale``. Several named
configurations may share one file (``clusters.yaml#name``).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import logging
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from dask.utils import parse_bytes

from daskparcel._checks import is_int
from daskparcel.errors import InputError

logger = logging.getLogger(__name__)

ADDRESS_SCHEMES = ("tcp://", "tls://", "ws://", "wss://", "ucx://", "inproc://")
KINDS = ("local", "slurm", "pbs", "kubernetes")

# kind -> (module to import, class name, pip extra that provides it)
_BACKENDS: dict[str, tuple[str, str, str | None]] = {
    "local": ("distributed", "LocalCluster", None),
    "slurm": ("dask_jobqueue", "SLURMCluster", "slurm"),
    "pbs": ("dask_jobqueue", "PBSCluster", "slurm"),
    "kubernetes": ("dask_kubernetes.operator", "KubeCluster", "kubernetes"),
}
_JOB_CLASSES = {
    "slurm": ("dask_jobqueue.slurm", "SLURMJob"),
    "pbs": ("dask_jobqueue.pbs", "PBSJob"),
}

# ----------------------------------------------------------------------------------------------
# schema of a cluster file
# ----------------------------------------------------------------------------------------------

Check = Callable[[str, Any], str | None]  # (key, value) -> problem or None


def _int_at_least(low: int) -> Check:
    def check(key: str, value: Any) -> str | None:
        if not is_int(value) or value < low:
            return f"must be an integer >= {low}"
        return None

    return check


def _string(key: str, value: Any) -> str | None:
    return None if isinstance(value, str) and value else "must be a non-empty string"


def _boolean(key: str, value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def _bytes(key: str, value: Any) -> str | None:
    if is_int(value) and value > 0:
        return None
    if isinstance(value, str):
        try:
            parse_bytes(value)
        except (ValueError, TypeError):
            return "must be a memory size such as '16GiB' or '4000MB'"
        return None
    return "must be a memory size such as '16GiB' or '4000MB'"


def _memory_limit(key: str, value: Any) -> str | None:
    if value == "auto" or (isinstance(value, float) and 0 < value <= 1):
        return None
    return _bytes(key, value)


_WALLTIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")


def walltime_seconds(text: str) -> float | None:
    """SLURM's time formats (``infinite``, ``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]``) in seconds."""
    text = text.strip()
    if text in ("infinite", "UNLIMITED", "n/a", ""):
        return None
    days = 0
    if "-" in text:
        head, text = text.split("-", 1)
        days = int(head)
        parts = [int(p) for p in text.split(":")] + [0] * (3 - len(text.split(":")))
        hours, minutes, seconds = parts[:3]
    else:
        parts = [int(p) for p in text.split(":")]
        if len(parts) == 1:
            hours, minutes, seconds = 0, parts[0], 0
        elif len(parts) == 2:
            hours, minutes, seconds = 0, parts[0], parts[1]
        else:
            hours, minutes, seconds = parts[:3]
    return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


def _walltime(key: str, value: Any) -> str | None:
    if isinstance(value, str) and _WALLTIME.match(value):
        return None
    return "must be a string such as '02:00:00' (HH:MM:SS) or '1-00:00:00' (D-HH:MM:SS)"


def _string_list(key: str, value: Any) -> str | None:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return None
    return "must be a list of strings"


def _string_or_list(key: str, value: Any) -> str | None:
    if isinstance(value, str) and value:
        return None
    return _string_list(key, value)


def _mapping(key: str, value: Any) -> str | None:
    return None if isinstance(value, dict) else "must be a mapping"


def _env(key: str, value: Any) -> str | None:
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return None
    if isinstance(value, list) and all(isinstance(v, dict) and "name" in v for v in value):
        return None
    return "must be a mapping NAME: value (or a Kubernetes env list of {name, value})"


def _k8s_resources(key: str, value: Any) -> str | None:
    if not isinstance(value, dict):
        return "must be a mapping with 'requests' and/or 'limits', e.g. {limits: {cpu: '1', memory: 4Gi}}"
    for field in value:
        if field not in ("requests", "limits"):
            return f"has unknown field {field!r}; use 'requests' and/or 'limits'"
        if not isinstance(value[field], dict):
            return f"field {field!r} must be a mapping such as {{cpu: '1', memory: 4Gi}}"
    return None


_JOBQUEUE_KEYS: dict[str, Check] = {
    # Job keywords (dask_jobqueue.core.Job and the scheduler-specific Job classes)
    "cores": _int_at_least(1),
    "memory": _bytes,
    "processes": _int_at_least(1),
    "walltime": _walltime,
    "queue": _string,
    "account": _string,
    "job_name": _string,
    "job_extra_directives": _string_list,
    "job_directives_skip": _string_list,
    "job_script_prologue": _string_list,
    "worker_extra_args": _string_list,
    "worker_command": _string,
    "local_directory": _string,
    "log_directory": _string,
    "interface": _string,
    "death_timeout": _int_at_least(1),
    "python": _string,
    "shebang": _string,
    "nanny": _boolean,
    # cluster keywords (JobQueueCluster)
    "name": _string,
    "protocol": _string,
    "scheduler_options": _mapping,
    "shared_temp_directory": _string,
}
# keys of JobQueueCluster that are not Job keywords (left out of job_script's dummy job)
_JOBQUEUE_CLUSTER_ONLY = ("name", "scheduler_options", "shared_temp_directory")

_KIND_KEYS: dict[str, dict[str, Check]] = {
    "local": {
        "n_workers": _int_at_least(0),
        "threads_per_worker": _int_at_least(1),
        "processes": _boolean,
        "memory_limit": _memory_limit,
        "host": _string,
        "scheduler_port": _int_at_least(0),
        "dashboard_address": _string,
        "local_directory": _string,
    },
    "slurm": {**_JOBQUEUE_KEYS, "job_cpu": _int_at_least(1), "job_mem": _bytes},
    "pbs": {**_JOBQUEUE_KEYS, "resource_spec": _string},
    "kubernetes": {
        "name": _string,
        "namespace": _string,
        "image": _string,
        "n_workers": _int_at_least(0),
        "resources": _k8s_resources,
        "env": _env,
        "worker_command": _string_or_list,
        "scheduler_service_type": _string,
        "idle_timeout": _int_at_least(1),
        "resource_timeout": _int_at_least(1),
        "shutdown_on_close": _boolean,
        "port_forward_cluster_ip": _boolean,
    },
}
_REQUIRED: dict[str, tuple[str, ...]] = {
    "local": (),
    "slurm": ("cores", "memory"),
    "pbs": ("cores", "memory"),
    "kubernetes": ("name", "image"),
}
_COMMON_KEYS = ("kind", "adapt", "scale")


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    """A validated cluster configuration (see :func:`load_cluster_config`).

    Attributes
    ----------
    kind : str
        ``"local"``, ``"slurm"``, ``"pbs"`` or ``"kubernetes"``.
    options : dict
        Keyword arguments of the cluster class (``LocalCluster``, ``SLURMCluster``, ``PBSCluster``,
        ``KubeCluster``), as written in the file.
    adapt : tuple of int or None
        ``(minimum, maximum)`` workers for adaptive scaling.
    scale : int or None
        Fixed number of workers to ask for.
    source : str
        Where the configuration came from (a file path, with ``#name``, or ``"<dict>"``).
    """

    kind: str
    options: dict[str, Any]
    adapt: tuple[int, int] | None = None
    scale: int | None = None
    source: str = "<dict>"


def _unknown_key_error(source: str, kind: str, key: str, allowed: list[str]) -> InputError:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return InputError(
        f"cluster config {source}: unknown key {key!r} for kind {kind!r}{hint}; allowed keys: "
        f"{', '.join(allowed)}. Remove or rename it (examples in deploy/)."
    )


def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise InputError(
            f"cluster config {path}: no such file; pass the path of a cluster YAML file "
            "(examples in deploy/) or a scheduler address such as tcp://host:8786"
        )
    try:
        with path.open() as f:
            return yaml.safe_load(f)
    except yaml.YAMLError as exc:
        raise InputError(f"cluster config {path}: not valid YAML ({exc}); fix the file") from exc


def _select_named(doc: dict[str, Any], name: str | None, source: str) -> tuple[Any, str]:
    clusters = doc["clusters"]
    if not isinstance(clusters, dict) or not clusters:
        raise InputError(
            f"cluster config {source}: 'clusters' must be a non-empty mapping name -> configuration"
        )
    extra = sorted(set(doc) - {"clusters", "default"})
    if extra:
        raise InputError(
            f"cluster config {source}: unknown top-level key {extra[0]!r} next to 'clusters'; "
            "allowed: clusters, default"
        )
    chosen = name if name is not None else doc.get("default")
    if chosen is None:
        if len(clusters) > 1:
            raise InputError(
                f"cluster config {source}: holds several configurations ({', '.join(clusters)}); "
                f"pick one with '{source}#NAME' or set 'default: NAME' in the file"
            )
        chosen = next(iter(clusters))
    if chosen not in clusters:
        raise InputError(
            f"cluster config {source}: no configuration named {chosen!r}; "
            f"available: {', '.join(clusters)}"
        )
    return clusters[chosen], f"{source}#{chosen}"


def load_cluster_config(
    config: str | os.PathLike[str] | Mapping[str, Any] | ClusterConfig, name: str | None = None
) -> ClusterConfig:
    """Read and validate a cluster configuration.

    Parameters
    ----------
    config : str, path, dict or ClusterConfig
        A YAML file (``"cluster.yaml"``; ``"clusters.yaml#name"`` picks a named configuration), or
        its parsed content. The schema: ``kind: local | slurm | pbs | kubernetes``, then the
        keyword arguments of that kind's cluster class -- dask-jobqueue's ``SLURMCluster`` /
        ``PBSCluster`` (``cores``, ``memory``, ``walltime``, ``queue``, ``account``,
        ``job_extra_directives``, ``local_directory``, ...), dask-kubernetes' ``KubeCluster``
        (``name``, ``image``, ``n_workers``, ``resources``, ``env``, ...), or ``LocalCluster`` --
        and optionally ``adapt: {minimum: M, maximum: N}`` or ``scale: N``. A file may also hold
        several configurations under ``clusters: {NAME: {...}}`` with an optional ``default: NAME``.
    name : str, optional
        Which named configuration to take from a ``clusters:`` file.

    Returns
    -------
    ClusterConfig

    Raises
    ------
    InputError
        Missing file, invalid YAML, unknown kind, unknown key (named, with the closest allowed key),
        a value of the wrong type, a missing required key, or both ``adapt`` and ``scale``.
    """
    if isinstance(config, ClusterConfig):
        return config
    if isinstance(config, Mapping):
        doc: Any = dict(config)
        source = "<dict>"
    elif isinstance(config, str | os.PathLike):
        text = os.fspath(config)
        if name is None and "#" in text and not Path(text).is_file():
            text, name = text.rsplit("#", 1)
        source = text
        doc = _read_yaml(Path(text))
    else:
        raise InputError(
            f"cluster config {config!r}: must be a path to a YAML file or a mapping, "
            f"not {type(config).__name__}"
        )
    if not isinstance(doc, dict):
        raise InputError(
            f"cluster config {source}: must be a mapping with a 'kind' key "
            f"(local, slurm, pbs or kubernetes), got {type(doc).__name__}"
        )
    if "clusters" in doc:
        doc, source = _select_named(doc, name, source)
        if not isinstance(doc, dict):
            raise InputError(f"cluster config {source}: must be a mapping with a 'kind' key")
    elif name is not None:
        raise InputError(
            f"cluster config {source}: holds a single configuration, not named ones; drop the "
            f"name {name!r} or list configurations under 'clusters:'"
        )
    return _validate(doc, source)


def _validate(doc: dict[str, Any], source: str) -> ClusterConfig:
    kind = doc.get("kind")
    if kind is None:
        raise InputError(
            f"cluster config {source}: missing key 'kind'; add 'kind: slurm' (or local, pbs, kubernetes)"
        )
    if kind not in KINDS:
        raise InputError(
            f"cluster config {source}: kind={kind!r} is not supported; use one of {', '.join(KINDS)}"
        )
    checks = _KIND_KEYS[kind]
    allowed = [*_COMMON_KEYS, *checks]
    options: dict[str, Any] = {}
    for key, value in doc.items():
        if key in _COMMON_KEYS:
            continue
        if key not in checks:
            raise _unknown_key_error(source, kind, str(key), allowed)
        problem = checks[key](key, value)
        if problem:
            raise InputError(f"cluster config {source}: {key}={value!r} {problem}")
        options[key] = value
    missing = [k for k in _REQUIRED[kind] if k not in options]
    if missing:
        raise InputError(
            f"cluster config {source}: kind {kind!r} needs {', '.join(repr(k) for k in missing)}; "
            "add them (see deploy/ for an example)"
        )
    adapt: tuple[int, int] | None = None
    scale: int | None = None
    if "adapt" in doc and "scale" in doc:
        raise InputError(
            f"cluster config {source}: give either 'adapt' or 'scale', not both "
            "(adapt: {minimum, maximum} scales with the load; scale: N asks for N workers)"
        )
    if "adapt" in doc:
        adapt = _parse_adapt(doc["adapt"], source)
    if "scale" in doc:
        if not is_int(doc["scale"]) or doc["scale"] < 0:
            raise InputError(
                f"cluster config {source}: scale={doc['scale']!r} must be an integer >= 0 "
                "(the number of workers)"
            )
        scale = doc["scale"]
    return ClusterConfig(kind=kind, options=options, adapt=adapt, scale=scale, source=source)


def _parse_adapt(value: Any, source: str) -> tuple[int, int]:
    if not isinstance(value, dict):
        raise InputError(
            f"cluster config {source}: adapt={value!r} must be a mapping {{minimum: M, maximum: N}}"
        )
    for key in value:
        if key not in ("minimum", "maximum"):
            raise _unknown_key_error(f"{source} (adapt)", "adapt", str(key), ["minimum", "maximum"])
    low: Any = value.get("minimum", 0)
    high: Any = value.get("maximum")
    if not is_int(low) or not is_int(high) or low < 0 or high < max(low, 1):
        raise InputError(
            f"cluster config {source}: adapt={value!r} needs integers 0 <= minimum <= maximum "
            "and maximum >= 1, e.g. {minimum: 0, maximum: 20}"
        )
    return low, high


# ----------------------------------------------------------------------------------------------
# making clusters
# ----------------------------------------------------------------------------------------------


def _import_backend(kind: str, module_name: str, attr: str) -> Any:
    extra = _BACKENDS[kind][2]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InputError(
            f"cluster kind {kind!r} needs the package {module_name.split('.')[0]!r}, which is not "
            f'installed; install it with: pip install "daskparcel[{extra}]"'
        ) from exc
    return getattr(module, attr)


def check_backend(kind: str) -> None:
    """Import the package a cluster of ``kind`` needs now (an InputError naming the pip extra if missing)."""
    module_name, attr, _ = _BACKENDS[kind]
    _import_backend(kind, module_name, attr)


def make_cluster(config: ClusterConfig | Mapping[str, Any] | str | os.PathLike[str]) -> Any:
    """Start the cluster a configuration describes (its package is imported only here).

    Parameters
    ----------
    config : ClusterConfig, dict or path
        Anything :func:`load_cluster_config` accepts.

    Returns
    -------
    distributed.deploy.Cluster
        The started cluster, already scaled (``scale``) or adaptive (``adapt``). The caller closes it.

    Raises
    ------
    InputError
        The configuration is invalid, or the package for its kind is missing (the message names the
        extra to install: ``pip install "daskparcel[slurm]"`` or ``"daskparcel[kubernetes]"``).
    """
    config = load_cluster_config(config)
    module_name, attr, _ = _BACKENDS[config.kind]
    cls = _import_backend(config.kind, module_name, attr)
    options = dict(config.options)
    if config.kind == "local":
        if options.get("processes", True):
            options.setdefault("host", "127.0.0.1")  # never listen on public interfaces by default
        elif "host" in options:
            options["protocol"] = (
                "tcp://"  # a threaded LocalCluster with a host needs TCP, not inproc
            )
        if config.adapt is not None or config.scale is not None:
            options.setdefault("n_workers", 0)
    from daskparcel.runtime.workers import with_worker_malloc  # imports distributed

    options = with_worker_malloc(config.kind, options, batch=config.kind in _JOB_CLASSES)
    adapt = config.adapt
    if config.kind in _JOB_CLASSES:
        options = _retire_before_walltime(options)
        if config.scale is not None and adapt is None:
            # a fixed scale never replaces a job that ends (scancel, walltime, node failure); adapt does
            adapt = (config.scale, config.scale)
    logger.info("starting a %s cluster from %s", config.kind, config.source)
    logger.debug("%s(%s)", attr, options)
    cluster = cls(**options)
    try:
        if adapt is not None:
            cluster.adapt(minimum=adapt[0], maximum=adapt[1])
            logger.info("adaptive scaling: %d to %d workers", *adapt)
            if config.kind == "slurm":
                from daskparcel.runtime.site import replace_ended_jobs

                replace_ended_jobs(cluster)
        elif config.scale is not None:
            cluster.scale(config.scale)
            logger.info("asked for %d workers", config.scale)
    except BaseException:
        cluster.close()
        raise
    return cluster


def _retire_before_walltime(options: dict[str, Any], *, log: bool = True) -> dict[str, Any]:
    """Worker jobs with a walltime retire before it (``--lifetime``, staggered), as dask-jobqueue advises.

    A worker that retires hands its results to the others and its job ends; adapt then submits a new job.
    A job that SLURM or PBS kills at its walltime loses what its worker held, and dask-jobqueue's adapt was
    seen not to replace such jobs (dask/dask-jobqueue#611; here on the second round of a 1-minute walltime).
    The margin is a quarter of the walltime, at least a minute (half of a walltime under 2 minutes: the
    worker's start-up in its job counts against the walltime, not against its lifetime) and at most 5 minutes;
    the stagger a tenth, at most 4 minutes. A ``--lifetime`` given in ``worker_extra_args`` is kept as it is.
    """
    walltime = options.get("walltime")
    extra = list(options.get("worker_extra_args") or [])
    seconds = walltime_seconds(str(walltime)) if walltime is not None else None
    if not seconds or any(a.startswith("--lifetime") for a in extra):
        return options
    margin = min(
        300.0, max(seconds / 4, min(60.0, seconds / 2))
    )  # a worker's start-up counts against it
    stagger = min(240.0, seconds / 10)
    lifetime = f"{int(seconds - margin)}s"
    (logger.info if log else logger.debug)(
        "worker jobs retire after %s (walltime %s, stagger %ds): adapt replaces them",
        lifetime,
        walltime,
        stagger,
    )
    return {
        **options,
        "worker_extra_args": [
            *extra,
            "--lifetime",
            lifetime,
            "--lifetime-stagger",
            f"{int(stagger)}s",
        ],
    }


def job_script(
    config: ClusterConfig | Mapping[str, Any] | str | os.PathLike[str],
    scheduler_address: str = "tcp://<scheduler-address>:8786",
) -> str:
    """The batch script dask-jobqueue would submit for one worker job, without starting anything.

    Use it to check a SLURM / PBS configuration (cores, memory, walltime, queue, directives) before
    submitting: it is the same script as ``SLURMCluster(...).job_script()``.

    Parameters
    ----------
    config : ClusterConfig, dict or path
        A ``slurm`` or ``pbs`` configuration (anything :func:`load_cluster_config` accepts).
    scheduler_address : str
        The address written into the worker command.

    Returns
    -------
    str
        The job script.
    """
    config = load_cluster_config(config)
    if config.kind not in _JOB_CLASSES:
        raise InputError(
            f"cluster config {config.source}: kind {config.kind!r} has no batch job script; "
            "job scripts exist for kind slurm and pbs"
        )
    job_cls = _import_backend(config.kind, *_JOB_CLASSES[config.kind])
    # the script make_cluster submits
    from daskparcel.runtime.workers import with_worker_malloc

    malloc = with_worker_malloc(config.kind, config.options, batch=True)
    options = _retire_before_walltime(malloc, log=False)
    kwargs = {k: v for k, v in options.items() if k not in _JOBQUEUE_CLUSTER_ONLY}
    return str(job_cls(scheduler_address, name="dummy-name", **kwargs).job_script())


# ----------------------------------------------------------------------------------------------
# the local default
# ----------------------------------------------------------------------------------------------
