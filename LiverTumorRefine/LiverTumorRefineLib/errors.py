"""Exceptions the engine raises for problems a user can fix.

The CLI prints ``str(error)`` as one line and exits non-zero; the Slicer module shows it in a dialog.
Anything else that escapes is a bug and keeps its traceback.
"""


class RefineError(Exception):
    """A problem with the user's input or environment; the message names it and the fix."""


class RefineCancelled(RefineError):
    """The user cancelled a long-running operation through the progress callback."""

    def __init__(self, message: str = "Cancelled by the user; nothing was written.") -> None:
        super().__init__(message)
