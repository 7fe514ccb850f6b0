"""Exceptions of daskparcel.

Every error about the user's input is an :class:`InputError`: its message names the input, says what is
wrong and what to do. The CLI turns it into a one-line message and exit code 2.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input: the message names the input, what is wrong, and the fix."""


class IncompleteStoreError(InputError):
    """A store whose write did not finish (re-run the command that writes it to resume)."""


class StoreLockedError(RuntimeError):
    """Another process is writing the same store."""
