#!/usr/bin/env bash
# Run the kernel-dependent tests, `tracer doctor` and a short recording on real Debian
# kernels: 6.1 (bookworm: dup_mmap probeable, no __mt_dup, tree built by appends) and
# 6.12 (bookworm-backports: __mt_dup, dup_mmap inlined), each booted under QEMU
# software emulation with virtme-ng, this checkout shared with the guest.
#
# Usage (as root, on a Debian amd64 host; the checkout installed with scripts/install.sh
# so that .venv exists):
#   scripts/vm-test.sh                  both kernels
#   scripts/vm-test.sh 6.12             one kernel (6.1 or 6.12)
#   scripts/vm-test.sh --install-only   host packages, virtme-ng and kernels only
#
# What it does, each part idempotent:
#   1. apt-get installs the host packages (qemu-system-x86, kmod, busybox-static,
#      udev) and virtme-ng from PyPI into a venv of its own under the cache.
#   2. scripts/vm/fetch-kernel.sh fetches each kernel's image, headers and kbuild
#      packages with a private apt configuration (the host's apt is untouched),
#      unpacks them with dpkg -x into the cache and links lib/modules/REL/build and
#      source at the unpacked headers. A cached kernel is not downloaded again.
#   3. Boots both kernels side by side (vng --disable-kvm --force-9p, under timeout)
#      and runs scripts/vm/guest.sh inside (all steps in one Python process:
#      scripts/vm/guest_steps.py): `tracer doctor --json`, `tracer record --spawn 200
#      --forks 50`, `tracer report`, then the host-fact test files (test_host,
#      test_doctor, test_btf, test_headers, test_rawtp, test_typed; their BPF tests included) and,
#      if asked (FORKTRACE_VM_STEPS), a small sweep for a kernel A/B (`sweep`) and
#      every other BPF test (`tests-bpf`). The guest's /boot is the kernel's own (its
#      config), /lib/modules has its modules and headers.
#
# Results, per kernel series, in RESULTS/<series>/: steps.tsv (step, exit code,
# seconds), <step>.log, tests.xml / tests-bpf.xml (junit), tests.tsv / tests-bpf.tsv
# (each test's outcome and first error line, written as it ends), doctor.json,
# spawn-200.parquet,
# guest-info.txt, console.log (the guest's console). Latencies measured under
# emulation are not real-hardware latencies: use them for counts, probe checks and
# relative comparisons between kernels.
#
# Exit code: 0 only if every step in every guest passed; one summary line per kernel.
# If the kernel packages cannot be had (no network to the Debian archive), it fails.
#
# Environment:
#   FORKTRACE_VM_RESULTS     results directory (default vm-results in the checkout)
#   FORKTRACE_KERNEL_CACHE   unpacked kernels (default ~/.cache/forktrace/kernels)
#   FORKTRACE_VM_VENV        virtme-ng's venv (default ~/.cache/forktrace/virtme-ng)
#   FORKTRACE_VM_PYTHON      python in the guest (default .venv/bin/python of the checkout)
#   FORKTRACE_VM_TIMEOUT     seconds per guest before it is killed (default 1500)
#   FORKTRACE_VM_MEMORY      guest memory (default 2G)
#   FORKTRACE_VM_CPUS        guest CPUs (default 2)
#   FORKTRACE_VM_PARALLEL=0  boot the guests one after the other (default: side by side)
#   FORKTRACE_VM_STEPS       guest steps (default "doctor-json record report tests"; add
#                            sweep (100/400/1600 VMAs, gapped, 40 forks each) for the
#                            kernel A/B, tests-bpf for the record-based BPF tests:
#                            about 25 more minutes per guest under emulation)
#   FORKTRACE_DEBIAN_MIRROR  Debian archive URL (default: the host's apt sources)
#   FORKTRACE_VM_REFRESH=1   fetch the suites' newest kernels again
set -euo pipefail
# Root is needed (apt-get, BPF): through sudo only when not root already, so a
# root shell without sudo (minimal Debian images) runs this as it is.
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "vm-test.sh: run as root" >&2; exit 1; }
    exec sudo -- bash "$0" "$@"
fi

