"""pytest plugin for the guests: one line per test as soon as it ends (vm-test.sh).

Under emulation a guest can hit its timeout before pytest prints its summary or
writes junit XML; this file still says which tests passed, failed or erred, and why
(the first line of the error), up to the moment the guest was stopped.
Enabled with `-p pytest_stream` and FORKTRACE_VM_STREAM=PATH.
"""

import os


def _first_error_line(report) -> str:
    text = str(report.longrepr or "")
    errors = [line[1:].strip() for line in text.splitlines() if line.startswith("E ")]
    if errors:
        return errors[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def pytest_runtest_logreport(report) -> None:
    path = os.environ.get("FORKTRACE_VM_STREAM")
    if not path:
        return
    # Setup and teardown lines only when they go wrong (an erring fixture); the call always.
    if report.when != "call" and report.outcome == "passed":
        return
    outcome = report.outcome if report.when == "call" else f"{report.outcome} in {report.when}"
    why = _first_error_line(report) if report.outcome != "passed" else ""
    with open(path, "a") as out:
        out.write(f"{report.nodeid}\t{outcome}\t{report.duration:.1f}s\t{why[:300]}\n")
