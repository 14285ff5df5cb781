#!/usr/bin/env bash
# Create a virtual environment (once) and install keras-steps with the given
# extras into it.
#
#   bash scripts/setup-venv.sh [EXTRAS] [VENV] [KERAS]
#
# EXTRAS defaults to "demo", VENV to ".venv", KERAS to what pyproject.toml
# resolves to (the current release). KERAS pins another Keras for that venv:
# "keras==3.12.0", or "keras-nightly==3.16.0.dev2026102704" (keras-nightly
# ships the same `keras` module, so the `keras` package is removed there).
# torch is pinned to the CPU build these machines carry; a GPU user installs
# their own torch first (see README) and this script leaves it alone.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-demo}"
venv="${2:-.venv}"
keras="${3:-}"
python3 -m venv "$venv"
py="$venv/bin/python"
"$py" -m pip install -q --upgrade pip
if ! "$py" -c "import torch" 2>/dev/null; then
  "$py" -m pip install -q "torch==2.13.0"
fi
installed_keras() {
  "$py" -m pip list --format=freeze 2>/dev/null | grep -iE '^keras(-nightly)?==' || true
}
if [[ -z "$keras" ]]; then
  "$py" -m pip install -q -e ".[${extras}]"
elif [[ "$(installed_keras)" == "$keras" ]]; then
  # Already there: only (re)register keras-steps and its entry points.
  "$py" -m pip install -q --no-deps -e .
else
  if [[ "$keras" == keras-nightly* ]]; then
    "$py" -m pip install -q -e ".[${extras}]"
    "$py" -m pip uninstall -q -y keras
    "$py" -m pip install -q --pre "$keras"
  else
    "$py" -m pip install -q -e ".[${extras}]" "$keras"
  fi
  [[ "$(installed_keras)" == "$keras" ]] || { echo "expected $keras, got $(installed_keras)" >&2; exit 1; }
fi
