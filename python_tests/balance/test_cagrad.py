"""CAGrad (ALGORITHMS.md 3.5): the exact dual against an independent solve, the spec's
properties (c = 0 is the mean, the ball constraint is active, the worst task improves at least as
much as under the mean), TorchJD's documented value, degenerate J, rescaling, errors."""
from __future__ import annotations

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mtlkernels import _extension
from mtlkernels.balance import CAGrad, aggregate
from mtlkernels.ops.solvers import cagrad_weights

from .conftest import Problem

F64 = torch.float64
native = pytest.mark.skipif(not _extension.native_available(), reason="no _C")


def objective(G: torch.Tensor, w: torch.Tensor, c: float) -> float:
    T = G.shape[0]
    a = c * torch.sqrt(G.sum()) / T
    return float(G.sum(1) @ w / T + a * torch.sqrt((w @ G @ w).clamp_min(0)))


def jacobian(T: int, P: int, rank: int, seed: int, conflict: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    J = torch.randn(T, rank, generator=g, dtype=F64) @ torch.randn(rank, P, generator=g, dtype=F64)
    if conflict:
        J[: T // 2] *= -1
    return J


@native
@settings(max_examples=40, deadline=None)
@given(T=st.integers(2, 12), rank=st.integers(1, 12), seed=st.integers(0, 10_000), conflict=st.booleans(),
       c=st.sampled_from([0.1, 0.4, 0.5, 0.9, 2.0]))
@example(T=2, rank=1, seed=38, conflict=True, c=2.0)  # opposite gradients: the optimum at |J^T w| ~ 0
def test_native_solver_equals_an_independent_solve_and_beats_random_points(T, rank, seed, conflict, c):
    """The reference finds the optimum another way (a bisection over exact min-norm solves of
    the shifted gradients); the objective agrees to rounding."""
    J = jacobian(T, 20, min(rank, T), seed, conflict)
    G = J @ J.T
    w = cagrad_weights(G, c)
    ref = cagrad_weights(G, c, backend="reference")
    assert (w >= 0).all() and abs(float(w.sum()) - 1) < 1e-12
    scale = float(G.diagonal().max())
    # near a Pareto-stationary point |J^T w| = sqrt(w'Gw) is known only to sqrt(rounding)
    tol = 1e-11 * scale + 1e-7 * c * scale ** 0.5
    assert objective(G, w, c) <= objective(G, ref, c) + tol
    rand = torch.distributions.Dirichlet(torch.ones(T, dtype=F64)).sample((200,))
    assert all(objective(G, w, c) <= objective(G, r, c) + tol for r in rand)


@native
@pytest.mark.parametrize("T", [2, 3, 5, 8])
def test_update_properties(T):
    for seed in range(5):
        J = jacobian(T, 40, T, seed, True)
        g0 = J.mean(0)
        d0, w0 = aggregate(CAGrad(0.0), J)
        torch.testing.assert_close(d0, g0)  # c = 0: the mean gradient
        torch.testing.assert_close(w0, torch.full((T,), 1.0 / T, dtype=F64))
        for c in (0.4, 0.5, 0.9):
            d, _ = aggregate(CAGrad(c, rescale=0), J)
            # the ball constraint is active and the worst task does at least as well as under g0
            torch.testing.assert_close(float((d - g0).norm()), c * float(g0.norm()), rtol=1e-9, atol=1e-12)
            assert float((J @ d).min()) >= float((J @ g0).min()) - 1e-9 * float(J.norm()) ** 2
            d1, _ = aggregate(CAGrad(c), J)
            d2, _ = aggregate(CAGrad(c, rescale=2), J)
            torch.testing.assert_close(d1, d / (1 + c ** 2))
            torch.testing.assert_close(d2, d / (1 + c))


@native
def test_torchjd_documented_value():
    """TorchJD's example: CAGrad(c=0.5) on J = [[-4, 1, 1], [6, 1, 1]] gives [0.1835, 1.2041, 1.2041]."""
    J = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=F64)
    d, _ = aggregate(CAGrad(0.5, rescale=0), J)
    torch.testing.assert_close(d, torch.tensor([0.1835, 1.2041, 1.2041], dtype=F64), atol=1e-4, rtol=0)


@native
def test_degenerate_jacobians():
    a = torch.tensor([1.0, 2.0, -1.0], dtype=F64)
    d, w = aggregate(CAGrad(), torch.stack([a, -a]))  # Pareto stationary: g0 = 0, nothing survives
    assert float(d.norm()) < 1e-12 and torch.isfinite(w).all()
    J = torch.stack([a, -a, torch.tensor([1.0, 0.0, 1.0], dtype=F64)])  # 0 in the hull, g0 != 0: g_w = 0
    d, w = aggregate(CAGrad(), J)
    assert torch.equal(w, torch.zeros(3, dtype=F64))  # TorchJD's guard: |g_w| < norm_eps gives zeros
    for J in (torch.stack([a, 3 * a, 0.5 * a]), torch.stack([a, torch.zeros(3, dtype=F64), 2 * a]),
              torch.zeros(3, 4, dtype=F64), a[None]):
        d, w = aggregate(CAGrad(), J)
        assert torch.isfinite(d).all() and torch.isfinite(w).all()
    J = jacobian(4, 6, 4, 1, True)
    torch.testing.assert_close(aggregate(CAGrad(), 1e-6 * J)[1], aggregate(CAGrad(), J)[1])  # scale-free
    torch.testing.assert_close(aggregate(CAGrad(), 1e6 * J)[1], aggregate(CAGrad(), J)[1])


@native
def test_backward_on_a_model_equals_aggregate_of_its_jacobian():
    p = Problem(T=3, seed=11)
    J = p.jacobian()
    p.zero_grad()
    w = CAGrad().backward(p.losses(), p.model)
    d, w_ref = aggregate(CAGrad(), J)
    torch.testing.assert_close(w, w_ref.to(w.dtype))
    torch.testing.assert_close(p.shared_grad(), d.to(p.shared_grad().dtype))


def test_errors():
    with pytest.raises(ValueError, match="CAGrad: c must be >= 0"):
        CAGrad(-0.1)
    with pytest.raises(ValueError, match=r"CAGrad: rescale must be one of \(0, 1, 2\)"):
        CAGrad(rescale=3)
    with pytest.raises(ValueError, match="cagrad_weights: c must be finite and >= 0"):
        cagrad_weights(torch.eye(2, dtype=F64), float("nan"))
    with pytest.raises(ValueError, match=r"gram\[0\] holds NaN or Inf"):
        cagrad_weights(torch.full((2, 2), float("nan"), dtype=F64), 0.5, backend="reference")


@native
def test_opcheck_and_vmap():
    G = torch.stack([jacobian(4, 6, 3, s, True) @ jacobian(4, 6, 3, s, True).T for s in range(3)])
    torch.library.opcheck(torch.ops.mtlk.cagrad_weights.default, (G, 0.5))
    torch.testing.assert_close(torch.func.vmap(lambda g: cagrad_weights(g, 0.5))(G), cagrad_weights(G, 0.5))
