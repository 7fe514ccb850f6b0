"""Logging helpers: nilearn's ``verbose`` through :mod:`logging`, and timed steps."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def timed(
    timings: dict[str, float], name: str, log: logging.Logger | None = None
) -> Iterator[list[str]]:
    """Record the seconds the block takes as ``timings[name]``; with ``log``, log ``name: seconds`` at INFO
    when the block ends, followed by the notes the block appended to the list it is given."""
    start = time.perf_counter()
    notes: list[str] = []
    try:
        yield notes
    finally:
        timings[name] = time.perf_counter() - start
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
