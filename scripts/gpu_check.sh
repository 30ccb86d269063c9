#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU (the device tool's H200; CI has none): build
# mtlkernels._C with its CUDA kernels against that machine's own torch, check the build, run the
# CUDA and Triton tests (python_tests/gpu) and the GPU op bench. About 5 minutes on one H200
# (most of it the build); every step is timed.
#   PYTHON                the interpreter holding a CUDA torch (default: python3)
#   TORCH_CUDA_ARCH_LIST  default 9.0 (Hopper)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
t0=$(date +%s)
stamp() { echo "=== [$(( $(date +%s) - t0 )) s] $*"; }

nvidia-smi -L
"$PY" -c "import sys, torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda); sys.exit(not torch.cuda.is_available())" \
  || { echo "gpu_check: $PY has no CUDA torch or sees no GPU" >&2; exit 1; }

stamp "build mtlkernels._C with CUDA"
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
MAX_JOBS=${MAX_JOBS:-16} "$PY" setup.py -q build_ext --inplace
"$PY" .ci/check_cuda_module.py

stamp "CUDA and Triton tests on the GPU"
# compiled Triton, not the interpreter the CPU test session switches on
TRITON_INTERPRET=0 "$PY" -m pytest -q -p no:cacheprovider python_tests/gpu

stamp "GPU op bench"
"$PY" bench/gpu_ops_bench.py --reps 30
stamp "done"
