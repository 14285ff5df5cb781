#!/usr/bin/env bash
# The whole check: lint, the test suite, and the documentation build.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh "demo,dev,docs"
export KERAS_BACKEND=torch
.venv/bin/python -m ruff check .
.venv/bin/python -m pytest -q "$@"
# The site, generated from the code (options tables, hook reference): strict
# mode fails on any warning, such as a step without a page or a broken link.
NO_MKDOCS_2_WARNING=1 .venv/bin/python -m mkdocs build --strict
