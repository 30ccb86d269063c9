#!/usr/bin/env bash
# The test command: installs everything (scripts/install.sh), then runs the Python test
# suite with the Triton interpreter on. MTLK_SKIP_INSTALL=1 skips the install when the
# environment is already built; extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MTLK_VENV:-.venv}
if [ "${MTLK_SKIP_INSTALL:-0}" != "1" ]; then
  bash scripts/install.sh
fi
TRITON_INTERPRET=1 "$VENV/bin/python" -m pytest python_tests -q "$@"
