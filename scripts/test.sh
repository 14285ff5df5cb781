#!/usr/bin/env bash
# The whole check: lint, the test suite, and the documentation build.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh "demo,dev"
export KERAS_BACKEND=torch
.venv/bin/python -m ruff check .
.venv/bin/python -m pytest -q "$@"
