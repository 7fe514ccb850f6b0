"""Every ``daskparcel.*`` setting of dask's config: its default, its meaning, one accessor.

Set them in a dask YAML file (``~/.config/dask/daskparcel.yaml``), with :func:`dask.config.set`
(``dask.config.set({"daskparcel.voxel-chunk": 16384})``) or in the environment
(``DASK_DASKPARCEL__RUNTIME__TIMEOUT=30s``). Read them with :func:`get`, never with a fallback of one's own:
the defaults are registered here, once, when the package is imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dask
import dask.config


@dataclass(frozen=True)
class Setting:
    """One setting: its key under ``daskparcel.``, its default and what it means."""

    key: str
    default: Any
    meaning: str


SETTINGS: tuple[Setting, ...] = (
    Setting("chunk-mb", 32, "MB of float32 per chunk (whole volumes) when reading NIfTI"),
    Setting("voxel-chunk", 8192, "voxels per chunk of the signals store"),
    Setting(
        "reduction.exact-max-columns",
        4000,
        "exact SVDs up to this many columns, randomized (one pass per power iteration) beyond",
    ),
    Setting(
        "reduction.run-in-task-mb",
        512,
        "runs up to this many MB of float32 signals are reduced in one task each: one read, not two",
    ),
    Setting(
        "kmeans.in-memory-bytes",
        2**30,
        "features below this size go to scikit-learn's MiniBatchKMeans in memory; above, streaming",
    ),
    Setting("runtime.timeout", "10s", "how long to try to reach a scheduler before giving up"),
    Setting(
        "runtime.local",
        "threads",
        "the local default: threads, processes (a LocalCluster on 127.0.0.1) or synchronous",
    ),
    Setting(
        "runtime.local-workers",
        None,
        "worker processes when runtime.local is processes (None: one per core)",
    ),
    Setting(
        "runtime.blas-threads",
        1,
        "BLAS threads per dask thread, and OpenMP threads of the client's own steps (None: leave them alone)",
    ),
    Setting("runtime.dashboard-address", ":8787", "dashboard address of the local process cluster"),
    Setting(
        "runtime.worker-malloc",
        True,
        "start workers with glibc's WORKER_MALLOC (faster, more memory kept; False: distributed's own)",
    ),
)

_BY_KEY = {s.key: s for s in SETTINGS}


def _nested(key: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"daskparcel": {}}
    node = out["daskparcel"]
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return out


def register() -> None:
    """Register every default in dask's config (idempotent; done when daskparcel is imported)."""
    for setting in SETTINGS:
        dask.config.update_defaults(_nested(setting.key, setting.default))


def get(key: str) -> Any:
    """The value of ``daskparcel.<key>`` (a key of :data:`SETTINGS`), as configured or by default."""
    if key not in _BY_KEY:
        raise KeyError(
            f"daskparcel.{key}: not a daskparcel setting; see daskparcel.config.SETTINGS"
        )
    return dask.config.get(f"daskparcel.{key}", _BY_KEY[key].default)


def table() -> str:
    """The settings as a Markdown table (the README's configuration table is this)."""
    rows = ["| setting | default | meaning |", "|---|---|---|"]
    for s in SETTINGS:
        rows.append(f"| `daskparcel.{s.key}` | `{s.default!r}` | {s.meaning} |")
    return "\n".join(rows)


register()
