#!/usr/bin/env bash
# Installs the libraries bench/compare.py measures against into DIR (default .peers), next to
# the project's torch 2.13.0 CPU environment and without their dependencies: their own
# requirements would pull another (CUDA) torch. Then: PYTHONPATH=DIR python bench/compare.py
#   bash bench/install_peers.sh [DIR]     (uses .venv's pip unless MTLK_VENV says otherwise)
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.peers}
PIP="${MTLK_VENV:-.venv}/bin/pip"
# TorchJD and the solvers its aggregators call (UPGrad/DualProj: quadprog via qpsolvers; CAGrad:
# cvxpy + clarabel; Nash-MTL: cvxpy + ecos; cvxpy's own imports: osqp, scs, qdldl)
# LibMTL's weighting modules (loaded by file, without its package imports); torch-rechub;
# DeepCTR-Torch (+ requests, which its import uses for a version check); torchmetrics (+
# lightning-utilities) for the metrics section; scikit-learn (the metrics section, and torch-rechub
# imports it) with what it imports (scipy, joblib + cloudpickle, narwhals, threadpoolctl).
"$PIP" install -q --target "$DIR" --no-deps \
  torchjd==0.18.0 qpsolvers quadprog cvxpy clarabel ecos osqp scs qdldl \
  LibMTL==1.1.5 torch-rechub==0.9.0 deepctr-torch==0.3.0 requests urllib3 idna certifi charset_normalizer \
  torchmetrics lightning-utilities \
  scikit-learn scipy joblib cloudpickle narwhals threadpoolctl
# NextRec (newest) and what its import needs (polars, transformers, huggingface_hub, httpx, PyYAML
# and their own dependencies, none of which is torch) in DIR/nextrec_env, which bench/compare.py
# appends to sys.path last, so that the project's numpy and the rest keep precedence
"$PIP" install -q --target "$DIR/nextrec_env" --no-deps nextrec
"$PIP" install -q --target "$DIR/nextrec_env" polars transformers huggingface_hub httpx pyyaml
echo "peers in $DIR: PYTHONPATH=$DIR ${MTLK_VENV:-.venv}/bin/python bench/compare.py"
