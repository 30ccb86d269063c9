"""T x T solvers: bad input gets a clear error naming the argument, before any solve, on both
backends; the compiled ops check the same things for direct (C++ / torch.ops) callers."""
from __future__ import annotations

import pytest
import torch

from mtlkernels import _extension
from mtlkernels.ops import solvers as S

needs_native = pytest.mark.skipif(not _extension.native_available(), reason=str(_extension.LOAD_ERROR))
BACKENDS = [pytest.param("native", marks=needs_native), "reference"]
F64 = torch.float64


def ok(N=3, T=4):
    J = torch.randn(N, T, 6, dtype=F64)
    G = J @ J.transpose(1, 2)
    order = S.random_orders(N, T)
    target = torch.zeros(N, T, T, dtype=F64)
    lower = torch.full((N, T), 0.1, dtype=F64)
    return G, order, target, lower


def call(name, backend, G, order=None, target=None, lower=None, **kw):
    if name == "pcgrad":
        return S.pcgrad_weights(G, order, backend=backend)
    if name == "gradvac":
        return S.gradvac_weights(G, order, target, kw.get("beta", 0.5), backend=backend)
    if name == "mgda":
        return S.mgda_weights(G, kw.get("max_iter", 250), kw.get("tol", 1e-5), backend=backend)
    return S.peltr_weights(G, lower, backend=backend)


OPS = ["pcgrad", "gradvac", "mgda", "peltr"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("gram,exc,match", [
    (torch.zeros(4, dtype=F64), ValueError, r"gram must be \[T, T\] or \[N, T, T\]"),
    (torch.zeros(2, 3, 4, 4, dtype=F64), ValueError, r"gram must be \[T, T\] or \[N, T, T\]"),
    (torch.zeros(3, 4, 5, dtype=F64), ValueError, r"gram must be .*square"),
    (torch.zeros(3, 4, 4), TypeError, r"gram must be float64, got torch.float32"),
    ([[1.0]], TypeError, r"gram must be a Tensor"),
])
def test_bad_gram(backend, name, gram, exc, match):
    _, order, target, lower = ok()
    with pytest.raises(exc, match=match):
        call(name, backend, gram, order, target, lower)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_gram_names_the_problem(backend, name, value):
    G, order, target, lower = ok()
    G[2, 1, 3] = value
    with pytest.raises(ValueError, match=r"_weights: gram\[2\] holds NaN or Inf"):
        call(name, backend, G, order, target, lower)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["pcgrad", "gradvac"])
