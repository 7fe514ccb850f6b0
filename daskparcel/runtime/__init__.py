"""Where graphs run: the local default, a running dask scheduler, or a cluster described in YAML.

:mod:`.connect` chooses where a graph runs and hands back a :class:`distributed.Client` (or ``None`` for the
local threaded scheduler); :mod:`.clusters` reads and checks cluster files and starts the clusters they
describe.
"""

from daskparcel.runtime.clusters import (
    KINDS,
    ClusterConfig,
    job_script,
    load_cluster_config,
    make_cluster,
)
from daskparcel.runtime.connect import Runtime, SchedulerChoice, connect, default_scheduler

__all__ = [
    "KINDS",
    "ClusterConfig",
    "Runtime",
    "SchedulerChoice",
    "connect",
    "default_scheduler",
    "job_script",
    "load_cluster_config",
    "make_cluster",
]
