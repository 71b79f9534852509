"""User-facing errors: one line that names the problem and the fix.

The CLI prints `error: <message>` for these and exits with status 2, never a traceback.
Anything else that escapes is a bug and keeps its traceback.
"""


class LensError(Exception):
    """A problem with the user's input or environment, explained in one line."""


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first line of an exception's text (a library's message may span several), for one-line errors."""
    text = str(e).strip()
    return text.splitlines()[0][:limit] if text else "no detail"
