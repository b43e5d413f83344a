#!/usr/bin/env bash
# Command two: sets up a CPU environment (.venv, pinned) and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")"
./setup_cpu.sh
# pytest exits 5 when it collects no test: that fails here too, like any non-zero status.
exec .venv/bin/python -m pytest -q "$@"
