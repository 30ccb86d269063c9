"""The grouped/fused models against expert-by-expert references, and their structure."""
from __future__ import annotations

import pytest
import torch

from mtlkernels import nn as mnn
from mtlkernels.reference import models as ref
from python_tests.nn.gates_helper import randomised


def assert_same_forward_backward(model, reference_fn, x):
    x1 = x.clone().requires_grad_()
    x2 = x.clone().requires_grad_()
    out = model(x1)
    expected = reference_fn(model, x2)
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-10)
    g = torch.randn_like(out)
    params = list(model.parameters())
    got = torch.autograd.grad(out, [x1, *params], g, allow_unused=True)
    want = torch.autograd.grad(expected, [x2, *params], g, allow_unused=True)
    for (name, _), a, b in zip([("x", None), *model.named_parameters()], got, want):
        a = torch.zeros_like(b) if a is None and b is not None else a
        b = torch.zeros_like(a) if b is None and a is not None else b
        if a is not None:
            torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10, msg=f"gradient of {name}")


MODELS = {
    "shared_bottom": (lambda: mnn.SharedBottom(12, 3, (16, 8), (6,)), ref.shared_bottom),
    "omoe": (lambda: mnn.OMoE(12, 3, 4, (16, 8), (6,)), ref.mmoe),
    "mmoe": (lambda: mnn.MMoE(12, 3, 5, (16, 8), (6,)), ref.mmoe),
    "mmoe-one-layer-experts-no-tower-hidden": (lambda: mnn.MMoE(12, 2, 3, (7,), ()), ref.mmoe),
    "cgc-unequal": (lambda: mnn.CGC(12, 3, task_experts=[1, 3, 2], shared_experts=2, expert_hidden=(9,)), ref.ple),
    "ple-2-levels-unequal": (lambda: mnn.PLE(12, 3, [2, 1, 3], 2, (10, 8), (5,), num_levels=2), ref.ple),
    "ple-3-levels": (lambda: mnn.PLE(12, 2, [2, 2], 2, (6,), (4,), num_levels=3), ref.ple),
    "ple-3-levels-task-without-experts": (lambda: mnn.PLE(12, 3, [2, 0, 1], 1, (8,), (4,), num_levels=3), ref.ple),
    "ple-no-shared-experts": (lambda: mnn.PLE(12, 2, [2, 3], 0, (8,), (4,), num_levels=2), ref.ple),
    "dselect-k-per-example": (lambda: mnn.DSelectK(12, 3, 5, 2, (9, 6), (4,)), ref.dselect_k),
    "dselect-k-static": (lambda: mnn.DSelectK(12, 2, 4, 3, (7,), (), per_example=False), ref.dselect_k),
    "dselect-k-one-expert": (lambda: mnn.DSelectK(12, 2, 1, 1, (5,), (3,)), ref.dselect_k),
    "pepnet": (lambda: randomised(mnn.PEPNet(12, 3, [0, 1, 2, 5], [3, 4], (9, 6))), ref.pepnet),
    "pepnet-no-domain-gate-hidden": (lambda: randomised(mnn.PEPNet(12, 2, [7, 8], (), (5,), gate_hidden=4)),
                                     ref.pepnet),
    "mmoe-expert-gates": (lambda: randomised(mnn.MMoE(12, 3, 4, (8, 6), (5,), expert_gate_columns=[0, 1, 2])),
                          ref.mmoe),
    "ple-2-levels-expert-gates": (lambda: randomised(mnn.PLE(12, 3, [2, 1, 3], 2, (10, 8), (5,), num_levels=2,
                                                             expert_gate_columns=[4, 5], expert_gate_hidden=3)),
                                  ref.ple),
    "cgc-expert-gates-no-shared": (lambda: randomised(mnn.CGC(12, 2, [2, 3], 0, (8,), (4,),
                                                              expert_gate_columns=[0])), ref.ple),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_model_matches_expert_loop_reference(name):
    make, reference_fn = MODELS[name]
    model = make().double()
    assert_same_forward_backward(model, reference_fn, torch.randn(17, 12, dtype=torch.float64))


def test_cgc_task_sees_exactly_its_own_and_the_shared_experts():
    counts, shared = [1, 3, 2], 2
    model = mnn.CGC(10, 3, task_experts=counts, shared_experts=shared, expert_hidden=(6,)).double()
    x = torch.randn(9, 10, dtype=torch.float64)
    level = model.levels[0]
    owner = [0, 1, 1, 1, 2, 2, 3, 3]  # 3 = shared
    for t in range(3):
        touched = []
        for e in range(len(owner)):
            mlp, i = level.expert(e)
            w = mlp.layers[0].weight  # [in, G, out]: group i is w[:, i]
            (g,) = torch.autograd.grad(model(x)[:, t].sum(), w)
            touched.append(bool(g[:, i].abs().sum() > 0))
        assert touched == [o in (t, 3) for o in owner], (t, touched)


def test_ple_inner_level_has_a_shared_gate_and_the_last_does_not():
    model = mnn.PLE(8, 2, [1, 2], 1, (4,), num_levels=3)
    gates = [lvl.gates.num_gates for lvl in model.levels]
    assert gates == [3, 3, 2]
    assert model.levels[0].gates.counts == [2, 3, 3 + 1]  # own + shared; shared gate sees all 4
    # the shared gate's parameters are apart from the task gates'
    assert model.levels[0].gates.weight.shape == (5, 8) and model.levels[0].gates.shared_weight.shape == (4, 8)
    assert model.levels[-1].gates.shared_weight is None
    # without shared experts nothing reads a shared mixture: no shared gate
    assert [lvl.gates.num_gates for lvl in mnn.PLE(8, 2, [1, 2], 0, (4,), num_levels=3).levels] == [2, 2, 2]


def test_the_last_level_keeps_task_and_shared_experts_apart():
    model = mnn.PLE(8, 2, [1, 2], 2, (4,), num_levels=2)
    last = model.levels[-1]
    assert last.experts.groups == 3 and last.shared.groups == 2
    assert model.levels[0].shared is None and model.levels[0].experts.groups == 5
    assert [last.expert(e)[1] for e in range(5)] == [0, 1, 2, 0, 1]
    specific = {id(p) for p in model.task_specific_parameters()}
    assert all(id(p) in specific for p in last.experts.parameters())
    assert not any(id(p) in specific for p in last.shared.parameters())


def test_shared_and_task_specific_parameters_partition_the_model():
    for make, _ in MODELS.values():
        model = make()
        shared = {id(p) for p in model.shared_parameters()}
        specific = {id(p) for p in model.task_specific_parameters()}
        assert not shared & specific
        assert shared | specific == {id(p) for p in model.parameters()}


def tasks_reaching(model, x):
    """Per parameter, ``[T, *shape]``: whether task t's output has a non-zero gradient on each element."""
    out = model.task_logits(model(x))
    params = list(model.parameters())
    reach = {id(p): [] for p in params}
    for t in range(out.shape[1]):
        grads = torch.autograd.grad(out[:, t].sum(), params, retain_graph=True, allow_unused=True)
        for p, g in zip(params, grads):
            reach[id(p)].append(torch.zeros_like(p, dtype=torch.bool) if g is None else g != 0)
    return {k: torch.stack(v) for k, v in reach.items()}


STRUCTURE_MODELS = {**{k: make for k, (make, _) in MODELS.items()},
                    "esmm": lambda: mnn.ESMM(12, (8, 4)), "esm2": lambda: mnn.ESM2(12, (8, 4)),
                    "aitm-1": lambda: mnn.AITM(12, 1, (8, 4)), "aitm-2": lambda: mnn.AITM(12, 2, (8, 4)),
                    "aitm-4": lambda: mnn.AITM(12, 4, (8, 4))}


@pytest.mark.parametrize("name", list(STRUCTURE_MODELS))
def test_the_methods_combine_exactly_what_several_tasks_reach(name):
    """Element by element: a task-specific parameter is reached by one task's output at most, and
    a shared parameter has no element that only one task reaches (no task-specific slice inside a
    shared tensor, which a gradient method would wrongly project or reweight)."""
    torch.manual_seed(0)
    model = STRUCTURE_MODELS[name]().double()
    reach = tasks_reaching(model, torch.randn(64, 12, dtype=torch.float64))
    for p in model.task_specific_parameters():
        assert (reach[id(p)].sum(0) <= 1).all(), name
    for (pname, p) in model.named_parameters():
        if id(p) in {id(q) for q in model.shared_parameters()}:
            assert not (reach[id(p)].sum(0) == 1).any(), f"{name}: shared {pname} has elements only one task reaches"


def test_mmoe_gate_and_tower_slices_get_one_task_only():
    """Gates and towers are stacked per task; task t's loss reaches only task t's slice."""
    T, X = 3, 4
    model = mnn.MMoE(8, T, X, (6,), (5,))
    out = model(torch.randn(11, 8))
    for t in range(T):
        g_gate, g_tower = torch.autograd.grad(out[:, t].sum(), [model.gates.weight, model.towers.mlp.layers[0].weight],
                                              retain_graph=True)
        rows = g_gate.abs().sum(1).view(T, X).sum(1) > 0
        assert rows.tolist() == [u == t for u in range(T)]
        assert [bool(g_tower[u].abs().sum() > 0) for u in range(T)] == [u == t for u in range(T)]


def test_representation_is_in_the_graph():
    model = mnn.MMoE(8, 2, 3, (6,), (5,))
    logits, rep = model(torch.randn(4, 8), return_representation=True)
    assert rep.shape == (4, 3, 6)
    (g,) = torch.autograd.grad(logits.sum(), rep)
    assert g.abs().sum() > 0


@pytest.mark.parametrize("make", [lambda: mnn.MMoE(12, 3, 4, (16, 8), (6,), batch_norm=True, dropout=0.1),
                                  lambda: mnn.PLE(12, 2, 2, 2, (8,), (4,), batch_norm=True, dropout=0.1)])
def test_batch_norm_and_dropout_train_and_eval(make):
    model = make()
    x = torch.randn(32, 12)
    model.train()
    a, b = model(x), model(x)
    assert not torch.equal(a, b)  # dropout active
    model.eval()
    torch.testing.assert_close(model(x), model(x))


@pytest.mark.parametrize("kwargs,match", [
    (dict(task_experts=[1, 2], shared_experts=1), "task_experts has 2 counts for 3 tasks"),
    (dict(task_experts=[1, 0, 1], shared_experts=0), "task 1 has no expert"),
    (dict(task_experts=2, shared_experts=1, num_levels=0), "num_levels must be >= 1"),
])
def test_ple_bad_configuration(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mnn.PLE(8, 3, **kwargs)


@pytest.mark.parametrize("make", [lambda: mnn.PLE(12, 2, [1, 2], 1, (8,), (4,), num_levels=2),
                                  lambda: mnn.DSelectK(12, 2, 5, 2, (8,), (4,))])
def test_compile_fullgraph_model_step(make):
    torch._dynamo.reset()
    model = make()
    x = torch.randn(6, 12)
    step = torch.compile(lambda inp: model(inp).square().sum(), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(step(x), model(x).square().sum())
