"""Print 'tests: N passed, N failed, N skipped' from pytest's junit XML files (for vm-test.sh)."""

import sys
import xml.etree.ElementTree as ET


def counts(paths: list[str]) -> str:
    total = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    read = 0
    for path in paths:
        try:
            root = ET.parse(path).getroot()
        except (OSError, ET.ParseError):
            continue
        read += 1
        for suite in root.iter("testsuite"):
            for key in total:
                total[key] += int(suite.get(key, 0))
    if not read:
        return "tests: no junit result"
    failed = total["failures"] + total["errors"]
    passed = total["tests"] - failed - total["skipped"]
    return f"tests: {passed} passed, {failed} failed, {total['skipped']} skipped"


if __name__ == "__main__":
    print(counts(sys.argv[1:]))
