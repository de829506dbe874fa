#!/usr/bin/env bash
# Runs INSIDE a virtme-ng guest (started by scripts/vm-test.sh): the kernel-dependent
# tests, `tracer doctor --json`, and a short `tracer record --spawn` + `tracer report`,
# each step's output saved in RESULTS (a directory shared writable with the host).
#
#   guest.sh CHECKOUT RESULTS PYTHON [STEPS]
#
# STEPS: which of doctor-json, record, report, tests, tests-bpf to run
# (default: all but tests-bpf).
#
# The guest sees the host's file system read-only (writable overlays on /tmp, /etc,
# /var, ...), so caches and bytecode go to /tmp. Every step runs even when an earlier
# one failed; RESULTS/steps.tsv gets one line per step: name, exit code, seconds.
set -uo pipefail

checkout=$1
results=$2
python=$3
steps=" ${4:-doctor-json record report tests} "

cd "$checkout" || exit 1
# scripts/vm for the pytest_stream plugin.
export PYTHONPATH=$checkout:$checkout/scripts/vm
export PYTHONDONTWRITEBYTECODE=1
export XDG_CACHE_HOME=/tmp/forktrace-guest-cache
export FORKTRACE_REQUIRE_BPF=1
mkdir -p "$XDG_CACHE_HOME"
: >"$results/steps.tsv"

# step NAME CMD...: run CMD with its output in RESULTS/NAME.log, record rc and time.
step() {
    local name=$1 start rc
    shift
    [[ "$steps" == *" $name "* ]] || return 0
    start=$EPOCHREALTIME
    echo "guest: $name: $*" >&2
    "$@" >"$results/$name.log" 2>&1
    rc=$?
    awk -v n="$name" -v rc="$rc" -v t0="$start" -v t1="$EPOCHREALTIME" \
        'BEGIN { printf "%s\t%s\t%.1f\n", n, rc, t1 - t0 }' >>"$results/steps.tsv"
    echo "guest: $name: exit $rc" >&2
    return 0
}

{
    echo "kernel: $(uname -r)"
    echo "python: $python ($("$python" -c 'import sys; print(sys.version.split()[0])' 2>&1))"
    echo "lockdown: $(cat /sys/kernel/security/lockdown 2>&1)"
    echo "headers: $(readlink "/lib/modules/$(uname -r)/build" 2>&1)"
} >"$results/guest-info.txt"

tracer=("$python" -m tracer.cli)
pytest=("$python" -m pytest -p no:cacheprovider -p pytest_stream -v -ra --tb=short --durations=20)

step doctor-json sh -c '"$@" doctor --json >"$0"' "$results/doctor.json" "${tracer[@]}"
step record "${tracer[@]}" record --spawn 200 --forks 50 --quiet -o "$results/spawn-200.parquet"
step report "${tracer[@]}" report "$results/spawn-200.parquet"

# Last, since they take longest: the tests that depend on the kernel. `tests`: the
# files about host facts (kallsyms, tracefs, lockdown, BTF, headers, doctor), BPF
# tests included, which fit the CI's time under emulation. `tests-bpf`: every other
# BPF test (each records in a subprocess: minutes per test under emulation).
# pytest_stream writes RESULTS/STEP.tsv as each test ends.
fact_files=(tests/test_host.py tests/test_doctor.py tests/test_btf.py tests/test_headers.py)
FORKTRACE_VM_STREAM=$results/tests.tsv \
    step tests "${pytest[@]}" --junitxml="$results/tests.xml" "${fact_files[@]}"
FORKTRACE_VM_STREAM=$results/tests-bpf.tsv \
    step tests-bpf "${pytest[@]}" --junitxml="$results/tests-bpf.xml" -m bpf \
    "${fact_files[@]/#/--ignore=}" tests
