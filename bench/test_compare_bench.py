"""pytest-benchmark suites of bench/compare.py's sections: each side of a comparison one
benchmark, grouped so that ours and the peer's sit side by side; a peer that is not installed is
skipped. Values are checked where the two sides define them the same way (AUC; the aggregations
that agree exactly), so a timing never stands for a different answer.

    PYTHONPATH=.peers .venv/bin/python -m pytest bench/test_compare_bench.py \
        --benchmark-group-by=param:case,param:threads [-k aggregation|training_step|models|metrics]

For the markdown tables with ratios, floors and the agreement column use bench/compare.py.
"""
from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import (STEP_METHODS, libmtl_aggregates, libmtl_given_j, our_model, pairs, peer_models,  # noqa: E402
                     step_functions, tjd)
from models_table import CONFIGS  # noqa: E402

from mtlkernels import _extension, balance, metrics  # noqa: E402
from mtlkernels.ops import combine_, gram  # noqa: E402

pytestmark = pytest.mark.skipif(not _extension.native_available(), reason=str(_extension.LOAD_ERROR))

#: aggregations TorchJD defines as we do (compare.py's agreement column: <= 4e-12 in float64)
EXACT = ("UPGrad", "DualProj")


@pytest.mark.parametrize("side", ["ours", "torchjd", "libmtl"])
@pytest.mark.parametrize("case", [f"{m}-T{T}-P{P:.0e}" for m in pairs() for T in (2, 4, 8, 16) for P in (1e5, 1e6)])
def test_aggregation(benchmark, threads, case, side):
    """The update of a given float32 J [T, P]: ours (Gram, solver, combine into an existing
    buffer), TorchJD's aggregator, or LibMTL's weighting on that J (PCGrad, GradVac, MGDA)."""
    if side == "torchjd" and tjd is None:
        pytest.skip("TorchJD is not installed")
    name, T, P = case.rsplit("-", 2)
    if side == "libmtl" and not libmtl_aggregates(name):
        pytest.skip(f"LibMTL is not installed or has no aggregation of J for {name}")
    T, P = int(T[1:]), int(float(P[1:]))
    ours, theirs, _ = pairs()[name]
    J = torch.randn(T, P, generator=torch.Generator().manual_seed(T))
    if side == "ours":
        method, out, losses = ours(), torch.empty(P), torch.ones(T, dtype=torch.float64)

        def step():
            combine_([J], method.gram_weights(gram([J]), losses).float(), [out], accumulate=False)
            return out
        benchmark(step)
        if name in EXACT and tjd is not None:
            J64 = J.double()
            d, _ = balance.aggregate(ours(), J64)
            ref = theirs(T)(J64)
            assert float((d - ref).norm() / ref.norm()) < 1e-9
    elif side == "torchjd":
        benchmark(theirs(T), J)
    else:
        benchmark(libmtl_given_j(name, J)[0])


@pytest.mark.parametrize("side", ["ours", "torchjd", "libmtl"])
@pytest.mark.parametrize("case", list(STEP_METHODS))
def test_training_step(benchmark, threads, case, side):
    """A whole training step of compare.py's step MMoE under method ``case``: ours, TorchJD's
    mtl_backward + jac_to_grad, or (PCGrad) LibMTL's trainer-style per-task backward."""
    if tjd is None:
        pytest.skip("TorchJD is not installed (the step section builds every side with it)")
    fns, _ = step_functions(case)
    if side not in fns:
        pytest.skip(f"no {side} step for {case} here")
    benchmark(fns[side])


@pytest.mark.parametrize("side", ["ours", "peer"])
@pytest.mark.parametrize("case", [f"{k}-{size}" for k in ("MMoE", "PLE") for size in CONFIGS])
@pytest.mark.parametrize("peer", ["torch-rechub", "DeepCTR-Torch", "NextRec"])
def test_models_forward_backward(benchmark, threads, case, peer, side):
    """Forward+backward at compare.py's sizes: ours (batch norm as the peer has it) or the peer's."""
    kind, size = case.split("-", 1)
    c = CONFIGS[size]
    found = [p for p in peer_models(kind, c) if p[0].startswith(peer)]
    if not found:
        pytest.skip(f"{peer}'s {kind} is not available here")
    _, call, module, batch_norm, probabilities = found[0]
    x = torch.randn(c["batch"], c["input_dim"])
    if side == "ours":
        module = our_model(kind, c, batch_norm)
        call = (lambda z, m=module: torch.sigmoid(m(z))) if probabilities else module

    def step():
        module.zero_grad(set_to_none=True)
        call(x).sum().backward()
    benchmark(step)


@pytest.fixture(scope="module")
def auc_rows():
    g = torch.Generator().manual_seed(0)
    scores = torch.round(torch.rand(1_000_000, generator=g, dtype=torch.float64) * 1000) / 1000  # many ties
    return scores, (torch.rand(1_000_000, generator=g) < 0.1).long()


@pytest.mark.parametrize("case", ["auc-1e6"])
@pytest.mark.parametrize("side", ["ours", "sklearn", "torchmetrics"])
def test_metrics_auc(benchmark, threads, auc_rows, case, side):
    scores, labels = auc_rows
    if side == "ours":
        fn = lambda: float(metrics.auc(scores, labels))  # noqa: E731
    elif side == "sklearn":
        sk = pytest.importorskip("sklearn.metrics")
        s_np, l_np = scores.numpy(), labels.numpy()
        fn = lambda: float(sk.roc_auc_score(l_np, s_np))  # noqa: E731
    else:
        tm = pytest.importorskip("torchmetrics.functional.classification")
        fn = lambda: float(tm.binary_auroc(scores, labels))  # noqa: E731
    value = benchmark(fn)
    assert value == pytest.approx(float(metrics.auc(scores, labels)), abs=1e-6 if side == "torchmetrics" else 1e-12)
