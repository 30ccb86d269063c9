#!/usr/bin/env bash
# CUDA compile check without a GPU: build mtlkernels._C with csrc/cuda/*.cu against a CUDA
# build of torch (torch==2.14.1, CUDA 13) for sm_80 and sm_90, out of tree so the CPU
# environment never sees this .so (BUILD-NOTES P13), then import it and check that the
# CUDA kernels are registered and that the CPU kernels of this build still match.
#   MTLK_CUDA_VENV   where to put the CUDA environment (default: .venv-cuda)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${MTLK_CUDA_VENV:-$ROOT/.venv-cuda}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-"8.0;9.0"}

if [ ! -x "$CUDA_HOME/bin/nvcc" ]; then
  echo "cuda_compile_check: no nvcc at $CUDA_HOME/bin/nvcc" >&2
  exit 1
fi
"$CUDA_HOME/bin/nvcc" --version | tail -2

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.version.cuda is None)"; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch==2.14.1 ninja numpy setuptools wheel
fi

BUILD=$(mktemp -d)
trap 'rm -rf "$BUILD"' EXIT
git ls-files -z | xargs -0 -I{} cp --parents {} "$BUILD"
cd "$BUILD"
start=$(date +%s)
MAX_JOBS=${MAX_JOBS:-2} "$VENV/bin/python" setup.py -q build_ext --inplace
echo "cuda_compile_check: built in $(( $(date +%s) - start )) s"
PYTHONPATH="$BUILD" "$VENV/bin/python" "$ROOT/.ci/check_cuda_module.py"