checkout=$(cd "$(dirname "$0")/.." && pwd)
cd "$checkout"

die() { echo "vm-test: $*" >&2; exit 1; }

install_only=0
series_list=()
for arg in "$@"; do
    case "$arg" in
        --install-only) install_only=1 ;;
        6.1 | 6.12) series_list+=("$arg") ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$arg' (kernels: 6.1, 6.12; --install-only)" ;;
    esac
done
[ ${#series_list[@]} -gt 0 ] || series_list=(6.1 6.12)

[ "$(id -u)" -eq 0 ] || die "run as root (apt-get, and BPF inside the guests, need it)"

cache_home=${XDG_CACHE_HOME:-$HOME/.cache}
venv=${FORKTRACE_VM_VENV:-$cache_home/forktrace/virtme-ng}
results_root=${FORKTRACE_VM_RESULTS:-$checkout/vm-results}
guest_python=${FORKTRACE_VM_PYTHON:-$checkout/.venv/bin/python}
guest_timeout=${FORKTRACE_VM_TIMEOUT:-1500}
guest_memory=${FORKTRACE_VM_MEMORY:-2G}
guest_cpus=${FORKTRACE_VM_CPUS:-2}
parallel=${FORKTRACE_VM_PARALLEL:-1}
virtme_ng_version=1.42

# -- 1. host packages and virtme-ng ----------------------------------------------------
need=()
for pkg in qemu-system-x86 kmod busybox-static udev python3-venv debian-archive-keyring; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "vm-test: apt-get install ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null ||
        die "apt-get install ${need[*]} failed"
fi
if ! "$venv/bin/vng" --version 2>/dev/null | grep -qx "virtme-ng $virtme_ng_version"; then
    echo "vm-test: pip install virtme-ng==$virtme_ng_version into $venv" >&2
    /usr/bin/python3 -m venv "$venv" || die "cannot create a venv in $venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "virtme-ng==$virtme_ng_version" ||
        die "pip install virtme-ng==$virtme_ng_version failed"
fi
# vng calls virtme-run from its own venv by name.
export PATH=$venv/bin:$PATH

# -- 2. kernels --------------------------------------------------------------------------
declare -A tree
for series in "${series_list[@]}"; do
    tree[$series]=$(bash scripts/vm/fetch-kernel.sh "$series") ||
        die "kernel $series: Debian's packages could not be fetched (see the message above); the guest tests did not run"
done
[ "$install_only" -eq 0 ] || { echo "vm-test: installed; kernels in ${tree[*]}"; exit 0; }

[ -x "$guest_python" ] || die "$guest_python not found: run scripts/install.sh first, or set FORKTRACE_VM_PYTHON"

# -- 3. guests ---------------------------------------------------------------------------
# boot_guest SERIES: boot it, run guest.sh inside, leave the results in RESULTS/SERIES
# with vng's exit code and the wall time in RESULTS/SERIES/host.tsv.
boot_guest() {
    local series=$1 release out start rc attempt
    release=$(cat "${tree[$series]}/release")
    out=$results_root/$series
    start=$EPOCHREALTIME
    : >"$out/host.tsv"
    for attempt in 1 2; do
        rc=0
        # The host's file system (checkout, venv, cache) is seen read-only, $out writable.
        # --verbose: the guest kernel's own messages (an oops, a panic) land in console.log.
        timeout --kill-after=30 "$guest_timeout" vng \
            --run "${tree[$series]}/root/boot/vmlinuz-$release" \
            --disable-kvm --force-9p --verbose --memory "$guest_memory" --cpus "$guest_cpus" \
            --rwdir "$out" --rodir "/boot=${tree[$series]}/root/boot" --cwd "$checkout" \
            --exec "bash $checkout/scripts/vm/guest.sh $checkout $out $guest_python '$guest_step_names'" \
            </dev/null >"$out/console.log" 2>&1 || rc=$?
        # A guest that died under emulation before its steps ended (not a timeout, not a
        # failed step) is booted once more; the first console is kept and the summary says so.
        if [ "$attempt" = 1 ] && [ "$rc" != 0 ] && [ "$rc" != 124 ] && [ "$rc" != 137 ] &&
            [ "$(wc -l <"$out/steps.tsv" 2>/dev/null || echo 0)" -lt "$guest_steps" ]; then
            mv "$out/console.log" "$out/console-attempt1.log"
            mv "$out/steps.tsv" "$out/steps-attempt1.tsv" 2>/dev/null || true
            printf 'retried\tthe first guest died after %s of %s steps (vng exit %s; console-attempt1.log)\n' \
                "$(wc -l <"$out/steps-attempt1.tsv" 2>/dev/null || echo 0)" "$guest_steps" "$rc" >>"$out/host.tsv"
            continue
        fi
        break
    done
    awk -v rc="$rc" -v t0="$start" -v t1="$EPOCHREALTIME" \
        'BEGIN { printf "vng_exit\t%s\nseconds\t%.0f\n", rc, t1 - t0 }' >>"$out/host.tsv"
}

# summarize SERIES: one line saying each step's verdict and time, and the test counts.
summarize() {
    local series=$1 out release rc seconds verdict=ok steps="" name step_rc step_seconds mark counts retried
    out=$results_root/$series
    release=$(cat "${tree[$series]}/release")
    rc=$(awk -F'\t' '$1 == "vng_exit" { print $2 }' "$out/host.tsv")
    seconds=$(awk -F'\t' '$1 == "seconds" { print $2 }' "$out/host.tsv")
    if [ ! -s "$out/steps.tsv" ]; then
        echo "$series ($release): FAIL in ${seconds}s: the guest ran no step (vng exit $rc; see $out/console.log)"
        return 1
    fi
    while IFS=$'\t' read -r name step_rc step_seconds; do
        mark=ok
        [ "$step_rc" = 0 ] || { mark="FAIL($step_rc)"; verdict=FAIL; }
        steps+=" $name=$mark/${step_seconds}s"
    done <"$out/steps.tsv"
    if [ "$(wc -l <"$out/steps.tsv")" -ne "$guest_steps" ]; then
        verdict=FAIL
        steps+=" (only $(wc -l <"$out/steps.tsv") of $guest_steps steps ended; vng exit $rc"
        [ "$rc" != 124 ] && [ "$rc" != 137 ] || steps+=", timed out after ${guest_timeout}s"
        steps+=")"
    fi
    counts=""
    for name in tests tests-bpf; do
        [ -e "$out/$name.tsv" ] || [ -e "$out/$name.xml" ] || continue
        counts+="$name: $(python3 scripts/vm/junit_counts.py "$out/$name.xml" "$out/$name.tsv"); "
    done
    retried=$(awk -F'\t' '$1 == "retried" { print $2 }' "$out/host.tsv")
    [ -z "$retried" ] || steps+=" (RETRIED: $retried)"
    echo "$series ($release): $verdict in ${seconds}s; ${counts}steps:$steps"
    [ "$verdict" = ok ]
}

guest_step_names=${FORKTRACE_VM_STEPS:-doctor-json record report tests}
read -ra guest_step_list <<<"$guest_step_names"
guest_steps=${#guest_step_list[@]}  # guest.sh writes a line per step
for series in "${series_list[@]}"; do
    rm -rf "${results_root:?}/$series"
    mkdir -p "$results_root/$series"
done
# The guests run side by side: each one's work is mostly one python process, so two
# emulated guests on two host cores take about the time of one.
pids=()
# Stopped (Ctrl-C, or scripts/test.sh ending): the guests' timeout processes pass it on to QEMU.
trap 'for p in "${pids[@]}"; do pkill -TERM -P "$p"; done; exit 130' INT TERM
for series in "${series_list[@]}"; do
    echo "vm-test: $series: booting $(cat "${tree[$series]}/release") under emulation (timeout ${guest_timeout}s)" >&2
    boot_guest "$series" &
    pids+=($!)
    [ "$parallel" = 1 ] || wait "${pids[-1]}"
done
wait "${pids[@]}"

summaries=()
failed=0
for series in "${series_list[@]}"; do
    line=$(summarize "$series") || failed=1
    summaries+=("$line")
done

echo "vm-test: results in $results_root"
for line in "${summaries[@]}"; do
    echo "vm-test: $line"
done
exit "$failed"
