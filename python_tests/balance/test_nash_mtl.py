"""Nash-MTL (ALGORITHMS.md 3.7): the exact bargaining fixed point, its consequences, the clip, the
state (warm start, update_weights_every, resume), TorchJD's documented value, degenerate J."""
from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mtlkernels.balance import NashMTL, aggregate
from mtlkernels.balance.nash_mtl import nash_weights

from .conftest import Problem

F64 = torch.float64


@settings(max_examples=40, deadline=None)
@given(T=st.integers(1, 12), seed=st.integers(0, 10_000), scale=st.sampled_from([1e-6, 1.0, 1e6]))
def test_the_fixed_point_is_solved_exactly(T, seed, scale):
    g = torch.Generator().manual_seed(seed)
    J = scale * torch.randn(T, T + 8, generator=g, dtype=F64)  # linearly independent gradients
    G = J @ J.T
    alpha = nash_weights(G, torch.ones(T, dtype=F64), 20)
    assert (alpha > 0).all()
    torch.testing.assert_close(alpha * (G @ alpha), torch.ones(T, dtype=F64), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(float(alpha @ G @ alpha), float(T), rtol=1e-9, atol=0)  # |d|^2 = T


def test_orthogonal_gradients_and_the_clip():
    J = torch.diag(torch.tensor([1.0, 4.0, 0.5], dtype=F64))
    d, w = aggregate(NashMTL(max_norm=0.0), J)
    torch.testing.assert_close(w, torch.tensor([1.0, 0.25, 2.0], dtype=F64))  # 1 / |g_i|
    torch.testing.assert_close(d, torch.ones(3, dtype=F64))                   # the sum of the unit gradients
    d, w = aggregate(NashMTL(), J)
    torch.testing.assert_close(float(d.norm()), 1.0)                           # clipped to max_norm
    torch.testing.assert_close(w, torch.tensor([1.0, 0.25, 2.0], dtype=F64) / 3 ** 0.5)


def test_torchjd_documented_value():
    """TorchJD's example: NashMTL(n_tasks=2) on J = [[-4, 1, 1], [6, 1, 1]] gives
    [0.0542, 0.7061, 0.7061]."""
    J = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=F64)
    d, _ = aggregate(NashMTL(), J)
    torch.testing.assert_close(d, torch.tensor([0.0542, 0.7061, 0.7061], dtype=F64), atol=1e-4, rtol=0)


def test_state_warm_start_reuse_and_resume():
    g = torch.Generator().manual_seed(2)
    Js = [torch.randn(3, 10, generator=g, dtype=F64) for _ in range(4)]
    method = NashMTL(update_weights_every=2)
    w0 = aggregate(method, Js[0])[1]
    w1 = aggregate(method, Js[1])[1]  # not due: the previous alpha, clipped against the new J
    alpha0 = nash_weights(Js[0] @ Js[0].T, torch.ones(3, dtype=F64), 20)
    torch.testing.assert_close(method.alpha, alpha0)
    assert not torch.equal(w0, w1)
    clone = NashMTL(update_weights_every=2)
    clone.load_state_dict(copy.deepcopy(method.state_dict()))
    torch.testing.assert_close(aggregate(clone, Js[2])[1], aggregate(method, Js[2])[1], rtol=0, atol=0)
    with pytest.raises(ValueError, match="state holds 3 task weights, this step has 2 tasks"):
        aggregate(method, Js[3][:2])


def test_degenerate_jacobians_stay_finite():
    a = torch.tensor([1.0, 2.0, -1.0], dtype=F64)
    for J in (torch.stack([a, -a]), torch.stack([a, 3 * a]), torch.stack([a, torch.zeros(3, dtype=F64)]),
              torch.zeros(2, 3, dtype=F64), torch.randn(5, 2, dtype=F64)):
        d, w = aggregate(NashMTL(), J)
        assert torch.isfinite(d).all() and torch.isfinite(w).all() and (w >= 0).all()
        assert float(d.norm()) <= 1.0 + 1e-12


def test_backward_on_a_model_and_errors():
    p = Problem(T=3, seed=4)
    J = p.jacobian()
    p.zero_grad()
    w = NashMTL().backward(p.losses(), p.model)
    d, w_ref = aggregate(NashMTL(), J)
    torch.testing.assert_close(w, w_ref.to(w.dtype))
    torch.testing.assert_close(p.shared_grad(), d.to(p.shared_grad().dtype))
    with pytest.raises(ValueError, match="NashMTL: max_norm must be >= 0"):
        NashMTL(max_norm=-1)
    with pytest.raises(ValueError, match="update_weights_every and optim_niter must be >= 1"):
        NashMTL(optim_niter=0)
