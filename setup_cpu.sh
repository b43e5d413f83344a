#!/usr/bin/env bash
# Creates .venv with the CPU build of PyTorch and the pinned test requirements (idempotent).
# This machine's pip finds the CPU wheel of torch 2.13.0 locally; elsewhere, avoid the multi-GB CUDA build with
#   PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu ./setup_cpu.sh
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check torch==2.13.0 -r requirements-test.txt
