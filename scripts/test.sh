#!/usr/bin/env bash
# Fresh clone -> set up (with test dependencies) -> run the test suite.
# Tests that need real data read ../shared/data and skip when it is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
.venv/bin/python -m pytest -q "$@"
