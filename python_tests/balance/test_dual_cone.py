"""The dual-cone solver and UPGrad / DualProj: exactness against an enumeration of active sets,
the KKT conditions, the spec's properties (ALGORITHMS.md 3.9), TorchJD's documented values,
degenerate J, scale invariance, backends, errors, the CLI."""
from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mtlkernels import _extension
from mtlkernels.balance import DualProj, UPGrad, aggregate
from mtlkernels.balance.dual_cone import regularized_gram
from mtlkernels.build import METHODS
from mtlkernels.ops.solvers import dual_cone_weights

from .conftest import Problem

F64 = torch.float64
BACKENDS = [pytest.param("native", marks=pytest.mark.skipif(not _extension.native_available(), reason="no _C")),
            "reference"]


def enumerate_solution(G: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """min v^T G v s.t. v >= u by trying every free set F (v_F = solve, v_rest = u) and keeping
    the feasible KKT point (G positive definite: exactly one)."""
    T = G.shape[0]
    best, best_cost = None, float("inf")
    for r in range(T + 1):
        for F in itertools.combinations(range(T), r):
            v = u.clone()
            if F:
                F = list(F)
                B = [i for i in range(T) if i not in F]
                v[F] = torch.linalg.solve(G[F][:, F], -G[F][:, B] @ u[B]) if B else torch.zeros(len(F), dtype=F64)
            if (v < u - 1e-12).any():
                continue
            cost = float(v @ G @ v)
            if cost < best_cost:
                best, best_cost = v, cost
    return best


def random_gram(T: int, rank: int, seed: int, conflict: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    J = torch.randn(T, rank, generator=g, dtype=F64)
    if conflict:
        J[: T // 2] *= -1
    return regularized_gram(J @ J.T, 1e-4, 1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("T,rank", [(2, 2), (3, 2), (5, 5), (6, 2), (8, 3), (8, 8)])
@pytest.mark.parametrize("conflict", [False, True])
def test_exact_against_an_enumeration_of_active_sets(backend, T, rank, conflict):
    for seed in range(4):
        G = random_gram(T, rank, seed, conflict)
        U = torch.cat([torch.diag(torch.full((T,), 1.0 / T, dtype=F64)), torch.full((1, T), 1.0 / T, dtype=F64),
                       torch.randn(2, T, generator=torch.Generator().manual_seed(seed), dtype=F64)])
        V = dual_cone_weights(G, U, backend=backend)
        for u, v in zip(U, V):
            exact = enumerate_solution(G, u)
            assert float(v @ G @ v) <= float(exact @ G @ exact) * (1 + 1e-9) + 1e-15
            torch.testing.assert_close(v, exact, rtol=1e-8, atol=1e-10)


@settings(max_examples=40, deadline=None)
@given(T=st.integers(1, 24), rank=st.integers(1, 24), seed=st.integers(0, 10_000), conflict=st.booleans())
def test_kkt_conditions_and_backends_agree(T, rank, seed, conflict):
    G = random_gram(T, min(rank, T), seed, conflict)
    U = torch.diag(torch.full((T,), 1.0 / T, dtype=F64))
    V = dual_cone_weights(G, U)
    scale = float(G.diagonal().max())
    for u, v in zip(U, V):
        grad = G @ v
        assert (v >= u - 1e-15).all()                                  # feasible
        assert (grad >= -1e-11 * scale).all()                          # multipliers >= 0
        assert float(((v - u) * grad).abs().max()) <= 1e-11 * scale    # complementary slackness
    torch.testing.assert_close(V, dual_cone_weights(G, U, backend="reference"), rtol=1e-9, atol=1e-12)


def test_torchjd_documented_values():
    """TorchJD's documentation examples for J = [[-4, 1, 1], [6, 1, 1]]: UPGrad gives
    [0.2929, 1.9004, 1.9004], DualProj [0.5563, 1.1109, 1.1109]."""
    J = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=F64)
    up, _ = aggregate(UPGrad(), J)
    dp, _ = aggregate(DualProj(), J)
    torch.testing.assert_close(up, torch.tensor([0.2929, 1.9004, 1.9004], dtype=F64), atol=1e-4, rtol=0)
    torch.testing.assert_close(dp, torch.tensor([0.5563, 1.1109, 1.1109], dtype=F64), atol=1e-4, rtol=0)


@pytest.mark.parametrize("make", [UPGrad, DualProj])
def test_no_conflict_gives_the_mean_and_the_result_conflicts_with_no_task(make):
    g = torch.Generator().manual_seed(3)
    J = torch.rand(4, 30, generator=g, dtype=F64)  # non-negative rows: no pair conflicts
    d, w = aggregate(make(), J)
    torch.testing.assert_close(d, J.mean(0))
    torch.testing.assert_close(w, torch.full((4,), 0.25, dtype=F64))
    J = torch.randn(5, 3, generator=g, dtype=F64)  # conflicting
    d, w = aggregate(make(), J)
    assert (J @ d >= -1e-3 * J.norm() * d.norm()).all()  # J d >= 0 up to the reg_eps shift
    assert (w >= 0.2 - 1e-12).all()  # v >= p: every task keeps at least its preference


@pytest.mark.parametrize("make", [UPGrad, DualProj])
def test_degenerate_jacobians(make):
    a = torch.tensor([1.0, 2.0, -1.0], dtype=F64)
    cases = {"opposite": torch.stack([a, -a]), "collinear": torch.stack([a, 3 * a, 0.5 * a]),
             "zero row": torch.stack([a, torch.zeros(3, dtype=F64), -a]), "all zero": torch.zeros(3, 4, dtype=F64),
             "single": a[None], "tiny": 1e-6 * torch.randn(3, 5, dtype=F64), "huge": 1e6 * torch.randn(3, 5, dtype=F64)}
    for name, J in cases.items():
        d, w = aggregate(make(), J)
        assert torch.isfinite(d).all() and torch.isfinite(w).all(), name
    d, _ = aggregate(make(), torch.stack([a, -a]))
    assert float(d.norm()) < 1e-3 * float(a.norm())  # opposite: (almost) nothing survives
    J = torch.randn(4, 6, generator=torch.Generator().manual_seed(5), dtype=F64)
    torch.testing.assert_close(aggregate(make(), 1e-6 * J)[1], aggregate(make(), J)[1])  # scale-free weights


def test_preference_vector_and_settings_errors():
    J = torch.rand(3, 5, generator=torch.Generator().manual_seed(1), dtype=F64)
    d, w = aggregate(UPGrad(pref_vector=[0.5, 0.3, 0.2]), J)
    torch.testing.assert_close(w, torch.tensor([0.5, 0.3, 0.2], dtype=F64))
    with pytest.raises(ValueError, match="pref_vector has 2 entries for 3 tasks"):
        aggregate(DualProj(pref_vector=[0.5, 0.5]), J)
    with pytest.raises(ValueError, match="UPGrad: pref_vector must be finite and >= 0"):
        UPGrad(pref_vector=[1.0, -1.0])
    with pytest.raises(ValueError, match="DualProj: need norm_eps >= 0 and reg_eps > 0"):
        DualProj(reg_eps=0.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_solver_errors_name_the_argument(backend):
    G = torch.eye(3, dtype=F64)
    with pytest.raises(ValueError, match=r"dual_cone_weights: bounds must be \[K, 3\]"):
        dual_cone_weights(G, torch.zeros(3, dtype=F64), backend=backend)
    with pytest.raises(TypeError, match="bounds must be float64"):
        dual_cone_weights(G, torch.zeros(1, 3), backend=backend)
    bad = torch.zeros(2, 3, dtype=F64)
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"dual_cone_weights: bounds\[0, 1\] holds NaN or Inf"):
        dual_cone_weights(G, bad, backend=backend)
    with pytest.raises(ValueError, match=r"gram\[0\] holds NaN or Inf"):
        dual_cone_weights(G * float("inf"), torch.zeros(1, 3, dtype=F64), backend=backend)
    assert dual_cone_weights(torch.zeros(0, 2, 2, dtype=F64), torch.zeros(0, 1, 2, dtype=F64), backend=backend).shape \
        == (0, 1, 2)


@pytest.mark.skipif(not _extension.native_available(), reason="no _C")
def test_opcheck_vmap_and_compile():
    G = torch.stack([random_gram(4, 2, s, True) for s in range(3)])
    U = torch.diag(torch.full((4,), 0.25, dtype=F64)).expand(3, 4, 4).contiguous()
    torch.library.opcheck(torch.ops.mtlk.dual_cone_weights.default, (G, U))
    batched = torch.func.vmap(lambda g: dual_cone_weights(g, U[0]))(G)
    torch.testing.assert_close(batched, dual_cone_weights(G, U))
    torch._dynamo.reset()
    method = UPGrad()
    compiled = torch.compile(lambda g: method.gram_weights(g, torch.zeros(4, dtype=F64)), fullgraph=True)
    torch.testing.assert_close(compiled(G[0]), method.gram_weights(G[0], torch.zeros(4, dtype=F64)))


@pytest.mark.parametrize("make", [UPGrad, DualProj])
def test_backward_on_a_model_equals_aggregate_of_its_jacobian(make):
    p = Problem(T=3, seed=9)
    J = p.jacobian()
    p.zero_grad()
    w = make().backward(p.losses(), p.model)
    d, w_ref = aggregate(make(), J)
    torch.testing.assert_close(w, w_ref.to(w.dtype))
    torch.testing.assert_close(p.shared_grad(), d.to(p.shared_grad().dtype))


def test_the_cli_offers_both():
    assert "upgrad" in METHODS and "dualproj" in METHODS
