#!/usr/bin/env bash
# Install forktrace on Debian/Ubuntu as root: system packages (bcc, kernel headers,
# a C compiler for the spawn workload) and a venv in .venv that can import Debian's
# bcc (made from /usr/bin/python3 with --system-site-packages).
# Idempotent: a second run only checks.
set -euo pipefail
# As root (apt-get and BPF need it): re-run through sudo only when not root,
# so a root shell without sudo (minimal Debian images) works as it is.
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "install.sh: run as root (apt-get and BPF need it)" >&2; exit 1; }
    exec sudo -- bash "$0" "$@"
fi
cd "$(dirname "$0")/.."


# pip, with its "Location '...' is ignored" warnings left out: one per package
# and configured index that lacks it (a machine's pip.conf with several local
# indexes prints dozens), about the machine's configuration, not this install.
# Everything else pip writes, errors included, is shown, and its status kept.
quiet_pip() {
    local log rc=0
    log=$(mktemp)
    "$@" 2>"$log" || rc=$?
    grep -v "^WARNING: Location '.*' is ignored: " "$log" >&2 || true
    rm -f "$log"
    return "$rc"
}

need=()
# redis-server: the real application tests/test_real_app.py traces (BGSAVE forks).
for pkg in python3-bpfcc python3-venv gcc libc6-dev redis-server; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need+=("$pkg")
done
# Headers for bcc: the running kernel's if the distribution has them, else the
# distribution's default flavour (tracer falls back to those; see docs/measuring.md).
release=$(uname -r)
if [ ! -e "/lib/modules/$release/build" ] && ! ls -d /usr/src/linux-headers-*-common >/dev/null 2>&1; then
    need+=("HEADERS")
fi
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    pkgs=()
    for p in "${need[@]}"; do
        if [ "$p" = HEADERS ]; then
            if apt-cache show "linux-headers-$release" >/dev/null 2>&1; then
                pkgs+=("linux-headers-$release")
            else
                pkgs+=("linux-headers-amd64")
            fi
        else
            pkgs+=("$p")
        fi
    done
    echo "install.sh: apt-get install ${pkgs[*]}"
    apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    /usr/bin/python3 -m venv --system-site-packages .venv
fi
quiet_pip .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
.venv/bin/python -c 'import bcc' 2>/dev/null || { echo "install.sh: .venv cannot import bcc" >&2; exit 1; }
echo "install.sh: ready: $(pwd)/.venv/bin/tracer"
