#!/usr/bin/env bash
# Runs INSIDE a virtme-ng guest (started by scripts/vm-test.sh): the kernel-dependent
# tests, `tracer doctor --json`, and a short `tracer record --spawn` + `tracer report`,
# each step's output saved in RESULTS (a directory shared writable with the host).
#
#   guest.sh CHECKOUT RESULTS PYTHON [STEPS]
#
# STEPS: which of doctor-json, record, report, sweep, record-fork, tests, tests-bpf, exact-split to run, in order
# (default: doctor-json record report tests).
#
# The guest sees the host's file system read-only (writable overlays on /tmp, /etc,
# /var, ...), so caches and bytecode go to /tmp. Every step runs even when an earlier
# one failed; RESULTS/steps.tsv gets one line per step: name, exit code, seconds.
set -uo pipefail

checkout=$1
results=$2
python=$3

cd "$checkout" || exit 1
steps=${4:-doctor-json record report tests}
# scripts/vm for the pytest_stream plugin.
export PYTHONPATH=$checkout:$checkout/scripts/vm
export PYTHONDONTWRITEBYTECODE=1
export XDG_CACHE_HOME=/tmp/forktrace-guest-cache
export FORKTRACE_REQUIRE_BPF=1
mkdir -p "$XDG_CACHE_HOME"
: >"$results/steps.tsv"

{
    echo "kernel: $(uname -r)"
    echo "python: $python"
    echo "lockdown: $(cat /sys/kernel/security/lockdown 2>&1)"
    echo "headers: $(readlink "/lib/modules/$(uname -r)/build" 2>&1)"
} >"$results/guest-info.txt"

# One Python process for every step: see guest_steps.py.
"$python" "$checkout/scripts/vm/guest_steps.py" "$results" "$steps"
