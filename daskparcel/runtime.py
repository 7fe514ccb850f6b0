"""Where graphs run: the local default, a running dask scheduler, or a cluster described in YAML.

dask.distributed is the engine; this module only chooses *where* a graph runs and hands back a
:class:`distributed.Client` (or ``None`` for the local threaded scheduler). One argument, ``where``,
says it everywhere (library, CLI ``--scheduler`` / ``--cluster``, job files):

* ``None``: the scheduler named by ``DASK_SCHEDULER_ADDRESS`` (or dask's ``scheduler-address``
  setting) if there is one, else a ``distributed`` client already made current in this process
  (e.g. in a notebook), else the local default described by :func:`default_scheduler`.
* a :class:`distributed.Client`: used as is, never closed by us.
* an address string ``"tcp://host:8786"`` (``tls://``, ``ws://``, ``wss://``, ``ucx://`` too): connect
  there, or raise :class:`~daskparcel.errors.InputError` within ``timeout``.
* a path to a cluster YAML file (``"cluster.yaml"``, or ``"clusters.yaml#name"`` to pick one named
  configuration of several), a :class:`dict` with that YAML's content, or a :class:`ClusterConfig`:
  start the cluster (SLURM / PBS through dask-jobqueue, Kubernetes through dask-kubernetes' operator,
  or a ``LocalCluster``), connect, and close it all on exit. Examples live in ``deploy/``.

The dashboard link is logged at INFO (and shown in a notebook) whenever a cluster starts or we connect
to one.

Why the local default is threads (with one BLAS thread each)
------------------------------------------------------------
Measured here (2 cores, dask/distributed 2026.8, numpy 2.4 with OpenBLAS, on a machine shared with other
jobs: load average ~6, so medians of 4 interleaved runs, best run in brackets) on a signals-like float32
array of 30,000 voxels x 1,040 time points in 12 voxel blocks (four rapidtide runs after masking):

=========================================  ================  ==================  ====================
workload                                   threads, BLAS     threads, BLAS       LocalCluster,
                                           default (2 each)  limited to 1 each   2 procs x 1 thread
=========================================  ================  ==================  ====================
randomized SVD (``svd_compressed``, k=200)  11.1 s (3.3)      **2.4 s** (1.2)     5.3 s (1.9)
standardize + Gram matrix (chunked)          2.0 s (0.7)      **1.1 s** (0.6)     2.5 s (0.8)
pure-Python loop per block (GIL-bound)       0.9 s (0.7)       1.0 s (0.6)        1.1 s (0.5)
=========================================  ================  ==================  ====================

The heavy steps of a fit -- randomized SVD, Gram products, standardization, k-means distances,
smoothing -- are BLAS / numpy / scipy / numba calls that release the GIL, so dask's threads already
use every core, with no task serialization and no inter-process copies of voxel blocks (tens of MB
each) that a process cluster pays. One thing must be fixed for threads to win: each dask thread
calling a multi-threaded BLAS oversubscribes the cores (2 dask threads x 2 OpenBLAS threads on 2
cores), and OpenBLAS's spinning threads make that up to 4x slower under contention. Worker
processes of a distributed cluster avoid it because the nanny sets ``OPENBLAS_NUM_THREADS=1``;
:func:`connect` does the same for the threaded scheduler with ``threadpoolctl`` (setting
``daskparcel.runtime.blas-threads``, default 1), which made threads the fastest here by 2x on the SVD.
Processes only pay off for work that holds the GIL (pure-Python loops, some graph algorithms), and
even the GIL-bound toy above gains nothing from two processes at this block count. Hence: threads by
default, with no set-up; ``daskparcel.runtime.local: processes`` (or a ``kind: local`` cluster file)
starts a ``LocalCluster`` of processes, with a dashboard, when the workload is Python-bound or when
you want to watch it.

Configuration
-------------
Defaults live in the ``daskparcel.runtime`` section of :mod:`dask.config` (set them in a dask YAML
file, with :func:`dask.config.set`, or as ``DASK_DASKPARCEL__RUNTIME__TIMEOUT=30s``):

``timeout`` (``"10s"``)
    how long to try to reach a scheduler before giving up with an :class:`InputError`.
``local`` (``"threads"``)
    the local default: ``threads``, ``processes`` (a ``LocalCluster`` on 127.0.0.1) or ``synchronous``.
``blas-threads`` (``1``)
    threads per BLAS / OpenMP pool while the threaded scheduler runs (``None``: leave them alone).
``local-workers`` (``None``)
    number of worker processes when ``local`` is ``processes`` (default: number of cores).
``dashboard-address`` (``":8787"``)
    dashboard address of the local process cluster (``":0"`` for a free port).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import dask
import dask.config
import yaml
from dask.utils import parse_bytes, parse_timedelta

from daskparcel.errors import InputError

logger = logging.getLogger(__name__)

__all__ = [
    "ClusterConfig",
    "Runtime",
    "SchedulerChoice",
    "connect",
    "default_scheduler",
    "job_script",
    "load_cluster_config",
    "make_cluster",
    "peak_rss",
]

DEFAULTS: dict[str, Any] = {
    "daskparcel": {
        "runtime": {
            "timeout": "10s",
            "local": "threads",
            "local-workers": None,
            "blas-threads": 1,
            "dashboard-address": ":8787",
        }
    }
}
dask.config.update_defaults(DEFAULTS)

ADDRESS_SCHEMES = ("tcp://", "tls://", "ws://", "wss://", "ucx://", "inproc://")
LOCAL_CHOICES = ("threads", "processes", "synchronous")
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


def peak_rss() -> int:
    """This process's peak resident memory since it started, in bytes (Linux ``VmHWM``; 0 elsewhere).

    Run it on workers (``client.run(peak_rss)``) to see how close each came to its ``memory_limit``;
    ``resource.getrusage(...).ru_maxrss`` would also count the process a spawned worker was forked from.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_at_least(low: int) -> Check:
    def check(key: str, value: Any) -> str | None:
        if not _is_int(value) or value < low:
            return f"must be an integer >= {low}"
        return None

    return check


