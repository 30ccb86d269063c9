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
