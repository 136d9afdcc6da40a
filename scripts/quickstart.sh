#!/usr/bin/env bash
# Fresh clone -> set up -> run the demo chain on a generated Criteo-shaped dataset.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ctrlab demo "$@"
