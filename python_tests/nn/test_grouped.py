"""GroupedMLP / GroupedLinear: the fused whole-stack path, the per-layer path (batch norm,
training-mode dropout) and group-by-group nn.Linear agree; layouts are [B, G, out]."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mtlkernels.nn import GroupedLinear, GroupedMLP
from mtlkernels.reference.models import group_mlp


@pytest.mark.parametrize("shared_input", [True, False])
@pytest.mark.parametrize("last_activation", [True, False])
def test_fused_stack_equals_group_by_group_linear(shared_input, last_activation):
    G, B = 3, 6
    mlp = GroupedMLP(G, 5, [7, 4], shared_input=shared_input, last_activation=last_activation).double()
    x = torch.randn(B, 5, dtype=torch.float64) if shared_input else torch.randn(B, G, 5, dtype=torch.float64)
    out = mlp(x)
    assert out.shape == (B, G, 4)
    for g in range(G):
        torch.testing.assert_close(out[:, g], group_mlp(mlp, g, x if shared_input else x[:, g]))


def test_per_layer_path_equals_fused_path():
    """Training-mode dropout routes through one op call per layer; with p -> its eval result,
    the two paths must agree, values and gradients."""
    torch.manual_seed(1)
    mlp = GroupedMLP(4, 6, [8, 3], shared_input=True, dropout=0.5).double()
    x = torch.randn(9, 6, dtype=torch.float64)
    mlp.eval()
    fused = mlp(x)
    g_fused = torch.autograd.grad(fused.square().sum(), list(mlp.parameters()))
    mlp.train()
    mlp.dropout = 1e-12  # keeps the per-layer path, drops (almost) nothing
    per_layer = mlp(x)
    g_layer = torch.autograd.grad(per_layer.square().sum(), list(mlp.parameters()))
    torch.testing.assert_close(per_layer, fused)
    for a, b in zip(g_layer, g_fused):
        torch.testing.assert_close(a, b)


def test_batch_norm_normalises_each_group_channel():
    mlp = GroupedMLP(2, 4, [5], shared_input=True, batch_norm=True).double().train()
    x = torch.randn(64, 4, dtype=torch.float64)
    out = mlp(x)
    pre = F.linear(x, mlp.layers[0].group_weight(1), mlp.layers[0].bias[1])
    expected = torch.relu((pre - pre.mean(0)) / torch.sqrt(pre.var(0, unbiased=False) + 1e-5))
    torch.testing.assert_close(out[:, 1], expected)


def test_grouped_linear_layouts():
    lin = GroupedLinear(3, 4, 2, shared_input=False, bias=False)
    x = torch.randn(5, 3, 4)
    out = lin(x, relu=True)
    assert out.shape == (5, 3, 2)
    for g in range(3):
        torch.testing.assert_close(out[:, g], torch.relu(x[:, g] @ lin.weight[g]))
    with pytest.raises(ValueError, match=r"x must be \[B, G, in\]"):
        lin(torch.randn(5, 4))


def _trained_norms(mlp: GroupedMLP, x: torch.Tensor) -> GroupedMLP:
    """Running statistics and affine maps away from their initial 0 / 1."""
    with torch.no_grad():
        for n in mlp.norms:
            if n.weight is not None:
                n.weight.uniform_(0.5, 2.0)
                n.bias.uniform_(-1.0, 1.0)
    mlp.train()
    for _ in range(3):
        mlp(x * 3 + 1)
    return mlp.eval()


@pytest.mark.parametrize("shared_input", [True, False])
@pytest.mark.parametrize("last_activation", [True, False])
@pytest.mark.parametrize("bias,affine", [(True, True), (False, True), (True, False)])
def test_serving_folds_batch_norm_into_one_fused_call(shared_input, last_activation, bias, affine):
    """Evaluation without autograd (the folded weights, one op call) equals evaluation with it
    (one call per layer, then the norm): every layout, bias and affine setting."""
    torch.manual_seed(0)
    G, B = 3, 16
    mlp = GroupedMLP(G, 5, [7, 6, 4], shared_input=shared_input, last_activation=last_activation,
                     batch_norm=True).double()
    if not bias:
        for layer in mlp.layers:
            layer.bias = None
    if not affine:
        for i, n in enumerate(mlp.norms):
            mlp.norms[i] = torch.nn.BatchNorm1d(n.num_features, affine=False).double()
    x = torch.randn(B, 5, dtype=torch.float64) if shared_input else torch.randn(B, G, 5, dtype=torch.float64)
    _trained_norms(mlp, x)
    with torch.enable_grad():
        per_layer = mlp(x)
    with torch.no_grad():
        folded = mlp(x)
    torch.testing.assert_close(folded, per_layer)
    with torch.inference_mode():
        torch.testing.assert_close(mlp(x), per_layer)


def test_folded_parameters_are_kept_until_a_parameter_or_statistic_changes():
    torch.manual_seed(0)
    mlp = GroupedMLP(2, 4, [6, 3], shared_input=True, batch_norm=True).double()
    x = torch.randn(12, 4, dtype=torch.float64)
    _trained_norms(mlp, x)

    def check():
        with torch.enable_grad():
            expect = mlp(x)
        with torch.no_grad():
            torch.testing.assert_close(mlp(x), expect)

    with torch.no_grad():
        first = mlp.folded_parameters()
        assert mlp.folded_parameters()[0][0] is first[0][0]  # kept
    check()
    with torch.no_grad():  # an optimiser step: in place
        mlp.layers[0].weight.add_(0.5)
    check()
    mlp.train()
    mlp(x * 2 - 1)  # new running statistics
    mlp.eval()
    check()
    other = GroupedMLP(2, 4, [6, 3], shared_input=True, batch_norm=True).double()
    mlp.load_state_dict(_trained_norms(other, x + 1).state_dict())
    check()
    with torch.no_grad():
        assert mlp.folded_parameters()[0][0] is not first[0][0]


def test_training_and_gradients_never_use_the_folded_path():
    torch.manual_seed(0)
    mlp = GroupedMLP(2, 4, [6, 3], shared_input=True, batch_norm=True).double()
    x = torch.randn(12, 4, dtype=torch.float64)
    _trained_norms(mlp, x)
    out = mlp(x)  # eval, autograd on: the norm's own backward
    grads = torch.autograd.grad(out.sum(), [mlp.norms[0].weight])
    assert grads[0].abs().sum() > 0
    mlp.train()
    with torch.no_grad():
        a = mlp(x)
    mlp.eval()
    with torch.no_grad():
        b = mlp(x)
    assert not torch.allclose(a, b)  # training mode: batch statistics, not the running ones


def test_folded_serving_compiles_fullgraph():
    torch._dynamo.reset()
    torch.manual_seed(0)
    mlp = GroupedMLP(3, 5, [7, 4], shared_input=True, batch_norm=True)
    x = torch.randn(8, 5)
    _trained_norms(mlp, x)
    with torch.no_grad():
        eager = mlp(x)
        compiled = torch.compile(mlp, fullgraph=True)(x)
    torch.testing.assert_close(compiled, eager)
