#!/usr/bin/env bash
# Create ./.venv (if missing) and install ctrlab into it.
#   bash scripts/setup.sh          runtime dependencies
#   bash scripts/setup.sh dev      plus test/benchmark dependencies
# torch is pinned first to the tested CPU build: a bare `pip install torch` may pull a
# multi-GB CUDA build, and pyproject's range accepts the version installed here.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
# the build backend warns about editable installs on stderr even under -q: not the user's concern
export PYTHONWARNINGS=ignore::Warning
extra=""
if [ "${1:-}" = "dev" ]; then extra="[dev]"; fi
.venv/bin/python -m pip install -q -e ".${extra}" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import ctrlab, torch, pyarrow; print('ctrlab', ctrlab.__version__, '| torch', torch.__version__, '| pyarrow', pyarrow.__version__)"
