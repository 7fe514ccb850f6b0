"""Which workers ran a fit: every worker that joined the cluster says who it is, in the scheduler's event log.

A worker plugin, registered when a distributed client is entered (:class:`~daskparcel.runtime.Runtime`), runs
on every worker there is and on every worker that joins later (a SLURM job resubmitted after a ``scancel``
or a walltime, an adaptive cluster growing). It logs the worker's name, host, pid and batch job id
(``SLURM_JOB_ID``, ``PBS_JOBID``) as a scheduler event; :func:`workers_seen` reads the events back, so a
fit records all the workers it had, not only those alive at its end. The record is ``fit.json``'s
``runtime.workers`` and the estimator's ``workers_``.

The workers daskparcel starts also get glibc's malloc settings in their environment (:data:`WORKER_MALLOC`,
:func:`with_worker_malloc`).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

logger = logging.getLogger(__name__)

TOPIC = "daskparcel-workers"
_JOB_VARIABLES = {"slurm_job_id": "SLURM_JOB_ID", "pbs_job_id": "PBS_JOBID"}


class IdentifyWorkers(WorkerPlugin):
    """Logs, on the scheduler, who each worker is (see the module's docstring)."""

    name = "daskparcel-identify-workers"
    idempotent = True  # registered by every client we enter: once is enough

    def setup(self, worker: Any) -> None:
        identity = {
            "name": str(worker.name),
            "address": str(worker.address),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "threads": int(worker.state.nthreads),
        }
        for key, variable in _JOB_VARIABLES.items():
            if os.environ.get(variable):
                identity[key] = os.environ[variable]
        worker.log_event(TOPIC, identity)


#: glibc's malloc settings for worker processes. distributed's nanny starts workers with
#: ``MALLOC_TRIM_THRESHOLD_=65536`` (to give freed memory back); any explicit threshold also freezes glibc's
#: mmap threshold at 128 KiB, so every array above it (a run's 8192-row window, a pass's block) is mapped and
#: page-faulted afresh: one run's reduction took 2.0 s instead of 1.3 s, and the 40-subject reduction on a
#: 2-worker cluster 117 s against 76 s on threads. With these, arrays up to 32 MiB are reused from the heap and
#: more than 64 MiB of free heap is still given back (one run: 1.3 s).
WORKER_MALLOC = {"MALLOC_TRIM_THRESHOLD_": "67108864", "MALLOC_MMAP_THRESHOLD_": "33554432"}


def worker_malloc() -> dict[str, str]:
    """:data:`WORKER_MALLOC`, or nothing with the setting ``daskparcel.runtime.worker-malloc`` False."""
    from daskparcel import config

    return dict(WORKER_MALLOC) if config.get("runtime.worker-malloc") else {}


def set_worker_malloc() -> dict[str, str]:
    """Have the worker processes started from now on by this process's nannies (a ``LocalCluster``) use
    :data:`WORKER_MALLOC`; returns it (the variables to export where workers start elsewhere).

    glibc reads them when a process starts, so they go in this process's environment, which a nanny's worker
    inherits and which, for a variable that dask's ``distributed.nanny.pre-spawn-environ`` also sets, wins over
    it. A value already set other than distributed's own default is the user's and is kept. With the setting
    ``daskparcel.runtime.worker-malloc`` False, nothing is set and an empty dict is returned.
    """
    malloc = worker_malloc()
    for name, value in malloc.items():
        if os.environ.get(name) in (None, "65536"):
            os.environ[name] = value
    return malloc


def with_worker_malloc(kind: str, options: dict[str, Any], *, batch: bool) -> dict[str, Any]:
    """A cluster's ``options`` whose workers get glibc's malloc settings (:func:`worker_malloc`; they must be in a
    process's environment when it starts): local workers (``kind`` "local") inherit them from this process, a
    ``batch`` job (SLURM, PBS) exports them first (``job_script_prologue``), a Kubernetes pod has them in
    ``env``; the configuration's own values win."""
    options = dict(options)
    malloc = set_worker_malloc() if kind == "local" else worker_malloc()
    if malloc and batch:
        exports = [f"export {name}={value}" for name, value in malloc.items()]
        options["job_script_prologue"] = [*exports, *options.get("job_script_prologue", [])]
    elif malloc and kind == "kubernetes":  # env: a mapping, or a list of {name, value}
        env = options.get("env") or {}
        if isinstance(env, dict):
            options["env"] = {**malloc, **env}
        else:
            given = {item["name"] for item in env}
            options["env"] = [
                *env,
                *({"name": k, "value": v} for k, v in malloc.items() if k not in given),
            ]
    return options


def register(client: Any) -> None:
    """Have every worker of ``client``'s cluster, now and later, log who it is (a no-op if it cannot)."""
    try:
        client.register_plugin(IdentifyWorkers())
    except (
        Exception
    ) as exc:  # an old or locked-down scheduler: the record is a courtesy, not the fit
        logger.debug("could not register the worker identity plugin: %s", exc)


def workers_seen(client: Any, since: float = 0.0) -> list[dict[str, Any]]:
    """The workers of ``client``'s cluster that were alive at some time since ``since`` (a ``time.time()``).

    Returns
    -------
    list of dict
        One per worker address, in order of arrival: ``name``, ``address``, ``host``, ``pid``, ``threads``,
        ``slurm_job_id`` / ``pbs_job_id`` when the worker is a batch job, and ``"left": true`` for a worker
        that left the cluster since (a job cancelled or past its walltime). Empty without a client.
    """
    if client is None:
        return []
    try:
        identities = client.get_events(TOPIC)
        membership = client.get_events("all")
    except Exception as exc:
        logger.debug("could not read the workers' identities: %s", exc)
        return []
    left: dict[str, float] = {}
    for stamp, event in membership:
        if isinstance(event, dict) and event.get("action") == "remove-worker":
            left[str(event.get("worker"))] = stamp
        elif isinstance(event, dict) and event.get("action") == "add-worker":
            left.pop(str(event.get("worker")), None)
    seen: dict[str, tuple[float, dict[str, Any]]] = {}
    for stamp, identity in identities:
        if isinstance(identity, dict):
            who = {
                k: v for k, v in identity.items() if k != "worker"
            }  # the scheduler's copy of address
            seen.setdefault(str(who.get("address")), (stamp, who))
    workers = []
    for address, (_, who) in sorted(seen.items(), key=lambda item: item[1][0]):
        if address in left and left[address] < since:
            continue
        if address in left:
            who["left"] = True
        workers.append(who)
    if workers:
        logger.info("workers: %s", describe(workers))
    return workers


def describe(workers: list[dict[str, Any]]) -> str:
    """One line for the log: ``2 workers (SLURM jobs 12, 13)``."""
    jobs = [w["slurm_job_id"] for w in workers if "slurm_job_id" in w]
    pbs = [w["pbs_job_id"] for w in workers if "pbs_job_id" in w]
    where = []
    if jobs:
        where.append(f"SLURM job{'s' if len(jobs) > 1 else ''} {', '.join(jobs)}")
    if pbs:
        where.append(f"PBS job{'s' if len(pbs) > 1 else ''} {', '.join(pbs)}")
    hosts = sorted({str(w.get("host")) for w in workers})
    lost = sum(bool(w.get("left")) for w in workers)
    text = f"{len(workers)} worker{'s' if len(workers) != 1 else ''} on {', '.join(hosts)}"
    text += f", {lost} of them lost during the fit" if lost else ""
    return text + (f" ({'; '.join(where)})" if where else "")


def client_identity() -> dict[str, Any]:
    """Where this process (the client) runs: ``host``, ``pid``, and its batch job id inside an allocation."""
    identity: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid()}
    for key, variable in _JOB_VARIABLES.items():
        if os.environ.get(variable):
            identity[key] = os.environ[variable]
    return identity


def now() -> float:
    """The clock :func:`workers_seen` compares with (the scheduler's events are stamped with ``time()``)."""
    return time.time()
