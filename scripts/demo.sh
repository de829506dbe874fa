#!/usr/bin/env bash
# Install, then the main job on the built-in workload: record it at a few VMA
# counts in both layouts (with sampling and the spawn cycle), and report where
# fork's time goes (attribution over all of them).
# Usage: sudo scripts/demo.sh [VMAS_LIST]   (default: 0,100,400,1600,6400)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
out="recordings/sweep-$(uname -r)-$(date +%Y%m%d-%H%M%S)"
.venv/bin/tracer sweep -o "$out" --vmas "${1:-0,100,400,1600,6400}" --forks 500 --cpu 0
.venv/bin/tracer report "$out"
echo "demo: recordings, report.md, report.json and plots/ in $out"
