"""Stop requests: SIGINT, SIGTERM and SIGHUP end tracing in order, never the process.

Installed for the whole of a recording, from before BPF is loaded until the
file is written, so no signal can land between two handlers (where the
default action would kill the tracer with the data in memory). The first
signal asks the run to stop; later ones are noted and change nothing: what
was traced is always written. SIGKILL remains for a tracer that must die now.

A flag, not KeyboardInterrupt: an exception raised while Python runs a ring
buffer callback under ctypes would be printed and dropped.
"""

from __future__ import annotations

import os
import signal

__all__ = ["STOP_SIGNALS", "StopRequests"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopRequests:
    """A context manager counting stop signals; `signum` is the first one (or None)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.count = 0
        self.writing = False  # set once tracing is over: later signals get a different note
        self._noted: set[bool] = set()  # phases (writing or not) whose repeat was noted
        self.ignored: set[int] = set()  # stop signals the tracer was started with ignored
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> "StopRequests":
        # SIGHUP ignored at start stays ignored, as nohup(1) means. SIGINT and
        # SIGTERM always stop (as in perf record), so `tracer record ... &`
        # in a script, whose background jobs start with SIGINT ignored, can
        # still be stopped with kill -INT.
        self.ignored = {signal.SIGHUP} if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN else set()
        self._previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS if sig not in self.ignored}
        return self

    def __exit__(self, *exc) -> None:
        # Once a stop was asked for, more of them only end a process that is
        # finishing anyway, and would turn a written recording's exit status
        # into "killed by SIGTERM": ignore them from here to exit.
        for sig, handler in self._previous.items():
            signal.signal(sig, signal.SIG_IGN if self.requested else handler)

    def _on_signal(self, signum: int, frame) -> None:
        self.count += 1
        if self.signum is None:
            self.signum = signum
            return
        # os.write, not print: a handler that prints while the interrupted code
        # prints to the same buffered stream raises "reentrant call".
        if self.writing in self._noted:
            return
        self._noted.add(self.writing)
        what = "writing the recording" if self.writing else "stopping"
        os.write(2, f"\ntracer: {signal.Signals(signum).name} again: already {what}; SIGKILL would lose the recording\n".encode())
