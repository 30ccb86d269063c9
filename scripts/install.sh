#!/usr/bin/env bash
# Creates a virtual environment with the pinned CPU build of torch and builds mtlkernels
# (the C++ extension included) into it, editable, with the test and bench extras.
#   MTLK_VENV   where to put the environment (default: .venv in the repository)
#   MTLK_CPU_ISA, MTLK_NO_CUDA   passed through to setup.py (see its docstring)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MTLK_VENV:-.venv}

python3 -m venv "$VENV"
# torch==2.13.0 is the CPU build; an unpinned torch would pull a multi-GB CUDA build.
"$VENV/bin/pip" install -q torch==2.13.0 setuptools wheel ninja numpy
# --no-build-isolation: compile against the torch just installed, not a fresh download.
MAX_JOBS=${MAX_JOBS:-2} "$VENV/bin/pip" install -q --no-build-isolation -e ".[test,bench]"
"$VENV/bin/python" -c "import mtlkernels, json; print(json.dumps(mtlkernels.build_info()))"
