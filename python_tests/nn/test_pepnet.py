"""PEPNet / PPNet: the gates' initial identity, the stop-gradients, which parameters are shared,
gradcheck, compile, training-mode layers, and bad arguments. Parity with the layer-by-layer
reference is in test_models.py (MODELS)."""
from __future__ import annotations

import pytest
import torch

from mtlkernels import nn as mnn
from mtlkernels.reference import models as ref
from python_tests.nn.gates_helper import randomised


def test_gates_start_at_one_so_the_model_starts_as_its_ungated_towers():
    torch.manual_seed(0)
    model = mnn.PEPNet(10, 3, [0, 1], [2, 3], (8, 4)).double()
    x = torch.randn(6, 10, dtype=torch.float64)
    plain = torch.cat([ref.group_mlp(model.towers.mlp, t, x) for t in range(3)], dim=1)
    torch.testing.assert_close(model(x), plain, rtol=1e-12, atol=1e-12)
    for nets in (model.epnet, model.task_gates):
        for u in nets(torch.randn(6, nets.nets[0].layers[0].in_features, dtype=torch.float64)):
            assert torch.count_nonzero(u) == 0


def test_the_gate_inputs_stop_the_gradient_of_the_general_part():
    """PPNet's prior is x[:, prior] (+) sg(h): the task gates send gradient to the prior columns
    only; EPNet's input x[:, domain] (+) sg(x) likewise to the domain columns only."""
    model = randomised(mnn.PEPNet(10, 2, [0, 1], [4], (6,))).double()
    x = torch.randn(5, 10, dtype=torch.float64, requires_grad=True)
    prior = mnn.pepnet.prior_input(x, model.prior_columns, x)
    (g,) = torch.autograd.grad(sum(u.sum() for u in model.task_gates(prior)), x)
    assert torch.count_nonzero(g[:, 2:]) == 0 and torch.count_nonzero(g[:, :2]) > 0
    (u,) = model.epnet(mnn.pepnet.prior_input(x, model.domain_columns, x))
    (g,) = torch.autograd.grad(u.sum(), x)
    assert torch.count_nonzero(g[:, [c for c in range(10) if c != 4]]) == 0 and torch.count_nonzero(g[:, 4]) > 0


def test_shared_parameters_are_the_epnet_and_the_task_gates_belong_to_their_tasks():
    model = mnn.PEPNet(10, 2, [0, 1], [4], (6, 3))
    shared = {id(p) for p in model.shared_parameters()}
    assert shared == {id(p) for p in model.epnet.parameters()}
    assert {id(p) for p in model.task_specific_parameters()} == {
        id(p) for p in (*model.towers.parameters(), *model.task_gates.parameters())}
    assert not list(mnn.PEPNet(10, 2, [0], (), (6,)).shared_parameters())  # PPNet alone: only the embeddings


def test_representation_is_the_epnet_output():
    model = randomised(mnn.PEPNet(10, 2, [0, 1], [4], (6,))).double()
    x = torch.randn(5, 10, dtype=torch.float64)
    logits, h = model(x, return_representation=True)
    (gate,) = ref.gate_nu(model.epnet, 0, ref.prior(x, model.domain_columns, x))
    torch.testing.assert_close(h, x * gate)
    torch.testing.assert_close(logits, model(x))


def test_gradcheck_through_every_gate():
    """gradcheck over the towers' and the task gates' parameters (finite differences would also
    move the stop-gradient inputs, so x and EPNet, which feeds sg(h), are left out here; the
    reference parity covers them)."""
    torch.manual_seed(1)
    model = randomised(mnn.PEPNet(6, 2, [0, 1], (), (4, 3), gate_hidden=3)).double()
    x = torch.randn(4, 6, dtype=torch.float64)
    names = [n for n, _ in model.named_parameters()]

    def f(*ps):
        return torch.func.functional_call(model, dict(zip(names, ps)), (x,))

    assert torch.autograd.gradcheck(f, tuple(p.detach().requires_grad_() for p in model.parameters()))


