"""Shared helpers of the benchmarks: run one configuration in its own process and measure it.

:func:`measure` starts ``python _measure.py SCRIPT FUNCTION JSON``: the child imports ``SCRIPT``, calls
``FUNCTION(**JSON)`` and prints the returned dict as one JSON line. Meanwhile the parent samples the resident
memory (RSS) of the child and of all its descendants (dask worker and nanny processes included) every ~50 ms and
keeps the peak of their sum. A child that reports ``phases`` (``{"fit": [start, end], ...}`` in ``time.time()``
seconds) also gets the peak of each phase.

Failures are results, not exceptions: a non-zero exit (with the tail of its stderr), a kill by the kernel
(SIGKILL: the OOM killer on Linux), a ``MemoryError`` or a dask worker killed for memory (``oom``), the timeout, or
our own kill when the summed RSS passes ``kill_above`` (to protect a shared machine).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil

RESULT_MARK = "@@bench-result@@ "
GIB = 1024**3
RESULTS = Path(__file__).resolve().parent / "results"


@dataclasses.dataclass
class Measurement:
    """What one child process did: its status, wall time, peak summed RSS and the dict it returned."""

    status: str  # ok | failed | oom | timeout | over-limit
    wall_s: float
    peak_rss: int
    result: dict[str, Any]
    returncode: int | None = None
    error: str = ""
    memory_cap: int | None = None
    phase_peaks: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def over_cap(self) -> bool:
        """The sampled peak passed the memory cap the child was given (None: no cap)."""
        return self.memory_cap is not None and self.peak_rss > self.memory_cap

    def to_dict(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        doc["peak_rss_gib"] = self.peak_rss / GIB
        doc["over_cap"] = self.over_cap
        return doc


def tree_rss(proc: psutil.Process) -> int:
    """Resident memory of a process and all its descendants, in bytes (vanished processes count 0)."""
    total = 0
    try:
        family = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    for p in family:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def _kill_tree(proc: psutil.Process) -> None:
    with contextlib.suppress(psutil.Error):
        family = [*proc.children(recursive=True), proc]
        for p in family:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(family, timeout=10)


def _classify(returncode: int, stderr: str) -> str:
    if returncode == 0:
        return "ok"
    if returncode == -signal.SIGKILL:
        return "oom"  # killed by the kernel: the OOM killer (we record our own kills separately)
    if "MemoryError" in stderr or "KilledWorker" in stderr or "exceeded 95% memory" in stderr:
        return "oom"
    return "failed"


def _parse_result(stdout: str) -> dict[str, Any]:
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            return dict(json.loads(line[len(RESULT_MARK) :]))
    return {}


def _phase_peaks(samples: Sequence[tuple[float, int]], phases: dict[str, Any]) -> dict[str, int]:
    peaks = {}
    for name, span in phases.items():
        start, end = float(span[0]), float(span[1])
        inside = [rss for t, rss in samples if start <= t <= end]
        peaks[name] = max(inside) if inside else 0
    return peaks


def measure(
    script: str | os.PathLike[str],
    function: str,
    kwargs: dict[str, Any],
    *,
    timeout_s: float | None = None,
    memory_cap: int | None = None,
    kill_above: int | None = None,
    interval_s: float = 0.05,
) -> Measurement:
    """Run ``function(**kwargs)`` of ``script`` in a new Python process and measure it.

    Parameters
    ----------
    script : path
        A Python file defining ``function`` (it must return a JSON-serialisable dict).
    function : str
        Name of the function to call.
    kwargs : dict
        Its keyword arguments (JSON-serialisable).
    timeout_s : float, optional
        Kill the process tree past this many seconds (status ``timeout``).
    memory_cap : int, optional
        The memory (bytes) the configuration is meant to fit in: recorded, and compared with the peak
        (``Measurement.over_cap``). The child enforces it (e.g. a LocalCluster's ``memory_limit``).
    kill_above : int, optional
        Kill the process tree when its summed RSS passes this many bytes (status ``over-limit``).
    interval_s : float
        Sampling period of the RSS.

    Returns
    -------
    Measurement
    """
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        out_path, err_path = Path(tmp) / "stdout", Path(tmp) / "stderr"
        with open(out_path, "w") as out, open(err_path, "w") as err:
            command = [sys.executable, __file__, str(script), function, json.dumps(kwargs)]
            start = time.perf_counter()
            popen = subprocess.Popen(command, stdout=out, stderr=err)
            proc = psutil.Process(popen.pid)
            samples: list[tuple[float, int]] = []
            peak, status = 0, ""
            try:
                while popen.poll() is None:
                    rss = tree_rss(proc)
                    samples.append((time.time(), rss))
                    peak = max(peak, rss)
                    if kill_above is not None and rss > kill_above:
                        status = "over-limit"
                    elif timeout_s is not None and time.perf_counter() - start > timeout_s:
                        status = "timeout"
                    if status:
                        break
                    time.sleep(interval_s)
            finally:  # also on Ctrl-C: never leave the child or its workers behind
                if status or popen.poll() is None:
                    _kill_tree(proc)
            returncode = popen.wait()
            wall = time.perf_counter() - start
        stdout, stderr = out_path.read_text(), err_path.read_text()
    result = _parse_result(stdout)
    status = status or _classify(returncode, stderr)
    if status == "ok" and not result:
        status = "failed"
    error = ""
    if status != "ok":
        error = "\n".join(stderr.strip().splitlines()[-15:])
        if status == "over-limit" and kill_above is not None:
            error = (
                f"killed by the benchmark: summed RSS above {kill_above / GIB:.1f} GiB\n" + error
            )
        elif status == "timeout":
            error = f"killed by the benchmark after {timeout_s:.0f} s\n" + error
    return Measurement(
        status=status,
        wall_s=wall,
        peak_rss=peak,
        result=result,
        returncode=returncode,
        error=error,
        memory_cap=memory_cap,
        phase_peaks=_phase_peaks(samples, result.get("phases", {})),
    )


@contextlib.contextmanager
def timed(phases: dict[str, list[float]], name: str) -> Iterator[None]:
    """Record the ``time.time()`` span of a block in ``phases[name]`` (for per-phase peaks)."""
    start = time.time()
    try:
        yield
    finally:
        phases[name] = [start, time.time()]


def seconds(phases: dict[str, list[float]], name: str) -> float:
    """Duration of a recorded phase."""
    start, end = phases[name]
    return end - start


def client_reserve(memory_cap: int) -> int:
    """The part of a memory cap kept for the client and the nannies (1 GiB, or a quarter of a smaller cap)."""
    return min(GIB, memory_cap // 4)


@contextlib.contextmanager
def capped_client(memory_cap: int, n_workers: int = 2) -> Iterator[Any]:
    """A ``distributed`` client on a LocalCluster whose workers' memory limits and the client's reserve
    (:func:`client_reserve`) sum to ``memory_cap``, so the whole run's peak can be checked against the cap."""
    from distributed import Client, LocalCluster

    from daskparcel.runtime.workers import set_worker_malloc

    set_worker_malloc()  # what daskparcel's own clusters do (README: workers you start yourself)
    with (
        LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            memory_limit=(memory_cap - client_reserve(memory_cap)) // n_workers,
            processes=True,
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def dir_size(path: str | os.PathLike[str]) -> int:
    """Bytes of the files under a folder (or of one file)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


Column = tuple[str, str, Callable[[Any], str]]


def fmt(spec: str) -> Callable[[Any], str]:
    """A cell formatter: ``format(value, spec)``, ``-`` for None / NaN."""

    def cell(value: Any) -> str:
        if value is None or (isinstance(value, float) and value != value):
            return "-"
        return format(value, spec) if spec else str(value)

    return cell


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> str:
    """A Markdown table of ``rows`` with ``columns`` = (key, header, formatter)."""
    lines = [
        "| " + " | ".join(header for _, header, _ in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(f(row.get(key)) for key, _, f in columns) + " |")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    """The machine and the load the numbers were measured under."""
    return {
        "cpus": os.cpu_count(),
        "memory_gib": psutil.virtual_memory().total / GIB,
        "load_average": os.getloadavg(),
        "python": sys.version.split()[0],
    }


def save(name: str, doc: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write ``results/<name>-<time>.json`` and ``.md`` (and ``<name>-latest.*``); return their paths."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    doc = {"name": name, "time": stamp, "machine": machine(), **doc}
    paths = []
    for suffix, text in ((".json", json.dumps(doc, indent=2, default=str)), (".md", markdown)):
        path = RESULTS / f"{name}-{stamp}{suffix}"
        path.write_text(text + "\n")
        (RESULTS / f"{name}-latest{suffix}").write_text(text + "\n")
        paths.append(path)
    return paths[0], paths[1]


def _child(argv: list[str]) -> None:
    script, function, kwargs = argv[0], argv[1], json.loads(argv[2])
    spec = importlib.util.spec_from_file_location(Path(script).stem, script)
    if spec is None or spec.loader is None:
        raise SystemExit(f"{script}: cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    result = getattr(module, function)(**kwargs)
    sys.stdout.flush()
    print(RESULT_MARK + json.dumps(result, default=float), flush=True)


if __name__ == "__main__":
    _child(sys.argv[1:])