def test_bad_order(backend, name):
    G, order, target, _ = ok()
    with pytest.raises(ValueError, match=r"order must be \[N, T, T\] = \[3, 4, 4\]"):
        call(name, backend, G, order[:, :2], target)
    with pytest.raises(TypeError, match=r"order must be torch.int64, got torch.int32"):
        call(name, backend, G, order.int(), target)
    bad = order.clone()
    bad[1, 3] = torch.tensor([0, 1, 1, 2])
    with pytest.raises(ValueError, match=r"order\[1, 3\] must be a permutation of 0..3, got \[0, 1, 1, 2\]"):
        call(name, backend, G, bad, target)
    bad[1, 3] = torch.tensor([0, 1, 2, 4])
    with pytest.raises(ValueError, match=r"order\[1, 3\] must be a permutation"):
        call(name, backend, G, bad, target)
    with pytest.raises(ValueError, match=r"order must be \[T, T\] = \[4, 4\]"):
        call(name, backend, G[0], order, target[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_gradvac_target_and_beta(backend):
    G, order, target, _ = ok()
    with pytest.raises(ValueError, match=r"target must be \[N, T, T\]"):
        S.gradvac_weights(G, order, target[0], 0.5, backend=backend)
    with pytest.raises(TypeError, match=r"target must be torch.float64"):
        S.gradvac_weights(G, order, target.float(), 0.5, backend=backend)
    for beta in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"beta \(EMA rate\) must be in \[0, 1\]"):
            S.gradvac_weights(G, order, target, beta, backend=backend)
    target[1, 0, 2] = 1.5
    with pytest.raises(ValueError, match=r"target\[1\] must hold cosine targets in \[-1, 1\]"):
        S.gradvac_weights(G, order, target, 0.5, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_mgda_settings(backend):
    G = ok()[0]
    for max_iter in (-1, 2.5, True):
        with pytest.raises(ValueError, match=r"max_iter must be an int >= 0"):
            S.mgda_weights(G, max_iter=max_iter, backend=backend)
    for tol in (-1e-3, float("inf"), float("nan")):
        with pytest.raises(ValueError, match=r"tol must be finite and >= 0"):
            S.mgda_weights(G, tol=tol, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_infeasible_lower_bounds_are_rejected(backend):
    G, _, _, lower = ok()
    with pytest.raises(ValueError, match=r"lower_bounds must be \[N, T\] = \[3, 4\]"):
        S.peltr_weights(G, lower[0], backend=backend)
    with pytest.raises(ValueError, match=r"lower_bounds must be \[T\] = \[4\]"):
        S.peltr_weights(G[0], lower, backend=backend)
    with pytest.raises(TypeError, match=r"lower_bounds must be torch.float64"):
        S.peltr_weights(G, lower.float(), backend=backend)
    over = lower.clone()
    over[2] = torch.tensor([0.5, 0.3, 0.2, 0.1])
    with pytest.raises(ValueError, match=r"lower_bounds\[2\] must be >= 0 with sum <= 1 \(got sum 1.1"):
        S.peltr_weights(G, over, backend=backend)
    neg = lower.clone()
    neg[0, 1] = -0.01
    with pytest.raises(ValueError, match=r"lower_bounds\[0\] must be >= 0"):
        S.peltr_weights(G, neg, backend=backend)
    nan = lower.clone()
    nan[1, 1] = float("nan")
    with pytest.raises(ValueError, match=r"lower_bounds\[1\] must be >= 0"):
        S.peltr_weights(G, nan, backend=backend)
    # a sum above 1 by rounding only is accepted (and treated as sum = 1)
    edge = torch.full((3, 4), 0.25 + 1e-14, dtype=F64)
    torch.testing.assert_close(S.peltr_weights(G, edge, backend=backend), edge)


@pytest.mark.parametrize("backend", BACKENDS)
def test_devices_must_match(backend):
    G, order, target, lower = ok()
    with pytest.raises(ValueError, match=r"order is on meta but gram is on cpu"):
        S.pcgrad_weights(G, order.to("meta"), backend=backend)
    with pytest.raises(ValueError, match=r"lower_bounds is on meta but gram is on cpu"):
        S.peltr_weights(G, lower.to("meta"), backend=backend)


def test_backend_choice(monkeypatch):
    G = ok()[0]
    with pytest.raises(ValueError, match=r"mgda_weights: backend='triton' is not available"):
        S.mgda_weights(G, backend="triton")
    with pytest.raises(ValueError, match=r"mgda_weights: backend='cuda'; expected one of"):
        S.mgda_weights(G, backend="cuda")
    if _extension.triton_installed():  # a global Triton preference falls back to auto
        monkeypatch.setenv("MTLK_BACKEND", "triton")
        torch.testing.assert_close(S.mgda_weights(G), S.mgda_weights(G, backend="reference"))


@needs_native
def test_compiled_ops_check_arguments_themselves():
    """Direct torch.ops callers (C++ TORCH_CHECK_VALUE / TORCH_CHECK_TYPE) get the same names."""
    G, order, target, lower = ok()
    ops = torch.ops.mtlk
    with pytest.raises(ValueError, match=r"pcgrad_weights: gram must be \[N, T, T\]"):
        ops.pcgrad_weights(G[0], order[0])
    with pytest.raises(TypeError, match=r"mgda_weights: gram must be float64"):
        ops.mgda_weights(G.float(), 250, 1e-5)
    with pytest.raises(ValueError, match=r"pcgrad_weights: order must be \[N, T, T\]"):
        ops.pcgrad_weights(G, order[:, :, :2])
    with pytest.raises(TypeError, match=r"gradvac_weights: order must be int64"):
        ops.gradvac_weights(G, order.int(), target, 0.5, True)
    with pytest.raises(ValueError, match=r"gradvac_weights: target must be \[N, T, T\]"):
        ops.gradvac_weights(G, order, target[:2], 0.5, True)
    with pytest.raises(ValueError, match=r"gradvac_weights: beta"):
        ops.gradvac_weights(G, order, target, 2.0, True)
    with pytest.raises(ValueError, match=r"mgda_weights: max_iter must be >= 0"):
        ops.mgda_weights(G, -1, 1e-5)
    with pytest.raises(ValueError, match=r"peltr_weights: lower_bounds must be \[N, T\]"):
        ops.peltr_weights(G, lower[:, :3])
    bad = order.clone()
    bad[2, 0, 0] = 7
    with pytest.raises(ValueError, match=r"gradvac_weights: order\[2, 0\] must be a permutation"):
        ops.gradvac_weights(G, bad, target, 0.5, True)
