#!/usr/bin/env bash
# Install, then run every test. As root on a kernel with tracepoints and BPF
# the BPF tests load real programs; they skip only where a capability is
# truly missing, and say which.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/python -m pytest -ra "$@"