@pytest.mark.parametrize("model", ["pepnet", "mmoe-expert-gates"])
def test_compile_fullgraph(model):
    torch._dynamo.reset()
    m = randomised(mnn.PEPNet(12, 3, [0, 1], [2], (8, 4)) if model == "pepnet"
                   else mnn.MMoE(12, 3, 4, (8, 6), (5,), expert_gate_columns=[0, 1, 2]))
    x = torch.randn(9, 12)
    compiled = torch.compile(lambda x: m(x).square().sum(), fullgraph=True)
    params = list(m.parameters())
    got = torch.autograd.grad(compiled(x), params)
    want = torch.autograd.grad(m(x).square().sum(), params)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_training_mode_dropout_and_batch_norm_keep_the_gates():
    """The per-layer path (batch norm, active dropout) applies the same gates: equal to the fused
    path in eval mode with batch norm's running statistics at their initial values."""
    torch.manual_seed(2)
    model = randomised(mnn.PEPNet(10, 2, [0, 1], [3], (6, 4), batch_norm=True)).double().eval()
    x = torch.randn(7, 10, dtype=torch.float64)
    fused = randomised(mnn.PEPNet(10, 2, [0, 1], [3], (6, 4))).double().eval()
    fused.load_state_dict({k: v for k, v in model.state_dict().items() if "norms" not in k})
    eps = model.towers.mlp.norms[0].eps
    # identity batch norms up to 1 / sqrt(1 + eps): scale the fused towers' weights the same way
    with torch.no_grad():
        for layer in fused.towers.mlp.layers[:-1]:
            layer.weight /= (1 + eps) ** 0.5
            layer.bias /= (1 + eps) ** 0.5
    torch.testing.assert_close(model(x), fused(x), rtol=1e-6, atol=1e-6)
    model.train()
    out = model(x)
    out.sum().backward()
    assert all(p.grad is not None for p in model.task_gates.parameters())


def test_bad_arguments_name_what_is_wrong():
    with pytest.raises(ValueError, match="prior_columns must name at least one column"):
        mnn.PEPNet(10, 2, [], (), (6,))
    with pytest.raises(ValueError, match=r"PEPNet prior_columns: columns \[10\] outside the input's 10 columns"):
        mnn.PEPNet(10, 2, [0, 10], (), (6,))
    with pytest.raises(ValueError, match=r"PEPNet domain_columns: columns \[-1\]"):
        mnn.PEPNet(10, 2, [0], [-1], (6,))
    with pytest.raises(ValueError, match="tower_hidden must name at least one hidden layer"):
        mnn.PEPNet(10, 2, [0], (), ())
    with pytest.raises(ValueError, match="GateNUs: hidden must be >= 1"):
        mnn.GateNUs(2, 5, [3], hidden=0)
    with pytest.raises(ValueError, match="Towers: gates has 1 entries for 2 hidden layers"):
        mnn.Towers(2, 5, (4, 3))(torch.randn(3, 5), [torch.zeros(3, 2, 4)])


def test_schema_columns_of_fields():
    schema = mnn.FeatureSchema(sparse=(mnn.SparseField("user", 5), mnn.SparseField("item", 7)), dense=("price",),
                               embedding_dim=3, bags=(mnn.features.BagField("topics", 4),))
    assert schema.columns(["item"]) == [3, 4, 5]
    assert schema.columns(["topics", "user"]) == [6, 7, 8, 0, 1, 2]
    with pytest.raises(ValueError, match=r"--gate-fields: 'price' is a dense column \(gates read embeddings\); "
                                         r"sparse and bag fields: user, item, topics"):
        schema.columns(["price"], "--gate-fields")
    with pytest.raises(ValueError, match="'age' is not a feature"):
        schema.columns(["age"])
    with pytest.raises(ValueError, match="field 'user' named twice"):
        schema.columns(["user", "user"])