def _string(key: str, value: Any) -> str | None:
    return None if isinstance(value, str) and value else "must be a non-empty string"


def _boolean(key: str, value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def _bytes(key: str, value: Any) -> str | None:
    if _is_int(value) and value > 0:
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
        if not _is_int(doc["scale"]) or doc["scale"] < 0:
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
    if not _is_int(low) or not _is_int(high) or low < 0 or high < max(low, 1):
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
    logger.info("starting a %s cluster from %s", config.kind, config.source)
    logger.debug("%s(%s)", attr, options)
    cluster = cls(**options)
    try:
        if config.adapt is not None:
            cluster.adapt(minimum=config.adapt[0], maximum=config.adapt[1])
            logger.info("adaptive scaling: %d to %d workers", *config.adapt)
        elif config.scale is not None:
            cluster.scale(config.scale)
            logger.info("asked for %d workers", config.scale)
    except BaseException:
        cluster.close()
        raise
    return cluster


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
    kwargs = {k: v for k, v in config.options.items() if k not in _JOBQUEUE_CLUSTER_ONLY}
    return str(job_cls(scheduler_address, name="dummy-name", **kwargs).job_script())


# ----------------------------------------------------------------------------------------------
# the local default
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SchedulerChoice:
    """The local default scheduler (see :func:`default_scheduler`)."""

    scheduler: str
    """``"threads"``, ``"processes"`` (a LocalCluster) or ``"synchronous"``."""
    n_workers: int
    threads_per_worker: int
    reason: str
    blas_threads: int | None = None
    """Threads per BLAS / OpenMP pool during computations (``None``: not limited)."""


_REASONS = {
    "threads": (
        "threads: the heavy steps (randomized SVD, Gram products, standardization, k-means, smoothing) "
        "are numpy/BLAS/scipy calls that release the GIL, so threads use every core with no "
        "serialization or inter-process transfer; with BLAS limited to one thread per dask thread "
        "(no oversubscription) they measured 2x faster than a LocalCluster of processes on a "
        "randomized SVD here (see the daskparcel.runtime docstring)"
    ),
    "processes": (
        "processes: a LocalCluster of single-threaded worker processes on 127.0.0.1 (set by "
        "daskparcel.runtime.local); pays off when Python-level work holds the GIL, and gives a dashboard"
    ),
    "synchronous": "synchronous: one task at a time in this thread (for debugging and profiling)",
}


def default_scheduler() -> SchedulerChoice:
    """Describe the local default scheduler and why it is the default.

    The choice comes from ``dask.config`` ``daskparcel.runtime.local`` (``"threads"`` unless set).

    Returns
    -------
    SchedulerChoice
        The scheduler name, its number of workers and threads per worker, and the reason.
    """
    choice = dask.config.get("daskparcel.runtime.local", "threads")
    cores = os.cpu_count() or 1
    if choice not in LOCAL_CHOICES:
        raise InputError(
            f"dask config daskparcel.runtime.local={choice!r}: must be one of {', '.join(LOCAL_CHOICES)}"
        )
    if choice == "threads":
        blas = dask.config.get("daskparcel.runtime.blas-threads", 1)
        if blas is not None and (not _is_int(blas) or blas < 1):
            raise InputError(
                f"dask config daskparcel.runtime.blas-threads={blas!r}: must be an integer >= 1 "
                "or null (leave BLAS threads alone)"
            )
        return SchedulerChoice("threads", 1, cores, _REASONS["threads"], blas)
    if choice == "synchronous":
        return SchedulerChoice("synchronous", 1, 1, _REASONS["synchronous"])
    workers = dask.config.get("daskparcel.runtime.local-workers", None) or cores
    if not _is_int(workers) or workers < 1:
        raise InputError(
            f"dask config daskparcel.runtime.local-workers={workers!r}: must be an integer >= 1"
        )
    return SchedulerChoice("processes", workers, 1, _REASONS["processes"])


# ----------------------------------------------------------------------------------------------
# connecting
# ----------------------------------------------------------------------------------------------


def _is_address(text: str) -> bool:
    return text.startswith(ADDRESS_SCHEMES) or bool(re.fullmatch(r"[\w.\-]+:\d+", text))


def _timeout_seconds(timeout: str | float | None) -> float:
    value = timeout if timeout is not None else dask.config.get("daskparcel.runtime.timeout")
    try:
        seconds = parse_timedelta(value, default="seconds")
    except (ValueError, TypeError, KeyError) as exc:
        raise InputError(
            f"timeout={value!r}: not a duration; pass seconds (10) or a string such as '10s' or '2min'"
        ) from exc
    if seconds is None or seconds <= 0:
        raise InputError(f"timeout={value!r}: must be a positive duration such as '10s'")
    return float(seconds)


def _env_address() -> str | None:
    address = os.environ.get("DASK_SCHEDULER_ADDRESS") or dask.config.get("scheduler-address", None)
    return str(address) if address else None


def _current_client() -> Any:
    import distributed

    try:
        return distributed.default_client()
    except ValueError:
        return None


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    if shell is None or "ipykernel" not in sys.modules:
        return False
    ip = shell.get_ipython()
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


class Runtime:
    """Where graphs run, as a context manager: enter it and dask computes there.

    Parameters
    ----------
    where : None, distributed.Client, str, path, dict or ClusterConfig
        ``None`` (``DASK_SCHEDULER_ADDRESS`` if set, else a current distributed client, else the local
        default of :func:`default_scheduler`), a client (used as is, not closed), a scheduler address
        (``"tcp://host:8786"``), a cluster YAML file (``"cluster.yaml"`` or ``"file.yaml#name"``), its
        content as a dict, or a :class:`ClusterConfig`.
    timeout : str or float, optional
        How long to try to reach the scheduler (default ``daskparcel.runtime.timeout``, ``"10s"``).
    dashboard : bool
        Log (and show in a notebook) the dashboard link when a cluster starts or we connect to one.

    Attributes
    ----------
    kind : str
        ``"threads"``, ``"synchronous"``, ``"processes"`` (a local cluster we started), ``"client"``
        (a client we were given or found), ``"address"`` or ``"cluster"`` (from a configuration).
    client : distributed.Client or None
        Set inside the ``with`` block; ``None`` for the threaded and synchronous schedulers.
    cluster : distributed.deploy.Cluster or None
        The cluster we started, if any.
    dashboard_link : str or None
        The dashboard of the cluster, if any.

    Notes
    -----
    All input is checked when the object is made (before any connection): a bad address form, a
    missing or invalid cluster file, or a missing package raises :class:`InputError` at once.
    """

    def __init__(
        self,
        where: Any = None,
        *,
        timeout: str | float | None = None,
        dashboard: bool = True,
    ) -> None:
        self.timeout = _timeout_seconds(timeout)
        self.dashboard = dashboard
        self.client: Any = None
        self.cluster: Any = None
        self.dashboard_link: str | None = None
        self._stack: ExitStack | None = None
        self._address: str | None = None
        self._config: ClusterConfig | None = None
        self._given_client: Any = None
        self._address_origin = ""
        self.kind = self._resolve(where)

    def _resolve(self, where: Any) -> str:
        import distributed

        if where is None:
            address = _env_address()
            if address:
                self._address = address
                self._address_origin = (
                    " (from DASK_SCHEDULER_ADDRESS / dask config scheduler-address)"
                )
                return "address"
            client = _current_client()
            if client is not None:
                self._given_client = client
                return "client"
            return default_scheduler().scheduler
        if isinstance(where, distributed.Client):
            self._given_client = where
            return "client"
        if isinstance(where, ClusterConfig | Mapping):
            self._config = load_cluster_config(where)
        elif isinstance(where, str | os.PathLike):
            text = os.fspath(where).strip()
            if isinstance(where, str) and _is_address(text) and not Path(text).is_file():
                self._address = text
                return "address"
            if not text:
                raise InputError(
                    "where='': pass a scheduler address (tcp://host:8786), a cluster YAML file, or None"
                )
            self._config = load_cluster_config(text)
        else:
            raise InputError(
                f"where={where!r}: must be None, a distributed.Client, a scheduler address "
                "(tcp://host:8786), a cluster YAML file or its content as a dict"
            )
        module_name, attr, _ = _BACKENDS[self._config.kind]
        _import_backend(self._config.kind, module_name, attr)  # fail now if the extra is missing
        return "cluster"

    def __repr__(self) -> str:
        detail = self._address or (self._config.source if self._config else "")
        return f"Runtime(kind={self.kind!r}{', ' + detail if detail else ''})"

    def __enter__(self) -> Runtime:
        if self._stack is not None:
            raise RuntimeError("this Runtime is already entered; make a new one")
        stack = ExitStack()
        try:
            self._enter(stack)
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()
        self.client = None
        self.cluster = None

    def _enter(self, stack: ExitStack) -> None:
        import distributed

        if self.kind in ("threads", "synchronous"):
            stack.enter_context(dask.config.set(scheduler=self.kind))
            choice = default_scheduler()
            if choice.blas_threads is not None:
                from threadpoolctl import threadpool_limits

                stack.enter_context(threadpool_limits(limits=choice.blas_threads))
            logger.info("running on the local %s scheduler", self.kind)
            logger.debug("%s", choice.reason)
            return
        if self.kind == "client":
            self.client = self._given_client
        elif self.kind == "address":
            self.client = self._connect_address(self._address or "")
            stack.callback(self.client.close)
        else:
            if self.kind == "processes":
                choice = default_scheduler()
                self.cluster = distributed.LocalCluster(
                    n_workers=choice.n_workers,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address=dask.config.get("daskparcel.runtime.dashboard-address"),
                )
            else:
                assert self._config is not None
                self.cluster = make_cluster(self._config)
            stack.callback(self.cluster.close)
            self.client = distributed.Client(
                self.cluster, timeout=self.timeout, set_as_default=False
            )
            stack.callback(self.client.close)
        stack.enter_context(self.client.as_current())
        self.dashboard_link = self.client.dashboard_link
        self._report()

    def _connect_address(self, address: str) -> Any:
        import distributed

        logger.info("connecting to the dask scheduler at %s", address)
        try:
            return distributed.Client(address, timeout=self.timeout, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise InputError(
                f"scheduler address {address!r}{self._address_origin}: could not connect within "
                f"{self.timeout:g} s ({exc}). "
                "Check that a scheduler runs there (`dask scheduler`), that the host and port are "
                "right and reachable from here, or raise the timeout (timeout=..., "
                "daskparcel.runtime.timeout)."
            ) from exc

    def _report(self) -> None:
        where = self._address or (self._config.source if self._config else self.kind)
        if not self.dashboard:
            return
        logger.info("dask dashboard (%s): %s", where, self.dashboard_link)
        if _in_notebook():
            from IPython.display import HTML, display

            display(
                HTML(
                    f'dask dashboard: <a href="{self.dashboard_link}" target="_blank">'
                    f"{self.dashboard_link}</a>"
                )
            )


@contextmanager
def connect(
    where: Any = None, *, timeout: str | float | None = None, dashboard: bool = True
) -> Iterator[Any]:
    """Run the dask computations of the ``with`` block on the given runtime.

    Parameters
    ----------
    where : None, distributed.Client, str, path, dict or ClusterConfig
        See :class:`Runtime`: ``None`` for the local default (or ``DASK_SCHEDULER_ADDRESS``), a
        client, ``"tcp://host:8786"``, a cluster YAML file or its content.
    timeout : str or float, optional
        How long to try to reach a scheduler (default ``daskparcel.runtime.timeout``, ``"10s"``);
        past it, :class:`InputError` rather than a hang.
    dashboard : bool
        Log the dashboard link (INFO) when a cluster starts or we connect.

    Yields
    ------
    distributed.Client or None
        The client (``None`` on the local threaded scheduler). Clients and clusters made here are
        closed on exit; a client passed in is left open.

    Examples
    --------
    >>> with connect("tcp://scheduler:8786") as client:  # doctest: +SKIP
    ...     model.fit(runs)
    """
    with Runtime(where, timeout=timeout, dashboard=dashboard) as runtime:
        yield runtime.client
