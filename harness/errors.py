"""Exceptions that cross stages (a leaf module: it imports nothing from selbench)."""


class JudgeUnavailable(RuntimeError):
    """The judge could not be asked: unreachable, timing out, refusing our key, or answering with errors after all
    retries. Not a verdict: evaluations fail with it and are retried by the next run."""

    def __init__(self, endpoint: str, cause: str, hint: str = ""):
        self.endpoint, self.cause = endpoint, cause
        super().__init__(f"judge at {endpoint} unavailable: {cause}" + (f" ({hint})" if hint else ""))
