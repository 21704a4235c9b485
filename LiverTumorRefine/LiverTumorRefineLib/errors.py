"""Exceptions the engine raises for problems a user can fix.

The CLI prints ``RefineError.for_cli()`` as one line and exits non-zero; the Slicer module shows
``str(error)`` in a dialog. Anything else that escapes is a bug and keeps its traceback.
"""
from __future__ import annotations


class RefineError(Exception):
    """A problem with the user's input or environment; the message names it and the fix.

    ``cli``, when given, is the same message worded for the command line (naming flags such as
    ``--force``); ``str(error)`` never names a flag, so the Python API and Slicer can show it.
    """

    def __init__(self, message: str = "", cli: str | None = None) -> None:
        super().__init__(message)
        self.cli = cli

    def for_cli(self) -> str:
        """The message as the command line shows it."""
        return self.cli if self.cli is not None else str(self)


class RefineCancelled(RefineError):
    """The user cancelled a long-running operation through the progress callback."""

    def __init__(self, message: str = "Cancelled by the user; nothing was written.") -> None:
        super().__init__(message)
