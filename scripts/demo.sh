#!/usr/bin/env bash
# Install, then the main job on the built-in workload: record it at a few VMA
# counts in both layouts (with sampling and the spawn cycle), and report where
# fork's time goes (attribution over all of them).
# Usage (as root, or through sudo): scripts/demo.sh [VMAS_LIST]   (default: 0,100,400,1600,6400)
set -euo pipefail
# Root is needed (apt-get, BPF): through sudo only when not root already, so a
# root shell without sudo (minimal Debian images) runs this as it is.
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "demo.sh: run as root" >&2; exit 1; }
    exec sudo -- bash "$0" "$@"
fi
cd "$(dirname "$0")/.."
bash scripts/install.sh
out="recordings/sweep-$(uname -r)-$(date +%Y%m%d-%H%M%S)"
.venv/bin/tracer sweep -o "$out" --vmas "${1:-0,100,400,1600,6400}" --forks 500 --cpu 0
.venv/bin/tracer report "$out"
echo "demo: recordings, report.md, report.json and plots/ in $out"
