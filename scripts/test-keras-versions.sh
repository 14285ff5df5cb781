#!/usr/bin/env bash
# The chosen subset (tests/keras_versions_subset.txt) on the other Keras
# versions that pyproject.toml admits, each in its own venv:
#
#   bash scripts/test-keras-versions.sh            # lowest and nightly
#   bash scripts/test-keras-versions.sh lowest     # keras==3.12.0 in .venv-keras-lowest
#   bash scripts/test-keras-versions.sh nightly    # keras-nightly in .venv-keras-nightly
#
# Extra arguments go to pytest (e.g. -x, -k). The current release runs the
# whole suite through scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
# Keep in step with the floor in pyproject.toml and the README.
LOWEST="keras==3.12.0"
# A dated build, so that CI is reproducible; move it forward deliberately.
NIGHTLY="keras-nightly==3.16.0.dev2026102704"
which="${1:-all}"
[[ $# -gt 0 ]] && shift
case "$which" in
  all) versions=(lowest nightly) ;;
  lowest|nightly) versions=("$which") ;;
  *) echo "usage: $0 [all|lowest|nightly] [pytest args...]" >&2; exit 2 ;;
esac
mapfile -t subset < <(grep -vE '^\s*(#|$)' tests/keras_versions_subset.txt)
export KERAS_BACKEND=torch
for version in "${versions[@]}"; do
  if [[ "$version" == lowest ]]; then keras="$LOWEST"; else keras="$NIGHTLY"; fi
  venv=".venv-keras-$version"
  echo "== $keras ($venv)"
  bash scripts/setup-venv.sh dev "$venv" "$keras"
  "$venv/bin/python" -m pytest -q "${subset[@]}" "$@"
done
