"""The exceptions a user can cause or fix, and the exit status each one means.

The CLI prints the message as one line and exits with `exit_code`; anything
else that escapes is a bug and keeps its traceback. The rule for every command:
2 when the command line, an input file or an output path is refused before any
work is done; 1 when something fails while working; 128+N when signal N
stopped the work (what was done is written first). (compare: 1 also means a
regression found with --fail-on-regression, so every error of compare is 2,
as diff(1) does.)
"""


class TracerError(Exception):
    """A user-facing failure while working: a write that failed, a missing capability."""

    exit_code = 1


class UsageError(TracerError):
    """Refused before any work: the command line asks for something inconsistent, or an output cannot be written."""

    exit_code = 2


class InputError(UsageError):
    """An input file that is not what it should be (missing, not a regular file, corrupt, too large)."""
