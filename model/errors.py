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
