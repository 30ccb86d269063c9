"""Swap-in: an expert-loop MMoE/PLE written the way torch-rechub / DeepCTR-Torch write them,
converted to the grouped/fused model: same outputs, same gradients."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from mtlkernels.nn.swap import mmoe_from, ple_from
from mtlkernels.reference.expert_loop import LoopMMoE, LoopPLE


def check_same_function(loop, fast, x, apply_sigmoid):
    loop.eval()
    fast.eval()
    y_loop = loop(x)
    y_fast = fast(x)
    torch.testing.assert_close(torch.sigmoid(y_fast) if apply_sigmoid else y_fast, y_loop)
    g = torch.randn_like(y_loop)
    loss_loop = (y_loop * g).sum()
    loss_fast = ((torch.sigmoid(y_fast) if apply_sigmoid else y_fast) * g).sum()
    gl = torch.autograd.grad(loss_loop, list(loop.parameters()))
    gf = torch.autograd.grad(loss_fast, list(fast.parameters()))
    # total squared gradient norm is invariant to how the parameters are stacked
    torch.testing.assert_close(sum(t.square().sum() for t in gf), sum(t.square().sum() for t in gl))
    return gl, gf


def test_mmoe_swap_same_outputs_and_gradients():
    torch.manual_seed(0)
    loop = LoopMMoE(10, 3, 4, (16, 8), (6,)).double()
    fast = mmoe_from(loop.experts, loop.gates, loop.towers)
    x = torch.randn(13, 10, dtype=torch.float64)
    gl, gf = check_same_function(loop, fast, x, apply_sigmoid=False)
    # expert 2's first-layer weight gradient, slice by slice
    names = [n for n, _ in loop.named_parameters()]
    g_loop_e2 = gl[names.index("experts.2.0.weight")]
    g_fast_w = gf[[n for n, _ in fast.named_parameters()].index("experts.layers.0.weight")]
    torch.testing.assert_close(g_fast_w[:, 2].t(), g_loop_e2)


def test_ple_swap_same_outputs_and_gradients():
    torch.manual_seed(1)
    loop = LoopPLE(9, 3, (1, 2, 1), 2, (7,), (4,), num_levels=2).double()
    fast = ple_from([lvl.as_swap_spec() for lvl in loop.levels], loop.towers)
    check_same_function(loop, fast, torch.randn(11, 9, dtype=torch.float64), apply_sigmoid=False)


def test_unsupported_layer_is_named():
    experts = [nn.Sequential(nn.Linear(4, 3), nn.GELU()) for _ in range(2)]
    gates = [nn.Linear(4, 2)]
    towers = [nn.Linear(3, 1)]
    with pytest.raises(ValueError, match="unsupported layer GELU"):
        mmoe_from(experts, gates, towers)


def test_towers_ending_in_sigmoid_become_logits():
    torch.manual_seed(2)
    loop = LoopMMoE(6, 2, 3, (5,), (4,)).double()
    loop.towers = nn.ModuleList(nn.Sequential(t, nn.Sigmoid()) for t in loop.towers)
    fast = mmoe_from(loop.experts, loop.gates, loop.towers)
    check_same_function(loop, fast, torch.randn(7, 6, dtype=torch.float64), apply_sigmoid=True)
