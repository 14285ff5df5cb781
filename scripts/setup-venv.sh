#!/usr/bin/env bash
# Create .venv (once) and install keras-steps with the given extras into it.
# torch is pinned to the CPU build these machines carry; a GPU user installs
# their own torch first (see README) and this script leaves it alone.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-demo}"
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q "torch==2.13.0"
fi
.venv/bin/python -m pip install -q -e ".[${extras}]"
