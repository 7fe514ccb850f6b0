"""What the batch scheduler of this site accepts, checked before a cluster file's jobs are submitted.

:func:`~daskparcel.runtime.clusters.load_cluster_config` checks a cluster file's keys and types; whether the
site has the partition it names, nodes with that many cores and that much memory, and a time limit that long
only the scheduler knows. For ``kind: slurm`` this asks ``sinfo`` (one call, no job submitted), so that a
typo in ``queue`` or a ``memory`` no node has is a one-line error before any data is read, instead of
worker jobs that pend forever while the fit waits for workers. Where ``sinfo`` is not installed (a
laptop checking a file meant for a cluster) nothing is checked. PBS and Kubernetes have no engine to ask
here: their files are checked by :mod:`.clusters` alone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import shutil
import subprocess
import time
from typing import Any

import dask
from dask.utils import parse_bytes, parse_timedelta

from daskparcel.errors import InputError
from daskparcel.runtime.clusters import ClusterConfig, walltime_seconds

logger = logging.getLogger(__name__)

# partition (default marked *), cpus per node, memory per node (MB), time limit, state, sockets:cores:threads
_SINFO_FORMAT = "%P|%c|%m|%l|%a|%z"


@dataclasses.dataclass(frozen=True)
class Partition:
    """One SLURM partition as ``sinfo`` reports it: the largest node's cores and memory, its time limit."""

    name: str
    cpus: int
    memory_mb: int
    time_limit_s: float | None  # None: infinite
    up: bool
    default: bool
    threads_per_core: int = (
        1  # hardware threads of a core (sinfo %z); CR_Core gives jobs whole cores
    )


