"""The one exception type for errors a user can cause.

The CLI and the pytest gate print its message on one line and exit non-zero, without a traceback,
so every message must name the file (or option) and the problem.
"""
from __future__ import annotations


class AlzAuditError(Exception):
    """A user-facing error: bad input, a missing file, an incompatible model or config."""

    def __init__(self, message: str):
        # One line, always: multi-line messages break the CLI's contract.
        super().__init__(" ".join(str(message).split()))


class ParameterError(AlzAuditError):
    """A bad argument to a library function. The message names the parameter as the Python API spells it
    (``batch_size: must be at least 1``); the CLI shows its own flag instead (``--batch-size: …``)."""

    def __init__(self, parameter: str, problem: str):
        self.parameter = parameter
        self.problem = " ".join(str(problem).split())
        super().__init__(f"{parameter}: {self.problem}")

    def with_flag(self, flags: dict[str, str] | None = None) -> str:
        """The message with the parameter replaced by its command-line flag (``flags`` for names that differ)."""
        flag = (flags or {}).get(self.parameter) or "--" + self.parameter.replace("_", "-")
        return f"{flag}: {self.problem}"
