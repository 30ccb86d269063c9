"""RLW, IMTL-G and Aligned-MTL: the spec's properties (ALGORITHMS.md 2.4, 3.6, 3.8), the closed forms,
degenerate J, state and seeds."""
from __future__ import annotations

import copy

import pytest
import torch

from mtlkernels.balance import IMTLG, RLW, aggregate

from .conftest import Problem

F64 = torch.float64


# ---------------------------------------------------------------------------------------- RLW

def test_rlw_weights_are_a_softmax_of_fresh_normals_each_step():
    rlw = RLW(seed=1)
    losses = torch.ones(4, dtype=F64)
    draws = torch.stack([rlw.loss_weights(losses) for _ in range(4000)])
    torch.testing.assert_close(draws.sum(1), torch.ones(4000, dtype=F64))
    assert (draws > 0).all() and not torch.equal(draws[0], draws[1])
    z = torch.log(draws) - torch.log(draws).mean(1, keepdim=True)  # the normals up to a per-step shift
    # centred normals of variance 1 - 1/T: every task alike
    assert z.mean(0).abs().max() < 0.05
    torch.testing.assert_close(z.var(0), torch.full((4,), 0.75, dtype=F64), atol=0.05, rtol=0)


def test_rlw_seeds_and_resume():
    losses = torch.ones(3)
    torch.manual_seed(7)
    a, b = RLW(), RLW()
    torch.manual_seed(7)
    c = RLW()
    wa, wb, wc = (m.loss_weights(losses) for m in (a, b, c))
    assert not torch.equal(wa, wb) and torch.equal(wa, wc)
    clone = RLW(seed=0)
    clone.load_state_dict(a.state_dict())
    assert torch.equal(clone.loss_weights(losses), a.loss_weights(losses))


def test_rlw_backward_weights_the_losses():
    p = Problem(T=3, seed=2)
    method = RLW(seed=4)
    expected = copy.deepcopy(method).loss_weights(torch.ones(3, dtype=F64))
    p.zero_grad()
    w = method.backward(p.losses(), p.model)
    torch.testing.assert_close(w, expected)
    grads = torch.autograd.grad((expected * p.losses()).sum(), list(p.model.parameters()))
    for q, g in zip(p.model.parameters(), grads):
        torch.testing.assert_close(q.grad, g)


# ------------------------------------------------------------------------------------- IMTL-G

def imtl_closed_form(J: torch.Tensor) -> torch.Tensor:
    """The paper's form: D = [g1 - gt], U = [u1 - ut], alpha_{2..T} = g1 U^T (D U^T)^{-1}."""
    u = J / J.norm(dim=1, keepdim=True)
    D, U = J[:1] - J[1:], u[:1] - u[1:]
    rest = J[0] @ U.t() @ torch.linalg.inv(D @ U.t())
    return torch.cat([1 - rest.sum(0, keepdim=True), rest])


