"""Swap-in: an expert-loop MMoE/PLE written the way torch-rechub / DeepCTR-Torch write them,
converted to the grouped/fused model: same outputs, same gradients."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mtlkernels.nn.swap import mmoe_from, ple_from
from mtlkernels.reference.expert_loop import LoopMMoE, LoopPLE


def check_same_function(loop, fast, x, apply_sigmoid, convert):
    """Same outputs, and every fast parameter's gradient equals the loop gradients laid out the
    way ``convert`` lays out the loop's weights (the loop model with its gradients as weights,
    converted)."""
    loop.eval()
    fast.eval()
    y_loop = loop(x)
    y_fast = fast(x)
    torch.testing.assert_close(torch.sigmoid(y_fast) if apply_sigmoid else y_fast, y_loop)
    g = torch.randn_like(y_loop)
    loss_loop = (y_loop * g).sum()
    loss_fast = ((torch.sigmoid(y_fast) if apply_sigmoid else y_fast) * g).sum()
    # a loop PLE without shared experts still has inner shared gates, which feed nothing
    gl = torch.autograd.grad(loss_loop, list(loop.parameters()), allow_unused=True)
    gl = [torch.zeros_like(p) if t is None else t for p, t in zip(loop.parameters(), gl)]
    gf = torch.autograd.grad(loss_fast, list(fast.parameters()))
    as_weights = copy.deepcopy(loop)
    with torch.no_grad():
        for p, grad in zip(as_weights.parameters(), gl):
            p.copy_(grad)
    expected = dict(convert(as_weights).named_parameters())
    for (name, _), got in zip(fast.named_parameters(), gf):
        torch.testing.assert_close(got, expected[name], rtol=1e-10, atol=1e-12, msg=f"gradient of {name}")
    return gl, gf


def test_mmoe_swap_same_outputs_and_gradients():
    torch.manual_seed(0)
    loop = LoopMMoE(10, 3, 4, (16, 8), (6,)).double()
    convert = lambda m: mmoe_from(m.experts, m.gates, m.towers)  # noqa: E731
    fast = convert(loop)
    x = torch.randn(13, 10, dtype=torch.float64)
    gl, gf = check_same_function(loop, fast, x, apply_sigmoid=False, convert=convert)
    # expert 2's first-layer weight gradient, slice by slice
    names = [n for n, _ in loop.named_parameters()]
    g_loop_e2 = gl[names.index("experts.2.0.weight")]
    g_fast_w = gf[[n for n, _ in fast.named_parameters()].index("experts.layers.0.weight")]
    torch.testing.assert_close(g_fast_w[:, 2].t(), g_loop_e2)


def test_ple_swap_same_outputs_and_gradients():
    torch.manual_seed(1)
    loop = LoopPLE(9, 3, (1, 2, 1), 2, (7,), (4,), num_levels=2).double()
    convert = lambda m: ple_from([lvl.as_swap_spec() for lvl in m.levels], m.towers)  # noqa: E731
    fast = convert(loop)
    check_same_function(loop, fast, torch.randn(11, 9, dtype=torch.float64), apply_sigmoid=False, convert=convert)


@pytest.mark.parametrize("counts,shared,levels", [((2, 1), 1, 3), ((1, 2), 0, 2)])
def test_deeper_and_unshared_ple_swap_same_gradients(counts, shared, levels):
    torch.manual_seed(3)
    loop = LoopPLE(8, 2, counts, shared, (6,), (3,), num_levels=levels).double()
    convert = lambda m: ple_from([lvl.as_swap_spec() for lvl in m.levels], m.towers)  # noqa: E731
    check_same_function(loop, convert(loop), torch.randn(9, 8, dtype=torch.float64), apply_sigmoid=False,
                        convert=convert)


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
    convert = lambda m: mmoe_from(m.experts, m.gates, m.towers)  # noqa: E731
    check_same_function(loop, convert(loop), torch.randn(7, 6, dtype=torch.float64), apply_sigmoid=True,
                        convert=convert)
