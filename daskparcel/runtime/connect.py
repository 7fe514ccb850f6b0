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
to one. Within :func:`daskparcel._log.progress_bars` (the CLI on a terminal) each computation on a
distributed client draws a bar labelled with the step of the fit, from the scheduler's progress plugin.

Why the local default is threads (with one BLAS thread each)
------------------------------------------------------------
The heavy steps of a fit -- randomized SVD, Gram products, standardization, k-means distances,
smoothing -- are BLAS / numpy / scipy / numba calls that release the GIL, so dask's threads already
use every core, with no task serialization and no inter-process copies of voxel blocks (tens of MB
each) that a process cluster pays. One thing must be fixed for threads to win: each dask thread
calling a multi-threaded BLAS oversubscribes the cores, and OpenBLAS's spinning threads make that up to
4x slower under contention. Worker processes of a distributed cluster avoid it because the nanny sets
``OPENBLAS_NUM_THREADS=1``; :func:`connect` does the same for the threaded scheduler with
``threadpoolctl`` (setting ``daskparcel.runtime.blas-threads``, default 1). The measurements behind this
choice are the README's "Workers" table (``benchmarks/run.py --suite workers``).
``daskparcel.runtime.local: processes`` (or a ``kind: local`` cluster file) starts a ``LocalCluster`` of
processes, with a dashboard, when the workload is Python-bound or when you want to watch it.

The settings (``daskparcel.runtime.*``: timeout, local, local-workers, blas-threads, dashboard-address,
worker-malloc) are listed with their defaults in :mod:`daskparcel.config`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import dask
import dask.config
from dask.utils import parse_timedelta

from daskparcel import config
from daskparcel._checks import is_int
from daskparcel._log import ProgressScheduler, bars_out
from daskparcel.errors import InputError
from daskparcel.runtime.clusters import (
    ADDRESS_SCHEMES,
    ClusterConfig,
    check_backend,
    load_cluster_config,
    make_cluster,
)
from daskparcel.runtime.site import check_site

logger = logging.getLogger(__name__)

__all__ = ["Runtime", "SchedulerChoice", "connect", "default_scheduler"]


LOCAL_CHOICES = ("threads", "processes", "synchronous")


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
    choice = config.get("runtime.local")
    cores = os.cpu_count() or 1
    if choice not in LOCAL_CHOICES:
        raise InputError(
            f"dask config daskparcel.runtime.local={choice!r}: must be one of {', '.join(LOCAL_CHOICES)}"
        )
    if choice == "threads":
        blas = config.get("runtime.blas-threads")
        if blas is not None and (not is_int(blas) or blas < 1):
            raise InputError(
                f"dask config daskparcel.runtime.blas-threads={blas!r}: must be an integer >= 1 "
                "or null (leave BLAS threads alone)"
            )
        return SchedulerChoice("threads", 1, cores, _REASONS["threads"], blas)
    if choice == "synchronous":
        return SchedulerChoice("synchronous", 1, 1, _REASONS["synchronous"])
    workers = config.get("runtime.local-workers") or cores
    if not is_int(workers) or workers < 1:
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
    value = timeout if timeout is not None else config.get("runtime.timeout")
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
        check_backend(self._config.kind)  # fail now if the extra is missing
        check_site(self._config)  # and if the site's scheduler cannot run its jobs (sinfo)
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

        # One BLAS thread per dask thread, whatever runs the graphs (OpenBLAS's limit is process-wide).
        # OpenMP's limit is per thread: set here, it holds for the steps run in this thread only, not in
        # dask's threads; the one task that calls OpenMP code (scikit-learn's mini-batch KMeans) sets its
        # own, and kmeans' Lloyd iterations sum in a fixed order on any number of threads: the labels are
        # the same on the local default, any core count and a cluster (issue 18: 0.04 % differed).
        blas = config.get("runtime.blas-threads")
        if blas is not None:
            from threadpoolctl import threadpool_limits

            stack.enter_context(threadpool_limits(limits=int(blas)))
        if self.kind in ("threads", "synchronous"):
            stack.enter_context(dask.config.set(scheduler=self.kind))
            choice = default_scheduler()
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
                from daskparcel.runtime.workers import set_worker_malloc

                choice = default_scheduler()
                set_worker_malloc()
                self.cluster = distributed.LocalCluster(
                    n_workers=choice.n_workers,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address=config.get("runtime.dashboard-address"),
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
        from daskparcel.runtime.workers import register

        register(self.client)  # every worker, now and later, logs who it is (fit.json's runtime)
        if bars_out() is not None:  # the CLI on a terminal: a labelled bar per computation
            stack.enter_context(dask.config.set(scheduler=ProgressScheduler(self.client).get))
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
        if _in_notebook() and self.kind != "client":  # a client given or found shows its own link
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


def performance_report_path(path: str | None, where: Any, flag: str) -> Path | None:
    """The performance report's file, checked before any data is read."""
    if path is None:
        return None
    report = Path(path)
    if report.suffix != ".html":
        raise InputError(f"{flag} {path}: dask writes the report as HTML; give a .html file name")
    if where is None:
        raise InputError(
            f"{flag}: dask's performance report needs a distributed scheduler; give --scheduler ADDRESS "
            "or --cluster FILE (deploy/local/cluster.yaml starts one on this machine)"
        )
    parent = report.parent.resolve()
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise InputError(f"{flag} {path}: its folder {parent} does not exist or is not writable")
    return report


@contextmanager
def performance_report(report: Path | None, where: Any) -> Iterator[Any]:
    """Connect to ``where`` and record dask's performance report into ``report`` (when given) around the
    block; yields what the estimator's ``client`` should be."""
    if report is None:
        yield where
        return
    import distributed

    with connect(where) as client, distributed.performance_report(filename=str(report)):
        yield client
    logger.info("dask performance report written to %s", report)
