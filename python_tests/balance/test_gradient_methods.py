"""PCGrad, GradVac, MGDA(-UB), PE-LTR through the one interface, against the full-vector
references of ``mtlkernels.reference.solvers`` (LibMTL-style loops on J with the same orders),
plus the spec's properties and edge cases."""
from __future__ import annotations

import copy

import pytest
import torch

from mtlkernels.balance import (EW, IMTLG, MGDA, PELTR, AlignedMTL, CAGrad, DualProj, GradVac, NashMTL, PCGrad,
                                UPGrad)
from mtlkernels.balance.random_order import TaskOrder
from mtlkernels.reference.solvers import gradvac_full, pcgrad_full

from .conftest import Problem


def run(method, problem, **kwargs):
    problem.zero_grad()
    w = method.backward(problem.losses(), problem.model, **kwargs)
    return w, problem.shared_grad()


def test_pcgrad_matches_full_vector_reference_with_the_same_orders():
    p = Problem(T=4, seed=3)
    J = p.jacobian()
    method = PCGrad(seed=7)
    orders = copy.deepcopy(method.order).draw(4)
    w, grad = run(method, p)
    torch.testing.assert_close(grad, pcgrad_full(J, orders), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grad, J.T @ w, rtol=1e-9, atol=1e-12)


def test_pcgrad_heads_get_the_weighted_loss_gradient():
    p = Problem(T=3, seed=4)
    w, _ = run(PCGrad(seed=1), p)
    specific = [q.grad.clone() for q in p.specific()]
    p.zero_grad()
    (w * p.losses()).sum().backward()
    for a, q in zip(specific, p.specific()):
        torch.testing.assert_close(a, q.grad)


def test_pcgrad_without_conflict_is_ew_sum():
    J_problem = Problem(T=2, seed=5)
    # make task 2's loss a positive multiple of task 1's: gradients aligned, no conflict
    J_problem.y[:, 1] = J_problem.y[:, 0]
    model = J_problem.model
    with torch.no_grad():
        model.gates.weight[model.gates.counts[0]:] = model.gates.weight[:model.gates.counts[0]]
        model.gates.bias[model.gates.counts[0]:] = model.gates.bias[:model.gates.counts[0]]
        for layer in model.towers.mlp.layers:
            w = layer.weight
            if layer.shared_input:
                w[:, 1] = w[:, 0]
            else:
                w[1] = w[0]
            layer.bias[1] = layer.bias[0]
    w, grad = run(PCGrad(), J_problem)
    assert torch.equal(w, torch.ones(2, dtype=w.dtype))
    _, ew_grad = run(EW(), J_problem)
    torch.testing.assert_close(grad, ew_grad)


def test_pcgrad_mean_reduction_and_state_resume():
    p = Problem(T=4, seed=6)
    a = PCGrad(reduction="mean", seed=3)
    run(a, p)
    b = PCGrad(reduction="mean", seed=99)
    b.load_state_dict(a.state_dict())
    wa, _ = run(a, p)
    wb, _ = run(b, p)
    assert torch.equal(wa, wb)


