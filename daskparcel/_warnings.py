"""One line per distinct warning on a command line: Python warnings and nibabel's header messages.

Python prints a warning on two lines (the message, then the source line that raised it), a multi-line
message on more, and nibabel logs its header fixes (e.g. negative pixdim) on every load of a file, twice when
the application configured logging (nibabel's own handler, then the root's). Inside :func:`one_line_warnings`
each distinct warning is printed once, on one line, prefixed like the CLI's errors, and nibabel's header
messages name the file they are about.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TextIO

__all__ = ["one_line", "one_line_warnings"]

NIBABEL_LOGGER = "nibabel.global"


def one_line(text: str) -> str:
    """``text`` with its line breaks and runs of blanks collapsed to single spaces."""
    return " ".join(str(text).split())


def _loading_file() -> str | None:
    """The file nibabel is loading when it logs (the ``filename`` of ``nibabel.load`` up the stack)."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "load" and "nibabel" in code.co_filename:
            name = frame.f_locals.get("filename")
            if name is not None:
                return Path(str(name)).name
        frame = frame.f_back
    return None


class _Once(logging.Filter):
    """Passes each distinct (file, message) of nibabel's logger once, rewritten to one line naming the file,
    to ``stream``; nothing goes on to nibabel's own handler or the root logger."""

    def __init__(self, prefix: str, stream: TextIO, seen: set[tuple[str, ...]]) -> None:
        super().__init__()
        self.prefix, self.stream, self.seen = prefix, stream, seen

    def filter(self, record: logging.LogRecord) -> bool:
        source = _loading_file()
        message = one_line(record.getMessage())
        key = ("nibabel", source or "", message)
        if key not in self.seen:
            self.seen.add(key)
            where = f"{source}: " if source else ""
            print(f"{self.prefix}: warning: {where}{message} (nibabel)", file=self.stream)
        return False


@contextmanager
def one_line_warnings(prefix: str = "daskparcel", stream: TextIO | None = None) -> Iterator[None]:
    """Show every distinct warning raised in the block once, on one line: ``PREFIX: warning: MESSAGE``.

    Parameters
    ----------
    prefix : str
        What starts each line (the CLI passes ``daskparcel COMMAND``, as in its error lines).
    stream : text stream, optional
        Where the lines go; default: ``sys.stderr`` at the time of each warning.
    """
    seen: set[tuple[str, ...]] = set()

    def target() -> TextIO:
        return stream if stream is not None else sys.stderr

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        text = one_line(str(message))
        key = (category.__name__, text)
        if key not in seen:
            seen.add(key)
            print(f"{prefix}: warning: {text}", file=file or target())

    nib_logger = logging.getLogger(NIBABEL_LOGGER)
    once = _Once(prefix, target(), seen)
    with warnings.catch_warnings():
        warnings.showwarning = show
        nib_logger.addFilter(once)
        try:
            yield
        finally:
            nib_logger.removeFilter(once)
