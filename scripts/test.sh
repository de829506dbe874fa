#!/usr/bin/env bash
# Install, then run every test: the whole suite on this host, and the
# kernel-dependent tests on Debian's 6.1 and 6.12 kernels booted under QEMU
# (scripts/vm-test.sh: doctor, record and report in each guest, plus the
# host-fact tests). As root on a kernel with tracepoints and BPF the BPF tests
# load real programs; they skip only where a capability is truly missing, and
# say which.
#
#   scripts/test.sh [--host-only] [PYTEST ARGS...]
#
# The guests' packages and kernels are fetched first (a failure there fails
# the run, with the reason). The guests then boot at the lowest CPU priority
# while the host suite runs, so the suite's timings are not theirs to share;
# they finish after it. Their results are in vm-results/ (see vm-test.sh).
set -euo pipefail
# Root is needed (apt-get, BPF): through sudo only when not root already, so a
# root shell without sudo (minimal Debian images) runs this as it is.
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "test.sh: run as root" >&2; exit 1; }
    exec sudo -- bash "$0" "$@"
fi
cd "$(dirname "$0")/.."
guests=1
if [ "${1:-}" = "--host-only" ]; then
    guests=0
    shift
fi
bash scripts/install.sh

vm_pid=
if [ "$guests" = 1 ]; then
    bash scripts/vm-test.sh --install-only
    mkdir -p vm-results
    echo "test: guests boot in the background (log: vm-results/vm-test.log)" >&2
    nice -n 19 bash scripts/vm-test.sh >vm-results/vm-test.log 2>&1 &
    vm_pid=$!
    trap '[ -z "$vm_pid" ] || kill -TERM "$vm_pid" 2>/dev/null; exit 130' INT TERM
fi

rc=0
if [ -z "$vm_pid" ]; then
    .venv/bin/python -m pytest -ra "$@" || rc=$?
else
    # Tests that change a system-wide setting (strict overcommit) would make the
    # guests' QEMU fail its allocations: they run after the guests.
    # (exit 5: this selection holds no such test)
    .venv/bin/python -m pytest -ra -m "not system_wide" "$@" || { r=$?; [ "$r" = 5 ] || rc=$r; }
fi

if [ -n "$vm_pid" ]; then
    echo "test: waiting for the guests ..." >&2
    vm_rc=0
    wait "$vm_pid" || vm_rc=$?
    vm_pid=
    grep '^vm-test: ' vm-results/vm-test.log >&2 || tail -n 20 vm-results/vm-test.log >&2
    if [ "$vm_rc" != 0 ]; then
        echo "test: the guest tests failed (details in vm-results/)" >&2
        rc=1
    fi
    .venv/bin/python -m pytest -ra -m system_wide "$@" || { r=$?; [ "$r" = 5 ] || rc=1; }
fi
exit "$rc"