@pytest.mark.parametrize("T,P", [(2, 5), (3, 10), (6, 40)])
def test_imtl_projections_on_the_unit_gradients_are_equal(T, P):
    J = torch.randn(T, P, dtype=F64)
    d, w = aggregate(IMTLG(), J)
    proj = (J / J.norm(dim=1, keepdim=True)) @ d
    torch.testing.assert_close(proj, proj[:1].expand(T), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(w.sum(), torch.tensor(1.0, dtype=F64))
    torch.testing.assert_close(w, imtl_closed_form(J), rtol=1e-9, atol=1e-12)


def test_imtl_orthogonal_gradients_get_weights_inverse_to_their_norms():
    J = torch.diag(torch.tensor([1.0, 2.0, 4.0], dtype=F64))
    _, w = aggregate(IMTLG(), J)
    inv = torch.tensor([1.0, 0.5, 0.25], dtype=F64)
    torch.testing.assert_close(w, inv / inv.sum())


@pytest.mark.parametrize("kind", ["collinear", "opposite", "duplicate", "zero_row", "one_task"])
def test_imtl_degenerate_jacobians_stay_finite(kind):
    g = torch.randn(7, dtype=F64)
    J = {"collinear": torch.stack([g, 3 * g, 0.5 * g]), "opposite": torch.stack([g, -g]),
         "duplicate": torch.stack([g, g, torch.randn(7, dtype=F64)]),
         "zero_row": torch.stack([g, torch.zeros(7, dtype=F64), torch.randn(7, dtype=F64)]),
         "one_task": g[None]}[kind]
    d, w = aggregate(IMTLG(), J)
    assert torch.isfinite(w).all() and torch.isfinite(d).all()
    if kind == "one_task":
        assert w.tolist() == [1.0]


def test_imtl_does_not_depend_on_the_gradient_scale():
    J = torch.randn(4, 12, dtype=F64)
    _, w = aggregate(IMTLG(), J)
    for s in (1e-6, 1e6):
        torch.testing.assert_close(aggregate(IMTLG(), s * J)[1], w, rtol=1e-8, atol=1e-10)


def test_imtl_backward_writes_j_transpose_alpha():
    p = Problem(T=3, seed=5)
    J = p.jacobian()
    p.zero_grad()
    w = IMTLG().backward(p.losses(), p.model)
    torch.testing.assert_close(p.shared_grad(), J.t() @ w, rtol=1e-9, atol=1e-12)
    losses, rep = p.losses(return_representation=True)
    w_rep = IMTLG().backward(losses, p.model, representation=rep)
    assert torch.isfinite(w_rep).all() and abs(float(w_rep.sum()) - 1) < 1e-9


# --------------------------------------------------------------------------------- Aligned-MTL

def test_aligned_mtl_orthogonal_gradients_and_unit_singular_values():
    from mtlkernels.balance import AlignedMTL

    J = torch.diag(torch.tensor([1.0, 2.0, 5.0], dtype=F64))
    d, w = aggregate(AlignedMTL(), J)
    torch.testing.assert_close(w, torch.tensor([1.0, 0.5, 0.2], dtype=F64))
    torch.testing.assert_close(d, torch.ones(3, dtype=F64))  # n_min sum_i u_i
    # the aligned system J^T B has all its non-zero singular values equal to sqrt(lambda_ref)
    J = torch.randn(4, 9, dtype=F64)
    method = AlignedMTL()
    G = J @ J.t()
    lam, V = torch.linalg.eigh(G)
    B = lam.min().sqrt() * (V * lam.rsqrt()) @ V.t()
    torch.testing.assert_close(method.gram_weights(G, None), B @ torch.ones(4, dtype=F64))
    s = torch.linalg.svdvals(J.t() @ B)
    torch.testing.assert_close(s, s[:1].expand(4), rtol=1e-9, atol=0)


@pytest.mark.parametrize("mode", ["min", "median", "rmse"])
def test_aligned_mtl_is_scale_free_and_finite_on_degenerate_j(mode):
    from mtlkernels.balance import AlignedMTL

    J = torch.randn(3, 8, dtype=F64)
    _, w = aggregate(AlignedMTL(mode), J)
    for s in (1e-6, 1e6):
        torch.testing.assert_close(aggregate(AlignedMTL(mode), s * J)[1], w, rtol=1e-8, atol=1e-10)
    g = torch.randn(8, dtype=F64)
    for J in (torch.stack([g, 2 * g, -g]), torch.zeros(3, 8, dtype=F64), g[None]):
        d, w = aggregate(AlignedMTL(mode), J)
        assert torch.isfinite(w).all() and torch.isfinite(d).all()
    assert aggregate(AlignedMTL(mode), torch.zeros(2, 5, dtype=F64))[1].tolist() == [1.0, 1.0]


def test_aligned_mtl_rejects_an_unknown_scale_mode():
    from mtlkernels.balance import AlignedMTL

    with pytest.raises(ValueError, match="scale_mode must be one of"):
        AlignedMTL("max")
