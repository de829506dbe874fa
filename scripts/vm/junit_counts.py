"""Print 'N passed, N failed, N skipped' for vm-test.sh's summary line.

From pytest's junit XML when the run ended; else from the tests.tsv that
pytest_stream wrote test by test (a guest stopped by its timeout), marked partial.
"""

import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def from_junit(path: Path) -> str | None:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    total = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for suite in root.iter("testsuite"):
        for key in total:
            total[key] += int(suite.get(key, 0))
    failed = total["failures"] + total["errors"]
    passed = total["tests"] - failed - total["skipped"]
    return f"{passed} passed, {failed} failed, {total['skipped']} skipped"


def from_stream(path: Path) -> str | None:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    outcomes: dict[str, str] = {}
    for line in lines:
        nodeid, outcome = line.split("\t")[:2]
        # A test failed in setup or teardown counts once, as failed.
        if outcomes.get(nodeid, "passed") == "passed":
            outcomes[nodeid] = outcome.split()[0]
    passed = sum(o == "passed" for o in outcomes.values())
    skipped = sum(o == "skipped" for o in outcomes.values())
    failed = len(outcomes) - passed - skipped
    return f"(partial, run cut short) {passed} passed, {failed} failed, {skipped} skipped"


if __name__ == "__main__":
    junit, stream = Path(sys.argv[1]), Path(sys.argv[2])
    print(from_junit(junit) or from_stream(stream) or "no result")
