"""T x T solvers (PCGrad, GradVac, MGDA, PE-LTR): native vs reference parity, the properties of
specs/ALGORITHMS.md 3.1-3.4, the Gram forms against the methods run on the gradients
themselves, and the op machinery (opcheck, fake tensors, compile, vmap, no autograd graph).
Bad input is in test_solvers_errors.py."""
from __future__ import annotations

import itertools

import pytest
import torch

from mtlkernels import _extension
from mtlkernels.ops import solvers as S
from mtlkernels.reference import solvers as R

needs_native = pytest.mark.skipif(not _extension.native_available(), reason=str(_extension.LOAD_ERROR))
BACKENDS = [pytest.param("native", marks=needs_native), "reference"]
KINDS = ["random", "rank_deficient", "identical", "opposite", "zero", "one_zero"]
F64 = torch.float64


def make_J(N: int, T: int, kind: str, P: int = 12, seed: int = 0) -> torch.Tensor:
    """Task gradients ``[N, T, P]`` of one kind of problem."""
    g = torch.Generator().manual_seed(seed)
    if kind == "rank_deficient":
        J = torch.randn(N, T, max(1, T // 2), generator=g, dtype=F64) @ torch.randn(
            max(1, T // 2), P, generator=g, dtype=F64)
    else:
        J = torch.randn(N, T, P, generator=g, dtype=F64) * torch.rand(N, T, 1, generator=g, dtype=F64).add(0.5)
    if kind == "identical" and T > 1:
        J[:, T - 1] = J[:, 0]
    elif kind == "opposite" and T > 1:
        J[:, T - 1] = -J[:, 0]
    elif kind == "zero":
        J.zero_()
    elif kind == "one_zero":
        J[:, T // 2] = 0.0
    return J


def gram_of(J: torch.Tensor) -> torch.Tensor:
    G = J @ J.transpose(-1, -2)
    return (G + G.transpose(-1, -2)) / 2


def orders(N: int, T: int, seed: int = 1) -> torch.Tensor:
    return S.random_orders(N, T, generator=torch.Generator().manual_seed(seed))


def targets(N: int, T: int, seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(N, T, T, generator=g, dtype=F64) * 1.6 - 0.8


def bounds(N: int, T: int, total: float = 0.5, seed: int = 3) -> torch.Tensor:
    c = torch.rand(N, T, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return c / c.sum(dim=1, keepdim=True) * total


def max_diag(G: torch.Tensor) -> torch.Tensor:
    return G.diagonal(dim1=-2, dim2=-1).amax(dim=-1).clamp_min(1e-300)


def assert_simplex(w: torch.Tensor, atol: float = 1e-12) -> None:
    assert torch.isfinite(w).all()
    assert (w >= 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones_like(w[..., 0]), atol=atol, rtol=0)


# ------------------------------------------------------------------------------------ parity

@needs_native
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("N", [1, 7])
@pytest.mark.parametrize("T", [1, 2, 3, 5, 8, 16])
def test_native_matches_reference(T, N, kind):
    J = make_J(N, T, kind)
    G = gram_of(J)
    o, t, c = orders(N, T), targets(N, T), bounds(N, T)
    tol = dict(rtol=1e-9, atol=1e-9)
    # Collinear tasks (every kind but "random") make some steps ill-posed: a projected
    # gradient that cancels to zero has a cosine of rounding noise over the 1e-8 eps, and the
    # min-norm weights are not unique (only d = J^T w is). Those compare looser, or through d.
    generic = kind == "random"
    loose = tol if generic else dict(rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(S.pcgrad_weights(G, o, backend="native"),
                               S.pcgrad_weights(G, o, backend="reference"), **tol)
    w, nt = S.gradvac_weights(G, o, t, 0.3, backend="native")
    wr, ntr = S.gradvac_weights(G, o, t, 0.3, backend="reference")
    torch.testing.assert_close(w, wr, **loose)
    torch.testing.assert_close(nt, ntr, **(tol if generic else dict(rtol=0, atol=1e-5)))
    w, wr = S.mgda_weights(G, backend="native"), S.mgda_weights(G, backend="reference")
    if not generic:
        w, wr = (w.unsqueeze(1) @ J).squeeze(1), (wr.unsqueeze(1) @ J).squeeze(1)
    torch.testing.assert_close(w, wr, **tol)
    torch.testing.assert_close(S.peltr_weights(G, c, backend="native"),
                               S.peltr_weights(G, c, backend="reference"), **tol)


@needs_native
def test_single_problem_shapes_and_non_contiguous_inputs():
    G = gram_of(make_J(4, 5, "random"))
    o, t, c = orders(4, 5), targets(4, 5), bounds(4, 5)
    assert S.pcgrad_weights(G[1], o[1]).shape == (5,)
    w, nt = S.gradvac_weights(G[1], o[1], t[1], 0.5)
    assert w.shape == (5,) and nt.shape == (5, 5)
    assert S.mgda_weights(G[1]).shape == (5,) and S.peltr_weights(G[1], c[1]).shape == (5,)
    torch.testing.assert_close(S.mgda_weights(G[1]), S.mgda_weights(G)[1])
    Gt = G.transpose(1, 2).contiguous().transpose(1, 2)  # same values, transposed strides
    ot = o.transpose(0, 1).contiguous().transpose(0, 1)
    torch.testing.assert_close(S.pcgrad_weights(Gt, ot), S.pcgrad_weights(G, o))
    torch.testing.assert_close(S.peltr_weights(G, c.t().contiguous().t()), S.peltr_weights(G, c))
    empty = torch.zeros(0, 3, 3, dtype=F64)
    assert S.mgda_weights(empty).shape == (0, 3)


# -------------------------------------------------------------------------------------- MGDA

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("T", [1, 2, 3, 5, 8, 16])
def test_mgda_weights_are_in_the_simplex(backend, kind, T):
    G = gram_of(make_J(5, T, kind))
    assert_simplex(S.mgda_weights(G, backend=backend))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["random", "rank_deficient", "identical", "opposite", "one_zero"])
@pytest.mark.parametrize("T", [3, 5, 8])
def test_mgda_optimality_gap_is_bounded_by_tol(backend, kind, T):
    """When the loop stops on tol, the Frank-Wolfe gap w^T G w - min_r (G w)_r is below
    tol * max_r |g_r - d|^2 (the gap bound of the last line search), whatever the face."""
    tol = 1e-5
    G = gram_of(make_J(7, T, kind))
    w = S.mgda_weights(G, max_iter=10**7, tol=tol, backend=backend)
    Gw = (G @ w.unsqueeze(-1)).squeeze(-1)
    wGw = (w * Gw).sum(-1)
    dist = (G.diagonal(dim1=1, dim2=2) - 2 * Gw + wGw.unsqueeze(-1)).amax(-1)  # max_r |g_r - d|^2
    assert ((wGw - Gw.amin(-1)) <= 2 * tol * dist + 1e-12 * max_diag(G)).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("T", [2, 3, 5, 8])
def test_mgda_optimality_conditions(backend, T):
    """(G w)_i >= w^T G w for all i, with equality on the support (KKT of the min-norm QP).
    Exact for T = 2; for T > 2 on problems whose optimum is interior, where Frank-Wolfe
    converges linearly (tol = 0 and enough iterations)."""
    P = 2 if T == 2 else 1000
    G = gram_of(make_J(7, T, "random", P=P))
    w = S.mgda_weights(G, max_iter=20000, tol=0.0, backend=backend)
    Gw = (G @ w.unsqueeze(-1)).squeeze(-1)
    wGw = (w * Gw).sum(-1, keepdim=True)
    scale = max_diag(G).unsqueeze(-1)
    assert (Gw >= wGw - 1e-9 * scale).all()
    support = w > 1e-9
    assert ((Gw - wGw).abs() <= 1e-9 * scale)[support].all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("T", [2, 3, 4, 7, 16])
def test_mgda_orthogonal_equal_norms_is_uniform(backend, T):
    G = 2.5 * torch.eye(T, dtype=F64)
    torch.testing.assert_close(S.mgda_weights(G, backend=backend), torch.full((T,), 1.0 / T, dtype=F64),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mgda_edge_cases(backend):
    g1 = torch.randn(9, dtype=F64)
    g2 = torch.randn(9, dtype=F64)
    # conflicting, equal norms: (1/2, 1/2) and d = 0
    w = S.mgda_weights(gram_of(torch.stack([g1, -g1])), backend=backend)
    torch.testing.assert_close(w, torch.tensor([0.5, 0.5], dtype=F64), rtol=0, atol=1e-12)
    # scale domination: g1 = 2 g2 puts all weight on g2, exactly (no 0.001 / 0.999 clamp)
    assert S.mgda_weights(gram_of(torch.stack([2 * g2, g2])), backend=backend).tolist() == [0.0, 1.0]
    assert S.mgda_weights(gram_of(torch.stack([g2, 2 * g2])), backend=backend).tolist() == [1.0, 0.0]
    # T = 1
    assert S.mgda_weights(gram_of(g1[None]), backend=backend).tolist() == [1.0]
    # all-zero gradients: a valid simplex point; a zero gradient among others takes all weight
    assert S.mgda_weights(torch.zeros(4, 4, dtype=F64), backend=backend).tolist() == [1.0, 0.0, 0.0, 0.0]
    G = gram_of(make_J(6, 5, "one_zero"))
    w = S.mgda_weights(G, backend=backend)
    assert_simplex(w)
    assert ((w.unsqueeze(1) @ G @ w.unsqueeze(-1)).flatten() <= 1e-12 * max_diag(G)).all()
    # max_iter = 0 returns the best pair
    w0 = S.mgda_weights(gram_of(make_J(6, 5, "random")), max_iter=0, backend=backend)
    assert ((w0 > 0).sum(-1) <= 2).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_mgda_two_task_closed_form(backend):
    G = gram_of(make_J(64, 2, "random", P=3))
    a, b, c = G[:, 0, 0], G[:, 0, 1], G[:, 1, 1]
    gamma = torch.where(b >= a, 1.0, torch.where(b >= c, 0.0, (c - b) / (a + c - 2 * b)))
    w = S.mgda_weights(G, backend=backend)
    torch.testing.assert_close(w, torch.stack([gamma, 1 - gamma], -1), rtol=0, atol=1e-14)
    assert ((gamma == 0) | (gamma == 1)).any() and ((gamma > 0) & (gamma < 1)).any()


# ------------------------------------------------------------------------------------ PCGrad

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("T", [2, 3, 5, 8])
def test_pcgrad_gram_form_matches_the_loop_on_gradients(backend, kind, T):
    J = make_J(4, T, kind, P=20)
    o = orders(4, T)
    w = S.pcgrad_weights(gram_of(J), o, backend=backend)
    for n in range(4):
        d = R.pcgrad_full(J[n], o[n])
        torch.testing.assert_close(J[n].t() @ w[n], d, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pcgrad_without_conflict_is_the_sum(backend):
    J = torch.rand(3, 6, 10, dtype=F64)  # non-negative: every pair has <g_i, g_j> >= 0
    assert S.pcgrad_weights(gram_of(J), orders(3, 6), backend=backend).eq(1.0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_pcgrad_two_task_closed_form(backend):
    """gpc_1 = g1 - (G12 / G22) g2 and gpc_2 = g2 - (G12 / G11) g1 iff G12 < 0."""
    G = gram_of(make_J(64, 2, "random", P=3))
    g11, g12, g22 = G[:, 0, 0], G[:, 0, 1], G[:, 1, 1]
    conflict = g12 < 0
    want = torch.stack([torch.where(conflict, 1 - g12 / g11, 1.0), torch.where(conflict, 1 - g12 / g22, 1.0)], -1)
    w = S.pcgrad_weights(G, orders(64, 2), backend=backend)
    torch.testing.assert_close(w, want, rtol=1e-14, atol=0)
    assert conflict.any() and (~conflict).any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_pcgrad_zero_gradient_is_never_projected_onto(backend):
    G = gram_of(make_J(5, 4, "one_zero"))
    w = S.pcgrad_weights(G, orders(5, 4), backend=backend)
    assert torch.isfinite(w).all()
    assert w[:, 2].eq(1.0).all()


# ----------------------------------------------------------------------------------- GradVac

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("T", [2, 3, 5, 8])
def test_gradvac_with_zero_target_and_rate_is_pcgrad(backend, kind, T):
    G = gram_of(make_J(4, T, kind))
    o = orders(4, T)
    zero = torch.zeros(4, T, T, dtype=F64)
    w, new_target = S.gradvac_weights(G, o, zero, 0.0, backend=backend)
    torch.testing.assert_close(w, S.pcgrad_weights(G, o, backend=backend), rtol=1e-6, atol=1e-6)
    assert new_target.eq(0.0).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["random", "rank_deficient", "identical", "opposite", "one_zero"])
@pytest.mark.parametrize("T", [2, 3, 5])
@pytest.mark.parametrize("every_pair", [True, False])
def test_gradvac_gram_form_matches_the_loop_on_gradients(backend, kind, T, every_pair):
    J = make_J(3, T, kind, P=20)
    o, t = orders(3, T), targets(3, T)
    w, new_t = S.gradvac_weights(gram_of(J), o, t, 0.5, every_pair=every_pair, backend=backend)
    for n in range(3):
        d, tn = R.gradvac_full(J[n], o[n], t[n], 0.5, every_pair)
        # a projected gradient cancelled to zero has a noise cosine (see the parity test)
        generic = kind == "random"
        torch.testing.assert_close(J[n].t() @ w[n], d, rtol=1e-9, atol=1e-9 if generic else 1e-7)
        torch.testing.assert_close(new_t[n], tn, rtol=1e-9, atol=1e-9 if generic else 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradvac_adjustment_reaches_the_target_cosine(backend):
    """T = 2, task 2's target -1 never fires, so w - e_2 are task 1's final coefficients and
    cos(gpc_1, g2) must equal task 1's target."""
    J = make_J(16, 2, "random", P=6)
    target = torch.zeros(16, 2, 2, dtype=F64)
    target[:, 0, 1] = torch.linspace(-0.5, 0.9, 16, dtype=F64)
    target[:, 1, 0] = -1.0
    w, _ = S.gradvac_weights(gram_of(J), orders(16, 2), target, 0.5, backend=backend)
    gpc1 = ((w - torch.tensor([0.0, 1.0], dtype=F64)).unsqueeze(1) @ J).squeeze(1)
    cos = torch.nn.functional.cosine_similarity(gpc1, J[:, 1], dim=-1)
    before = torch.nn.functional.cosine_similarity(J[:, 0], J[:, 1], dim=-1)
    fired = before < target[:, 0, 1]
    assert fired.any() and (~fired).any()
    torch.testing.assert_close(cos[fired], target[fired, 0, 1], rtol=0, atol=1e-7)
    assert w[~fired, 0].eq(1.0).all() and w[~fired, 1].eq(1.0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradvac_ema_of_the_target(backend):
    """T = 2: each task visits one pair with c = e_i, so phi = cos(g_i, g_j) and the new target
    is (1 - beta) target + beta cos; the diagonal is untouched; the input is not modified."""
    J = make_J(8, 2, "random", P=5)
    G = gram_of(J)
    target = targets(8, 2)
    keep = target.clone()
    beta = 0.25
    _, new_t = S.gradvac_weights(G, orders(8, 2), target, beta, every_pair=True, backend=backend)
    cos = torch.nn.functional.cosine_similarity(J[:, 0], J[:, 1], dim=-1)
    want = (1 - beta) * target + beta * cos.view(-1, 1, 1)
    off = ~torch.eye(2, dtype=torch.bool).expand(8, 2, 2)
    torch.testing.assert_close(new_t[off], want[off], rtol=0, atol=1e-7)
    assert torch.equal(new_t[~off], keep[~off]) and torch.equal(target, keep)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradvac_libmtl_rule_moves_only_the_adjusted_targets(backend):
    """T = 2 with c = e_i: the pair (i, j) fires iff cos(g_i, g_j) < target_ij; LibMTL's rule
    moves exactly those targets, the paper's every visited one."""
    J = make_J(8, 2, "random", P=5)
    G = gram_of(J)
    target = targets(8, 2)
    beta = 0.25
    _, libmtl = S.gradvac_weights(G, orders(8, 2), target, beta, every_pair=False, backend=backend)
    _, paper = S.gradvac_weights(G, orders(8, 2), target, beta, every_pair=True, backend=backend)
    cos = torch.nn.functional.cosine_similarity(J[:, 0], J[:, 1], dim=-1).view(-1, 1, 1).expand(8, 2, 2)
    off = ~torch.eye(2, dtype=torch.bool).expand(8, 2, 2)
    fired = off & (cos < target)
    assert fired.any() and (off & ~fired).any()
    torch.testing.assert_close(libmtl[fired], paper[fired], rtol=0, atol=0)
    assert torch.equal(libmtl[~fired], target[~fired])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("every_pair", [True, False])
def test_gradvac_does_not_depend_on_the_gradient_scale(backend, every_pair):
    """The epsilons are relative: J and 1e-6 J (G and 1e-12 G) give the same weights and targets."""
    J = make_J(6, 4, "random", P=9)
    o, t = orders(6, 4), targets(6, 4)
    w, nt = S.gradvac_weights(gram_of(J), o, t, 0.5, every_pair=every_pair, backend=backend)
    w_small, nt_small = S.gradvac_weights(gram_of(1e-6 * J), o, t, 0.5, every_pair=every_pair, backend=backend)
    torch.testing.assert_close(w_small, w, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(nt_small, nt, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradvac_targets_stay_cosines_on_collinear_gradients(backend):
    """Rows a, -2a, 3a: a projection can cancel a gradient to rounding noise, whose raw cosine
    is far outside [-1, 1]; the stored targets stay in [-1, 1] and the next steps run."""
    a = torch.tensor([1.0, 2.0], dtype=F64)
    G = gram_of(torch.stack([a, -2 * a, 3 * a]).unsqueeze(0))
    o = torch.tensor([[[0, 1, 2], [0, 1, 2], [1, 0, 2]]])
    t = torch.zeros(1, 3, 3, dtype=F64)
    for _ in range(3):
        w, t = S.gradvac_weights(G, o, t, 0.5, backend=backend)
        assert t.abs().max() <= 1.0 and torch.isfinite(w).all()


# ------------------------------------------------------------------------------------ PE-LTR

@pytest.mark.parametrize("backend", BACKENDS)
def test_peltr_two_tasks_without_bounds_is_mgda(backend):
    G = gram_of(make_J(64, 2, "random", P=3))
    zero = torch.zeros(64, 2, dtype=F64)
    torch.testing.assert_close(S.peltr_weights(G, zero, backend=backend), S.mgda_weights(G, backend=backend),
                               rtol=0, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_peltr_two_tasks_with_bounds_clips_the_affine_minimiser(backend):
    """For T = 2 relax-then-project is exact: w_1 = clip(gamma*, c_1, 1 - c_2)."""
    G = gram_of(make_J(64, 2, "random", P=3))
    c = bounds(64, 2, total=0.6)
    a, b, cc = G[:, 0, 0], G[:, 0, 1], G[:, 1, 1]
    gamma = ((cc - b) / (a + cc - 2 * b)).clamp(min=c[:, 0], max=1 - c[:, 1])
    w = S.peltr_weights(G, c, backend=backend)
    torch.testing.assert_close(w, torch.stack([gamma, 1 - gamma], -1), rtol=0, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("T", [1, 2, 3, 5, 8, 16])
def test_peltr_meets_the_bounds(backend, kind, T):
    G = gram_of(make_J(5, T, kind))
    c = bounds(5, T, total=0.7)
    w = S.peltr_weights(G, c, backend=backend)
    assert_simplex(w)
    assert (w >= c - 1e-15).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_peltr_edge_cases(backend):
    G = gram_of(make_J(3, 4, "random"))
    full = bounds(3, 4, total=1.0)
    torch.testing.assert_close(S.peltr_weights(G, full, backend=backend), full, rtol=0, atol=0)
    one = S.peltr_weights(gram_of(make_J(1, 1, "random")), torch.tensor([[0.4]], dtype=F64), backend=backend)
    assert one.tolist() == [[1.0]]
    eye = torch.eye(5, dtype=F64).expand(2, 5, 5)
    torch.testing.assert_close(S.peltr_weights(eye, torch.zeros(2, 5, dtype=F64), backend=backend),
                               torch.full((2, 5), 0.2, dtype=F64), rtol=0, atol=1e-12)
    c = torch.tensor([[0.1, 0.2, 0.0]], dtype=F64)
    torch.testing.assert_close(S.peltr_weights(torch.zeros(1, 3, 3, dtype=F64), c, backend=backend),
                               c + 0.7 / 3, rtol=0, atol=1e-15)
    # collinear g3 = g1 + g2: a zero-norm combination exists and the relaxed step finds it
    J = make_J(1, 3, "random", P=4)
    J[:, 2] = -(J[:, 0] + J[:, 1])
    G = gram_of(J)
    w = S.peltr_weights(G, torch.zeros(1, 3, dtype=F64), backend=backend)
    assert float(w @ G[0] @ w.t()) <= 1e-12 * float(max_diag(G))


# ------------------------------------------------------------------------------ op machinery

def op_cases():
    G = gram_of(make_J(3, 4, "random"))
    o, t, c = orders(3, 4), targets(3, 4), bounds(3, 4)
    return [("pcgrad_weights", (G, o)), ("gradvac_weights", (G, o, t, 0.5, False)),
            ("mgda_weights", (G, 250, 1e-5)), ("min_norm_weights", (G,)), ("peltr_weights", (G, c))]


@needs_native
@pytest.mark.parametrize("name,args", op_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_opcheck(name, args):
    op = getattr(torch.ops.mtlk, name).default
    torch.library.opcheck(op, args)
    torch.library.opcheck(op, (args[0].clone().requires_grad_(), *args[1:]))


@needs_native
def test_weights_carry_no_graph():
    G = gram_of(make_J(3, 4, "random")).requires_grad_()
    for name, args in op_cases():
        out = getattr(torch.ops.mtlk, name)(G, *args[1:])
        for o in out if isinstance(out, tuple) else (out,):
            assert not o.requires_grad
    assert not S.peltr_weights(G, bounds(3, 4), backend="reference").requires_grad


@needs_native
def test_compile_fullgraph():
    G = gram_of(make_J(3, 4, "random"))
    o, t, c = orders(3, 4), targets(3, 4), bounds(3, 4)

    def all_four(G, o, t, c):
        w_vac, t_new = S.gradvac_weights(G, o, t, 0.5)
        return S.pcgrad_weights(G, o), w_vac, t_new, S.mgda_weights(G), S.peltr_weights(G, c)

    got = torch.compile(all_four, fullgraph=True, backend="aot_eager")(G, o, t, c)
    for a, b in zip(got, all_four(G, o, t, c)):
        torch.testing.assert_close(a, b)


@needs_native
def test_vmap_folds_into_the_problem_axis():
    G = gram_of(make_J(6, 4, "random")).view(2, 3, 4, 4)
    o, t, c = orders(6, 4).view(2, 3, 4, 4), targets(6, 4).view(2, 3, 4, 4), bounds(6, 4).view(2, 3, 4)
    flat = G.reshape(6, 4, 4)
    torch.testing.assert_close(torch.vmap(S.mgda_weights)(G), S.mgda_weights(flat).view(2, 3, 4))
    torch.testing.assert_close(torch.vmap(S.pcgrad_weights)(G, o), S.pcgrad_weights(flat, o.view(6, 4, 4)).view(2, 3, 4))
    torch.testing.assert_close(torch.vmap(S.peltr_weights)(G, c), S.peltr_weights(flat, c.view(6, 4)).view(2, 3, 4))
    w, nt = torch.vmap(lambda g, oo: S.gradvac_weights(g, oo, t[0], 0.5))(G, o)
    for k in range(2):
        wk, ntk = S.gradvac_weights(G[k], o[k], t[0], 0.5)
        torch.testing.assert_close(w[k], wk)
        torch.testing.assert_close(nt[k], ntk)


@needs_native
def test_fake_tensors_propagate_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        G = torch.empty(5, 3, 3, dtype=F64)
        o = torch.empty(5, 3, 3, dtype=torch.int64)
        assert torch.ops.mtlk.pcgrad_weights(G, o).shape == (5, 3)
        w, t = torch.ops.mtlk.gradvac_weights(G, o, torch.empty(5, 3, 3, dtype=F64), 0.5, True)
        assert w.shape == (5, 3) and t.shape == (5, 3, 3)
        assert torch.ops.mtlk.mgda_weights(G, 10, 0.0).shape == (5, 3)
        assert torch.ops.mtlk.peltr_weights(G, torch.empty(5, 3, dtype=F64)).shape == (5, 3)


def test_random_orders_are_permutations():
    o = S.random_orders(4, 6, generator=torch.Generator().manual_seed(0))
    assert o.shape == (4, 6, 6) and o.dtype == torch.int64
    assert torch.equal(o.sort(-1).values, torch.arange(6).expand(4, 6, 6))


# ---------------------------------------------------------------------- exact min-norm (Wolfe)

def brute_force_min_norm(G: torch.Tensor) -> float:
    """min w^T G w over the simplex by enumerating supports: the affine minimiser of every subset
    (a least-squares KKT solve), kept when it lies in the simplex."""
    T = G.shape[0]
    best = float(G.diagonal().min())
    for r in range(2, T + 1):
        for S_ in itertools.combinations(range(T), r):
            idx = list(S_)
            M = torch.zeros(r + 1, r + 1, dtype=F64)
            M[:r, :r] = G[idx][:, idx]
            M[:r, r] = M[r, :r] = 1.0
            rhs = torch.zeros(r + 1, dtype=F64)
            rhs[r] = 1.0
            a = torch.linalg.lstsq(M, rhs).solution[:r]
            if bool((a >= -1e-12).all()) and abs(float(a.sum()) - 1) < 1e-9:
                best = min(best, float(a @ G[idx][:, idx] @ a))
    return best


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS + ["low_rank_conflict"])
@pytest.mark.parametrize("T", [1, 2, 3, 5, 7])
def test_min_norm_is_the_optimum_of_the_simplex_qp(backend, kind, T):
    if kind == "low_rank_conflict":  # T gradients in a 2-d subspace: the case Frank-Wolfe misses
        J = torch.randn(6, T, 2, generator=torch.Generator().manual_seed(T), dtype=F64)
    else:
        J = make_J(6, T, kind, P=4)
    G = gram_of(J)
    w = S.min_norm_weights(G, backend=backend)
    assert (w >= 0).all()
    torch.testing.assert_close(w.sum(1), torch.ones(6, dtype=F64), rtol=0, atol=1e-12)
    for n in range(6):
        got = float(w[n] @ G[n] @ w[n])
        best = brute_force_min_norm(G[n])
        assert got - best <= 1e-9 * max(best, 0.0) + 1e-13 * float(max_diag(G[n])), (n, got, best)


@needs_native
@pytest.mark.parametrize("T", [4, 16, 64])
def test_min_norm_native_meets_the_kkt_conditions_and_matches_the_reference(T):
    """KKT of min w^T G w on the simplex: (G w)_j >= w^T G w for every j, equality on the support."""
    J = make_J(4, T, "random", P=max(3, T // 4))
    G = gram_of(J)
    w = S.min_norm_weights(G, backend="native")
    Gw = (G @ w.unsqueeze(-1)).squeeze(-1)
    wGw = (w * Gw).sum(-1, keepdim=True)
    scale = max_diag(G).unsqueeze(-1)
    assert ((wGw - Gw) / scale).max() < 1e-12
    assert (((Gw - wGw) / scale)[w > 1e-12]).abs().max() < 1e-12
    if T <= 16:
        wr = S.min_norm_weights(G, backend="reference")
        torch.testing.assert_close((wr * (G @ wr.unsqueeze(-1)).squeeze(-1)).sum(-1), wGw.squeeze(-1),
                                   rtol=1e-9, atol=1e-13)


@needs_native
def test_min_norm_beats_frank_wolfe_where_the_gradients_conflict_in_few_dimensions():
    """8 gradients in 3 dimensions, all in one half-space (the optimum is not the origin)."""
    J = torch.randn(64, 8, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    J[..., 0] = J[..., 0].abs() + 0.3
    G = gram_of(J)
    obj = lambda w: (w * (G @ w.unsqueeze(-1)).squeeze(-1)).sum(-1)  # noqa: E731
    exact, fw = obj(S.min_norm_weights(G)), obj(S.mgda_weights(G))
    assert (exact <= fw * (1 + 1e-12)).all()
    assert ((fw - exact) / exact).max() > 1e-2  # Frank-Wolfe (250 steps, tol 1e-5) stops 4 % above here


@pytest.mark.parametrize("backend", BACKENDS)
def test_min_norm_edge_cases(backend):
    assert S.min_norm_weights(torch.ones(1, 1, dtype=F64), backend=backend).tolist() == [1.0]
    assert S.min_norm_weights(torch.zeros(3, 3, dtype=F64), backend=backend).tolist() == [1.0, 0.0, 0.0]
    G = torch.eye(3, dtype=F64)
    G[1, 1] = float("nan")
    with pytest.raises(ValueError, match=r"min_norm_weights: gram\[0\] holds NaN or Inf"):
        S.min_norm_weights(G, backend=backend)
