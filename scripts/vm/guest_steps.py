"""Run the guest's steps in ONE Python process (called by guest.sh inside a virtme-ng guest).

Under software emulation, importing pandas, pyarrow and bcc over 9p costs a
minute or two per process; doctor, record, report, a sweep and the tests
share one import here. Each step's output goes to RESULTS/<step>.log (doctor's
JSON to RESULTS/doctor.json) and one line "name<TAB>exit code<TAB>seconds" to
RESULTS/steps.tsv as the step ends, so a guest killed by its timeout still
leaves the steps that finished.

    guest_steps.py RESULTS "doctor-json record report tests"
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path

# Recording sizes: small, since every fork is emulated.
RECORD = ["record", "--spawn", "200", "--forks", "50", "--quiet"]
RECORD_FORK = ["record", "--spawn", "1600", "--forks", "40", "--level", "fork", "--quiet"]
# Kernel A/B (not in the default steps): the same small sweep on each kernel, compared on the host.
SWEEP = ["sweep", "--vmas", "100,400,1600", "--layout", "gapped", "--forks", "40", "--sample", "0", "--quiet"]
# The files about host facts (kallsyms, tracefs, lockdown, BTF, headers, doctor, raw
# tracepoint prototypes), BPF tests included: they fit the CI's time under emulation.
FACT_FILES = ["tests/test_host.py", "tests/test_doctor.py", "tests/test_btf.py", "tests/test_headers.py", "tests/test_rawtp.py",
              "tests/test_typed.py", "tests/test_exact_split.py"]
PYTEST = ["-p", "no:cacheprovider", "-p", "pytest_stream", "-v", "-ra", "--tb=short", "--durations=20"]


def _exit_code(err: SystemExit) -> int:
    if err.code is None:
        return 0
    return err.code if isinstance(err.code, int) else 1


def _tracer(*argv: str) -> int:
    from tracer.cli import main

    sys.argv = ["tracer", *argv]
    try:
        main()
    except SystemExit as err:
        return _exit_code(err)
    return 0


def _pytest(results: Path, name: str, args: list[str]) -> int:
    import pytest

    os.environ["FORKTRACE_VM_STREAM"] = str(results / f"{name}.tsv")
    return int(pytest.main([*PYTEST, f"--junitxml={results / name}.xml", *args]))


def _exact_split(results: Path) -> int:
    """scripts/exact_split.py, its JSON in RESULTS; a kernel that refuses the probes is a result, not a failure."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("exact_split", Path(__file__).resolve().parent.parent / "exact_split.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["exact_split"] = module
    spec.loader.exec_module(module)
    rc = module.main(["--json", str(results / "exact-split.json")])
    return 0 if rc == module.SKIPPED else rc


def steps(results: Path) -> dict:
    """Step name -> (stdout file or None, the call)."""
    return {
        "doctor-json": (results / "doctor.json", lambda: _tracer("doctor", "--json")),
        "record": (None, lambda: _tracer(*RECORD, "-o", str(results / "spawn-200.parquet"))),
        "report": (None, lambda: _tracer("report", str(results / "spawn-200.parquet"))),
        "sweep": (None, lambda: _tracer(*SWEEP, "-o", str(results / "sweep"))),
        # The A/B's dup_mmap without any per-VMA program (whose cost differs between the kernels).
        "record-fork": (None, lambda: _tracer(*RECORD_FORK, "-o", str(results / "fork-1600.parquet"))),
        "tests": (None, lambda: _pytest(results, "tests", FACT_FILES)),
        # The sampled split against exact timings of the same run (not in the default steps).
        "exact-split": (None, lambda: _exact_split(results)),
        # Every other BPF test (each records in a subprocess: minutes per test under emulation).
        "tests-bpf": (None, lambda: _pytest(results, "tests-bpf", ["-m", "bpf", *[f"--ignore={f}" for f in FACT_FILES], "tests"])),
    }


def run(name: str, call, results: Path, stdout: Path | None) -> int:
    """One step with fds 1 and 2 sent to its log (bcc and clang write there from C)."""
    log = open(results / f"{name}.log", "w")
    out = open(stdout, "w") if stdout else log
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    os.dup2(out.fileno(), 1)
    os.dup2(log.fileno(), 2)
    start = time.monotonic()
    try:
        rc = call()
    except SystemExit as err:
        rc = _exit_code(err)
    except BaseException:  # noqa: BLE001  a step's crash is its result, not the runner's end
        traceback.print_exc()
        rc = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        log.close()
        if out is not log:
            out.close()
    seconds = time.monotonic() - start
    with open(results / "steps.tsv", "a") as f:
        f.write(f"{name}\t{rc}\t{seconds:.1f}\n")
    return rc


def main() -> int:
    results, wanted = Path(sys.argv[1]), sys.argv[2].split()
    table = steps(results)
    unknown = [name for name in wanted if name not in table]
    if unknown:
        print(f"guest_steps: unknown step {', '.join(unknown)} (known: {', '.join(table)})", file=sys.stderr)
        return 2
    failed = 0
    for name in wanted:  # in the order given; every step runs even after a failure
        stdout, call = table[name]
        print(f"guest: {name} ...", file=sys.stderr, flush=True)
        rc = run(name, call, results, stdout)
        print(f"guest: {name}: exit {rc}", file=sys.stderr, flush=True)
        failed |= rc != 0
    return int(failed)


if __name__ == "__main__":
    sys.exit(main())
