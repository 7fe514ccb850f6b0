"""Logging helpers: nilearn's ``verbose`` through :mod:`logging`, timed steps, and labelled progress bars.

A logged step (:func:`timed` with a logger) labels the dask computations made inside it; within
:func:`progress_bars` (the CLI's, on a terminal) each computation draws a bar on stderr with that label, on the
local schedulers (dask's callbacks) and on a distributed client (the scheduler's own progress plugin, as
``distributed.progress``; :class:`daskparcel.runtime.Runtime` installs :class:`ProgressScheduler`), between
the steps' timed lines. Without a terminal the CLI logs the timed lines alone.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from typing import Any, TextIO

_STEP: ContextVar[str | None] = ContextVar("daskparcel_step", default=None)
_BARS: ContextVar[TextIO | None] = ContextVar("daskparcel_progress_bars", default=None)
_SERIAL: ContextVar[dict[str, float] | None] = ContextVar("daskparcel_serial", default=None)
BAR_WIDTH = 30


def current_step() -> str:
    """The label of the logged step running in this context (``"dask"`` outside any)."""
    return _STEP.get() or "dask"


@contextmanager
def labelled(name: str) -> Iterator[None]:
    """Label the progress bars of the block's computations with ``name`` (as a logged :func:`timed` step)."""
    token = _STEP.set(name)
    try:
        yield
    finally:
        _STEP.reset(token)


def bars_out() -> TextIO | None:
    """Where the computations of this context draw labelled progress bars (see :func:`progress_bars`), or
    ``None``: no bars."""
    return _BARS.get()


def bar_line(label: str, frac: float, elapsed: float, detail: str = "") -> str:
    """One redrawn progress line (starting with a carriage return), ``label: [####   ]  40% | 3/8 tasks | 1.2s``."""
    from dask.utils import format_time

    frac = min(max(frac, 0.0), 1.0)
    bar = "#" * int(BAR_WIDTH * frac)
    parts = [f"[{bar:<{BAR_WIDTH}}] {int(100 * frac):3d}%", *([detail] if detail else [])]
    return f"\r{label}: {' | '.join([*parts, format_time(elapsed)])}"


def labelled_progress_bar(out: TextIO) -> Any:
    """dask's progress bar on the local schedulers, each bar labelled with the step that computes (dask is
    imported here, so that importing this module, and the CLI, stays fast)."""
    from dask.diagnostics import ProgressBar

    class LabelledProgressBar(ProgressBar):
        def _start(self, dsk: Any) -> None:
            self._label = current_step()  # read here: the bar is drawn from a timer thread
            super()._start(dsk)

        def _draw_bar(self, frac: float, elapsed: float) -> None:
            with suppress(ValueError):
                if self._file is not None:
                    self._file.write(bar_line(self._label, frac, elapsed))
                    self._file.flush()

    return LabelledProgressBar(out=out, width=BAR_WIDTH)


@contextmanager
def progress_bars(enabled: bool = True, out: TextIO | None = None) -> Iterator[None]:
    """Draw a labelled progress bar on ``out`` (stderr) for each dask computation of the block, between the
    package's INFO lines (each step's timed line, what an in-memory step is doing, the dashboard link).

    Parameters
    ----------
    enabled : bool
        ``False``: no bars (the block runs as is).
    out : file, optional
        Where the bars go (default ``sys.stderr``).

    Notes
    -----
    When the ``daskparcel`` logger already logs INFO (``-v``, a job's log) its lines go where they went;
    otherwise they are written to ``out`` as plain messages for the block.
    """
    if not enabled:
        yield
        return
    out = out or sys.stderr
    token = _BARS.set(out)
    log = logging.getLogger("daskparcel")
    handler = None
    if not log.isEnabledFor(logging.INFO):
        level, propagate = log.level, log.propagate
        handler = logging.StreamHandler(out)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False  # the root handler would print them again
    try:
        with labelled_progress_bar(out):
            yield
    finally:
        _BARS.reset(token)
        if handler is not None:
            log.removeHandler(handler)
            log.setLevel(level)
            log.propagate = propagate