def slurm_partitions(sinfo: str = "sinfo") -> dict[str, Partition] | None:
    """The partitions ``sinfo`` lists (None where ``sinfo`` is not installed).

    Raises
    ------
    InputError
        ``sinfo`` is installed but the controller does not answer (jobs could not be submitted either).
    """
    exe = shutil.which(sinfo)
    if exe is None:
        return None
    try:
        done = subprocess.run(
            [exe, "-h", "-o", _SINFO_FORMAT],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InputError(
            f"SLURM: `sinfo` did not answer ({exc}); check the cluster with `sinfo`"
        ) from exc
    if done.returncode != 0:
        reason = " ".join((done.stderr or done.stdout).split()) or f"exit {done.returncode}"
        raise InputError(
            f"SLURM: `sinfo` failed ({reason}); the controller must answer before jobs can be submitted"
        )
    found: dict[str, Partition] = {}
    for line in done.stdout.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 6:
            continue
        name, cpus, memory, limit, avail, sct = fields
        threads = sct.split(":")[-1]
        default = name.endswith("*")
        name = name.rstrip("*")
        cpu_count = int(re.sub(r"\D.*", "", cpus) or 0)
        memory_mb = int(re.sub(r"\D.*", "", memory) or 0)
        old = found.get(name)
        found[name] = Partition(
            name=name,
            cpus=max(cpu_count, old.cpus if old else 0),
            memory_mb=max(memory_mb, old.memory_mb if old else 0),
            time_limit_s=walltime_seconds(limit),
            up=avail.strip() == "up" or bool(old and old.up),
            default=default or bool(old and old.default),
            threads_per_core=max(
                int(threads) if threads.isdigit() else 1, old.threads_per_core if old else 1
            ),
        )
    return found


def check_site(config: ClusterConfig) -> None:
    """Refuse a ``kind: slurm`` configuration this site's SLURM cannot run, with a one-line error.

    Checked against ``sinfo``: ``queue`` is a partition (or the site has a default one), that partition is
    up, ``cores`` (or ``job_cpu``) and ``memory`` (or ``job_mem``) fit on one of its nodes, and
    ``walltime`` is within its time limit. Other kinds, and machines without ``sinfo``, are not checked.

    Raises
    ------
    InputError
        Naming the cluster file, the key, what the site has, and what to change.
    """
    if config.kind != "slurm":
        return
    partitions = slurm_partitions()
    if partitions is None:
        logger.debug(
            "sinfo is not installed here: %s is not checked against a SLURM", config.source
        )
        return
    source, options = config.source, config.options
    listed = ", ".join(sorted(partitions)) or "none"
    queue = options.get("queue")
    if queue is None:
        defaults = [p for p in partitions.values() if p.default]
        if not defaults:
            raise InputError(
                f"cluster config {source}: no 'queue' and this SLURM has no default partition; "
                f"set queue to one of: {listed}"
            )
        part = defaults[0]
    elif queue not in partitions:
        raise InputError(
            f"cluster config {source}: queue={queue!r} is not a partition of this SLURM "
            f"(sinfo lists: {listed}); set queue to one of them"
        )
    else:
        part = partitions[queue]
    if not part.up:
        raise InputError(
            f"cluster config {source}: partition {part.name!r} is not up (sinfo); "
            "pick another queue or ask the site"
        )
    key = "job_cpu" if "job_cpu" in options else "cores"
    cores = int(options[key])
    if part.cpus and cores > part.cpus:
        raise InputError(
            f"cluster config {source}: {key}={cores} is more than a node of partition {part.name!r} "
            f"has ({part.cpus} cores); lower it to at most {part.cpus}"
        )
    if part.threads_per_core > 1 and cores % part.threads_per_core:
        logger.warning(
            "cluster config %s: the nodes of partition %r have %d hardware threads per core; where SLURM "
            "gives jobs whole cores (SelectTypeParameters=CR_Core), a job of %s=%d holds %d CPUs, and fewer "
            "jobs run at once than the CPU count suggests: set %s to a multiple of %d",
            source, part.name, part.threads_per_core, key, cores,
            -(-cores // part.threads_per_core) * part.threads_per_core, key, part.threads_per_core,
        )  # fmt: skip
    key = "job_mem" if "job_mem" in options else "memory"
    memory = options[key]
    mb = parse_bytes(memory) / 2**20 if isinstance(memory, str) else int(memory) / 2**20
    if part.memory_mb and mb > part.memory_mb:
        raise InputError(
            f"cluster config {source}: {key}={memory!r} is more than a node of partition {part.name!r} "
            f"has ({part.memory_mb} MB); lower it to at most {part.memory_mb}MB"
        )
    walltime = options.get("walltime")
    if walltime is not None and part.time_limit_s is not None:
        asked = walltime_seconds(str(walltime))
        if asked is not None and asked > part.time_limit_s:
            raise InputError(
                f"cluster config {source}: walltime={walltime!r} is longer than partition "
                f"{part.name!r} allows ({part.time_limit_s / 3600:g} h); shorten it"
            )
    logger.debug("%s fits partition %s (%s)", source, part.name, part)


def _job_ended(job_id: str) -> bool:
    """Whether SLURM has ended the job (``squeue`` no longer lists it as pending, running or completing)."""
    try:
        done = subprocess.run(
            ["squeue", "-h", "-j", str(job_id), "-o", "%T"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False  # cannot tell: keep the job
    if done.returncode != 0:
        return "Invalid job id" in done.stderr  # purged already
    return not done.stdout.strip()


def replace_ended_jobs(cluster: Any, interval_s: float = 5.0) -> None:
    """Have an adaptive SLURM cluster replace worker jobs that ended while its workers were gone.

    dask-jobqueue forgets a job whose workers left only through the scheduler's removal message, after
    ``distributed.deploy.lost-worker-timeout``; seen here, jobs that SLURM killed at their walltime were
    replaced once and not the second time (dask/dask-jobqueue#611), and the fit then waited for workers
    forever. Every ``interval_s`` on the cluster's event loop: a job none of whose workers is connected and
    that ``squeue`` no longer lists is forgotten, so that adapt submits a new one under the same name.
    """
    from tornado.ioloop import PeriodicCallback

    missing: dict[str, float] = {}  # job id -> when it was first seen without connected workers
    grace = 2 * parse_timedelta(dask.config.get("distributed.deploy.lost-worker-timeout"))

    async def reconcile() -> None:
        connected = {str(w.get("name")) for w in cluster.scheduler_info.get("workers", {}).values()}
        for name, job in list(cluster.workers.items()):
            job_id = getattr(job, "job_id", None)
            if not job_id or any(n == str(name) or n.startswith(f"{name}-") for n in connected):
                missing.pop(str(job_id), None)
                continue
            # dask-jobqueue's own clean-up gets the first chance; a pending job is listed by squeue
            if time.monotonic() - missing.setdefault(str(job_id), time.monotonic()) < grace:
                continue
            ended = await asyncio.get_running_loop().run_in_executor(None, _job_ended, job_id)
            if ended and cluster.workers.get(name) is job:
                logger.info("worker job %s (%s) has ended: adapt replaces it", job_id, name)
                del cluster.workers[name]
                missing.pop(str(job_id), None)

    callback = PeriodicCallback(reconcile, interval_s * 1000)
    cluster.periodic_callbacks["daskparcel-replace-ended-jobs"] = callback
    cluster.loop.add_callback(callback.start)
