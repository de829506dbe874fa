#!/usr/bin/env bash
# Install, then record the built-in workload at a few VMA counts and report.
# Usage: sudo scripts/demo.sh [VMAS ...]   (default: 0 1000 6400)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
mkdir -p recordings
for vmas in "${@:-0 1000 6400}"; do
    for v in $vmas; do
        out="recordings/spawn-$v.parquet"
        .venv/bin/tracer record --spawn "$v" --forks 2000 --cpu 0 -o "$out"
        .venv/bin/tracer report "$out"
    done
done
