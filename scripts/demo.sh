#!/usr/bin/env bash
# The project's main job: train the seed guide's GAN on embedded digits.
# Extra arguments go to `keras-steps demo`, e.g. `--epochs 2 --steps 10`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh demo
exec .venv/bin/keras-steps demo "${DEMO_STEP:-gan}" "$@"