@pytest.mark.parametrize("ema,every_pair", [("libmtl", False), ("torchjd", True)])
def test_gradvac_matches_full_vector_reference_and_resumes(ema, every_pair):
    p = Problem(T=3, seed=8)
    method = GradVac(beta=0.3, ema=ema, seed=2)
    target = torch.zeros(3, 3, dtype=torch.float64)
    for step in range(3):
        J = p.jacobian()
        orders = copy.deepcopy(method.order).draw(3)
        expected, target = gradvac_full(J, orders, target, 0.3, every_pair)
        _, grad = run(method, p)
        torch.testing.assert_close(grad, expected, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(method.target, target, rtol=1e-10, atol=1e-12)
    clone = GradVac(beta=0.3, ema=ema, seed=0)
    clone.load_state_dict(method.state_dict())
    wa, _ = run(method, p)
    wb, _ = run(clone, p)
    assert torch.equal(wa, wb)


@pytest.mark.parametrize("make", [PCGrad, GradVac])
def test_orders_follow_torch_manual_seed_unless_a_seed_is_given(make):
    torch.manual_seed(5)
    a, b = make(), make()
    torch.manual_seed(5)
    c = make()
    draws = [m.order.draw(6) for m in (a, b, c)]
    assert not torch.equal(draws[0], draws[1])  # two methods in a row: different orders
    assert torch.equal(draws[0], draws[2])      # the same global seed: the same orders
    assert torch.equal(make(seed=3).order.draw(6), make(seed=3).order.draw(6))


@pytest.mark.parametrize("make", [lambda: PCGrad(seed=0), lambda: GradVac(seed=0), lambda: GradVac(ema="torchjd", seed=0),
                                  lambda: MGDA(), lambda: MGDA("loss+"), lambda: PELTR([0.1, 0.1, 0.1]),
                                  lambda: IMTLG(), lambda: AlignedMTL(), lambda: UPGrad(), lambda: DualProj(),
                                  lambda: CAGrad(), lambda: NashMTL()])
def test_each_gram_aggregation_compiles_fullgraph_and_matches_eager(make):
    """No host generator, no read-back: the weights (and the state they advance: orders,
    GradVac targets) come out of one compiled graph, step after step."""
    J = torch.randn(3, 10, dtype=torch.float64)
    G, losses = J @ J.T, torch.rand(3, dtype=torch.float64) + 0.1
    compiled_method, eager = make(), make()
    compiled = torch.compile(compiled_method.gram_weights, fullgraph=True)
    for _ in range(3):
        torch.testing.assert_close(compiled(G, losses), eager.gram_weights(G, losses), rtol=1e-12, atol=1e-12)
    for (name, a), b in zip(compiled_method.state_dict().items(), eager.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)  # integer state: exactly


def test_gradvac_rejects_an_unknown_ema_rule():
    with pytest.raises(ValueError, match="ema must be one of"):
        GradVac(ema="paper")


def test_gradvac_with_zero_target_and_beta_is_pcgrad():
    p = Problem(T=4, seed=9)
    wv, gv = run(GradVac(beta=0.0, seed=4), p)
    wp, gp = run(PCGrad(seed=4), p)
    # equal up to GradVac's 1e-8 guards in its denominators
    torch.testing.assert_close(wv, wp, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(gv, gp, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("ema,every_pair", [("libmtl", False), ("torchjd", True)])
def test_gradvac_per_layer_is_the_reference_on_each_parameter(ema, every_pair):
    """Each shared parameter: its own gradient block, order, target and update (the full-vector
    reference on that block); the task heads get the gradient of sum_t wbar_t L_t with wbar the
    mean of the per-layer weights."""
    p = Problem(T=3, seed=10)
    method = GradVac(beta=0.4, granularity="layer", ema=ema, seed=1)
    shared = p.shared()
    targets = torch.zeros(len(shared), 3, 3, dtype=torch.float64)
    for step in range(2):
        losses = p.losses()
        blocks = [torch.stack([torch.autograd.grad(losses[t], q, retain_graph=True)[0] for t in range(3)])
                  for q in shared]
        order_gen = copy.deepcopy(method.order)
        expected = []
        for k, b in enumerate(blocks):
            J = b.reshape(3, -1).double()
            d, targets[k] = gradvac_full(J, order_gen.draw(3), targets[k], 0.4, every_pair)
            expected.append(d.view_as(shared[k]))
        w, _ = run(method, p)
        for q, d in zip(shared, expected):
            torch.testing.assert_close(q.grad, d, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(method.target, targets, rtol=1e-10, atol=1e-12)
        assert w.shape == (3,)
        heads = torch.autograd.grad((w * p.losses()).sum(), p.specific())
        for q, g in zip(p.specific(), heads):
            torch.testing.assert_close(q.grad, g, rtol=1e-10, atol=1e-12)


def mgda_optimal(G, w, rtol=1e-3):
    """(G w)_i >= w^T G w for every task, equality on the support (relative to w^T G w: the
    solver stops at a step-size tolerance)."""
    Gw = G @ w
    wGw = w @ Gw
    tol = rtol * wGw
    return bool((Gw >= wGw - tol).all()) and bool((Gw[w > 1e-6] <= wGw + tol).all())


@pytest.mark.parametrize("normalization", ["none", "l2", "loss", "loss+"])
def test_mgda_weights_are_min_norm_and_applied_to_raw_gradients(normalization):
    """w is the min-norm point of the NORMALISED gradients g_i / s_i (s_i = 1, |g_i|, L_i,
    L_i |g_i|), applied to the raw ones: d = J^T w."""
    p = Problem(T=4, seed=11)
    J = p.jacobian()
    L = p.losses().detach().double()
    norms = J.norm(dim=1)
    s = {"none": torch.ones(4, dtype=torch.float64), "l2": norms, "loss": L, "loss+": L * norms}[normalization]
    w, grad = run(MGDA(normalization=normalization, max_iter=2000, tol=1e-12), p)
    assert abs(float(w.sum()) - 1) < 1e-12 and bool((w >= 0).all())
    torch.testing.assert_close(grad, J.T @ w, rtol=1e-9, atol=1e-12)
    Jn = J / s[:, None]
    assert mgda_optimal(Jn @ Jn.T, w.double())
    if normalization != "none":  # the scaling matters: w is not the raw problem's solution
        assert not mgda_optimal(J @ J.T, w.double(), rtol=1e-6)


def test_mgda_ub_uses_the_representation_and_one_backward():
    p = Problem(T=3, seed=12)
    p.zero_grad()
    losses, rep = p.losses(return_representation=True)
    w = MGDA().backward(losses, p.model, representation=rep)
    grads = [q.grad.clone() for q in p.model.parameters()]
    p.zero_grad()
    losses, rep = p.losses(return_representation=True)
    R = torch.stack([torch.autograd.grad(losses[t], rep, retain_graph=True)[0].reshape(-1) for t in range(3)])
    assert mgda_optimal(R @ R.T, w)
    (w * losses).sum().backward()
    for a, q in zip(grads, p.model.parameters()):
        torch.testing.assert_close(a, q.grad)


def test_peltr_two_tasks_without_bounds_is_mgda_and_bounds_hold():
    p = Problem(T=2, seed=13)
    w_pe, _ = run(PELTR([0.0, 0.0]), p)
    w_mg, _ = run(MGDA(), p)
    torch.testing.assert_close(w_pe, w_mg, rtol=1e-9, atol=1e-12)
    w, _ = run(PELTR([0.7, 0.2]), p)
    assert w[0] >= 0.7 - 1e-12 and w[1] >= 0.2 - 1e-12 and abs(float(w.sum()) - 1) < 1e-12
    with pytest.raises(ValueError, match="sum to at most 1"):
        PELTR([0.8, 0.3])


FACTORIES = {"pcgrad": lambda T: PCGrad(), "mgda": lambda T: MGDA(), "gradvac": lambda T: GradVac(),
             "peltr": lambda T: PELTR([0.0] * T)}


@pytest.mark.parametrize("name", list(FACTORIES))
def test_single_task_is_the_plain_gradient(name):
    p = Problem(T=1, seed=14)
    w, grad = run(FACTORIES[name](1), p)
    assert torch.equal(w, torch.ones(1, dtype=w.dtype))
    torch.testing.assert_close(grad, p.jacobian()[0])


@pytest.mark.parametrize("name", list(FACTORIES))
def test_task_that_does_not_touch_the_shared_parameters(name):
    p = Problem(T=3, seed=15)
    p.zero_grad()
    losses = p.losses()
    head_only = sum((q ** 2).sum() for q in p.model.towers.parameters())
    losses = torch.stack([losses[0], losses[1], head_only])
    w = FACTORIES[name](3).backward(losses, p.model)
    assert torch.isfinite(w).all() and torch.isfinite(p.shared_grad()).all()


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_non_finite_gradient_is_flagged_and_raised_by_check_finite(name):
    """A finite loss with an infinite gradient: backward runs to the end on the device (the
    solver sees the Gram with its non-finite entries zeroed, so its weights stay finite) and
    check_finite() names the task."""
    p = Problem(T=2, seed=16)
    losses = p.losses()
    shared = p.shared()[0]
    bad = (shared.reshape(-1)[0] * 0).abs().sqrt()  # finite value, infinite gradient at 0
    losses = torch.stack([losses[0] + bad, losses[1]])
    method = FACTORIES[name](2)
    w = method.backward(losses, p.model)
    assert torch.isfinite(w).all()
    # the batched backward multiplies the other tasks' zero cotangents by inf: they are flagged too
    with pytest.raises(ValueError, match=r"^gradients of task\(s\) \[0(, 1)?\] held NaN or Inf"):
        method.check_finite()
    p.zero_grad()
    method.backward(p.losses(), p.model)
    method.check_finite()


def test_identical_and_opposite_gradients():
    a = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    # identical: no conflict, PCGrad = EW sum; MGDA picks any simplex point with norm ||g||
    losses = torch.stack([(a * torch.tensor([1.0, 0.0], dtype=torch.float64)).sum()] * 2)
    w = PCGrad().backward(losses, [a])
    torch.testing.assert_close(a.grad, torch.tensor([2.0, 0.0], dtype=torch.float64))
    assert torch.equal(w, torch.ones(2, dtype=w.dtype))
    # opposite with equal norms: MGDA gives (1/2, 1/2) and d = 0
    a.grad = None
    losses = torch.stack([a[0] * 1.0, -a[0]])
    w = MGDA().backward(losses, [a])
    torch.testing.assert_close(w, torch.tensor([0.5, 0.5], dtype=torch.float64))
    torch.testing.assert_close(a.grad, torch.zeros(2, dtype=torch.float64))


def test_task_order_state_round_trip():
    a = TaskOrder(seed=5)
    a.draw(4)
    b = TaskOrder(seed=0)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.draw(4), b.draw(4))


def test_float32_model_matches_float64_reference():
    p = Problem(T=3, seed=17, dtype=torch.float32)
    J = p.jacobian()
    method = PCGrad(seed=2)
    orders = copy.deepcopy(method.order).draw(3)
    _, grad = run(method, p)
    torch.testing.assert_close(grad.double(), pcgrad_full(J, orders), rtol=1e-4, atol=1e-6)


def test_aggregation_compiles_fullgraph():
    """gram -> solver -> combine_ as one compiled graph (the ops have fake implementations)."""
    from mtlkernels.ops import combine_, gram
    from mtlkernels.ops.solvers import pcgrad_weights

    torch._dynamo.reset()
    blocks = [torch.randn(3, 5, 4, dtype=torch.float64), torch.randn(3, 7, dtype=torch.float64)]
    order = torch.stack([torch.randperm(3) for _ in range(3)])

    def aggregate(blocks, grads):
        w = pcgrad_weights(gram(blocks), order)
        combine_(blocks, w, grads)
        return w

    eager = [torch.zeros(5, 4, dtype=torch.float64), torch.zeros(7, dtype=torch.float64)]
    compiled = [torch.zeros_like(g) for g in eager]
    w_eager = aggregate(blocks, eager)
    w_compiled = torch.compile(aggregate, fullgraph=True, backend="aot_eager")(blocks, compiled)
    torch.testing.assert_close(w_compiled, w_eager)
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b)


def test_the_graph_is_walked_once_per_model(monkeypatch):
    """backward_except caches the leaves per model; a changed model is walked again."""
    from mtlkernels.balance import base

    walks = []
    walk = base.graph_leaves
    monkeypatch.setattr(base, "graph_leaves", lambda root, parents=None: walks.append(1) or walk(root, parents))
    p = Problem(T=3, seed=21)
    method = PCGrad(seed=0)
    for _ in range(3):
        p.zero_grad()
        method.backward(p.losses(), p.model)
    assert len(walks) == 1
    heads = [q for q in p.model.parameters() if all(q is not s for s in p.shared())]
    assert heads and all(q.grad is not None for q in heads)
    p.model.towers.extra = torch.nn.Parameter(torch.zeros(()))  # the model changed: walked again
    p.zero_grad()
    method.backward(p.losses(), p.model)
    assert len(walks) == 2
