"""What the module's and the Segment Editor effect's error dialogs say."""
import logging

from LiverTumorRefineLib.errors import RefineError


def error_message(exc: BaseException, what: str) -> str:
    """The dialog text for ``exc``: a RefineError's own message (it names the problem and the fix);
    anything else is a bug, logged with its traceback under ``what`` for the Python console."""
    if isinstance(exc, RefineError):
        return str(exc)
    logging.error("%s failed", what, exc_info=exc)
    return f"Refinement failed unexpectedly: {exc}\nDetails are in the Python console."
