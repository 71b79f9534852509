"""User-facing errors: one line that names the problem and the fix.

The CLI prints `error: <message>` for these and exits with status 2, never a traceback.
Anything else that escapes is a bug and keeps its traceback.
"""


class LensError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class TrainingDiverged(LensError):
    """Training met a non-finite loss, gradient norm, weight or validation loss and stopped. A study's
    learning-rate tuning records it as a data point (study/tune.py); everywhere else it is a LensError."""

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step


class Terminated(BaseException):
    """SIGTERM (or SIGHUP) arrived: raised in the main thread like KeyboardInterrupt, so every `finally` and
    `except BaseException` cleans up (a half-built import or report is removed) before the CLI exits 128 +
    the signal's number. A BaseException, so no `except Exception` swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first line of an exception's text (a library's message may span several), for one-line errors."""
    text = str(e).strip()
    return text.splitlines()[0][:limit] if text else "no detail"
