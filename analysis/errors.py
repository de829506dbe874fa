"""One exception type for every error a user can cause or fix.

The CLI prints its message as one line and exits non-zero; anything else that
escapes is a bug and keeps its traceback.
"""


class TracerError(Exception):
    """A user-facing failure: bad input, missing capability, unusable file."""

    exit_code = 1


class UsageError(TracerError):
    """The command line asks for something inconsistent."""

    exit_code = 2