class ProgressScheduler:
    """A dask scheduler function for a distributed client that draws a labelled bar per computation.

    The graph is submitted to ``client``; the scheduler's progress plugin (what ``distributed.progress``
    shows) counts its tasks until they finish; then the results are gathered. ``persist`` stays the
    client's, so persisted collections stay on the workers.
    """

    def __init__(self, client: Any) -> None:
        self.client = client

    def get(self, dsk: Any, keys: Any, **kwargs: Any) -> Any:
        """Compute ``keys`` of ``dsk`` on the client, with a bar labelled by the current step."""
        from dask.core import flatten

        out = bars_out()
        if out is None:
            return self.client.get(dsk, keys, **kwargs)
        packed = self.client.get(dsk, keys, sync=False, **kwargs)
        futures = [f for f in flatten(packed) if hasattr(f, "key")]
        try:
            wait_futures(futures)
            return self.client.gather(packed)
        finally:
            for future in futures:
                future.release()

    def persist(self, *args: Any, **kwargs: Any) -> Any:
        """The client's ``persist`` (dask calls it for ``dask.persist`` under this scheduler)."""
        return self.client.persist(*args, **kwargs)


def wait_futures(futures: list[Any]) -> None:
    """Wait until a distributed client's ``futures`` are done (or one failed), drawing the current step's bar
    as a computation under :class:`ProgressScheduler` does (for results fetched piece by piece)."""
    out = bars_out()
    if out is not None and futures:
        _distributed_bar(futures, current_step(), out)
        return
    from distributed import wait

    wait(futures)


def _distributed_bar(futures: list[Any], label: str, out: TextIO) -> Any:
    """distributed's text progress bar (all tasks the futures depend on), labelled, on ``out``; returns
    when they are done or one failed."""
    from distributed.diagnostics.progressbar import TextProgressBar

    class Bar(TextProgressBar):
        def _draw_bar(self, remaining: int, all: int, **kwargs: Any) -> None:
            frac = (1 - remaining / all) if all else 1.0
            with suppress(ValueError):
                out.write(bar_line(label, frac, self.elapsed, f"{all - remaining}/{all} tasks"))
                out.flush()

        def _draw_stop(self, **kwargs: Any) -> None:
            with suppress(ValueError):
                out.write("\n")
                out.flush()

    return Bar(futures, scheduler=futures[0].client.scheduler.address, width=BAR_WIDTH)


@contextmanager
def collect_serial(timings: dict[str, float]) -> Iterator[None]:
    """Within the block, :func:`serial_step` adds its seconds to ``timings`` as ``"serial: <name>"``."""
    token = _SERIAL.set(timings)
    try:
        yield
    finally:
        _SERIAL.reset(token)


@contextmanager
def serial_step(name: str) -> Iterator[None]:
    """Time a step that runs on one core by nature (ward's merge loop, ReNA's groupings), so that a fit's
    timings (and the scaling benchmark) say how much of the wall time no number of cores can shorten."""
    start = time.perf_counter()
    try:
        yield
    finally:
        add_serial(name, time.perf_counter() - start)


def add_serial(name: str, seconds: float) -> None:
    """Add ``seconds`` to the serial step ``name`` of the fit (:func:`serial_step`), for a step timed where it
    ran (a dask task, on any thread or worker) and reported by the thread that runs the fit."""
    timings = _SERIAL.get()
    if timings is not None:
        key = f"serial: {name}"
        timings[key] = timings.get(key, 0.0) + seconds


@contextmanager
def timed(
    timings: dict[str, float], name: str, log: logging.Logger | None = None
) -> Iterator[list[str]]:
    """Record the seconds the block takes as ``timings[name]``; with ``log``, log ``name: seconds`` at INFO
    when the block ends, followed by the notes the block appended to the list it is given, and label the
    progress bars of the block's computations with ``name``."""
    start = time.perf_counter()
    notes: list[str] = []
    token = _STEP.set(name) if log is not None else None
    try:
        yield notes
    finally:
        timings[name] = time.perf_counter() - start
        if token is not None:
            _STEP.reset(token)
    if log is not None:
        log.info("%s: %.1f s%s", name, timings[name], "".join(f", {n}" for n in notes))


@contextmanager
def verbosity(verbose: Any) -> Iterator[None]:
    """nilearn's ``verbose`` through logging: 1 logs each step of ``fit`` (INFO), 2 details too (DEBUG).

    The ``daskparcel`` logger's level is lowered for the block; its lines go to stderr unless logging is
    configured already (the CLI's, a job's ``job.log``, the application's).
    """
    log = logging.getLogger("daskparcel")
    if not verbose or log.isEnabledFor(logging.INFO if verbose == 1 else logging.DEBUG):
        yield
        return
    level, handler = log.level, None
    log.setLevel(logging.INFO if verbose == 1 else logging.DEBUG)
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s daskparcel: %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
    try:
        yield
    finally:
        log.setLevel(level)
        if handler is not None:
            log.removeHandler(handler)
