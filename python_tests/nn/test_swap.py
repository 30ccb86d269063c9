"""Swap-in: an expert-loop MMoE/PLE written the way torch-rechub / DeepCTR-Torch write them,
converted to the grouped/fused model: same outputs, same gradients."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from mtlkernels.nn.swap import mmoe_from, ple_from


def mlp(widths, final_relu=True, dropout=0.0):
    layers = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2 or final_relu:
            layers += [nn.ReLU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


class LoopMMoE(nn.Module):
    """torch-rechub style: a loop over experts, one softmax gate module and one tower per task."""

    def __init__(self, d, T=3, X=4, expert=(16, 8), tower=(6,)):
        super().__init__()
        self.experts = nn.ModuleList(mlp([d, *expert]) for _ in range(X))
        self.gates = nn.ModuleList(nn.Sequential(nn.Linear(d, X), nn.Softmax(dim=1)) for _ in range(T))
        self.towers = nn.ModuleList(nn.Sequential(mlp([expert[-1], *tower, 1], final_relu=False), nn.Sigmoid())
                                    for _ in range(T))

    def forward(self, x):
        expert_outs = torch.stack([e(x) for e in self.experts], dim=1)  # [B, X, D]
        ys = []
        for gate, tower in zip(self.gates, self.towers):
            w = gate(x).unsqueeze(-1)
            ys.append(tower((expert_outs * w).sum(1)))
        return torch.cat(ys, dim=1)


class LoopPLE(nn.Module):
    """torch-rechub style PLE: per level, per-task expert lists, shared experts, task gates,
    a shared gate at inner levels; each task gate sees its own experts then the shared ones."""

    def __init__(self, d, T=2, counts=(1, 2), m_s=2, expert=(8,), levels=2, tower=(4,)):
        super().__init__()
        self.T, self.n_levels = T, levels
        self.levels = nn.ModuleList()
        for j in range(levels):
            inp = d if j == 0 else expert[-1]
            lvl = nn.Module()
            lvl.task_experts = nn.ModuleList(nn.ModuleList(mlp([inp, *expert]) for _ in range(c)) for c in counts)
            lvl.shared_experts = nn.ModuleList(mlp([inp, *expert]) for _ in range(m_s))
            lvl.task_gates = nn.ModuleList(nn.Sequential(nn.Linear(inp, c + m_s), nn.Softmax(-1)) for c in counts)
            lvl.shared_gate = (nn.Sequential(nn.Linear(inp, sum(counts) + m_s), nn.Softmax(-1))
                               if j < levels - 1 else None)
            self.levels.append(lvl)
        self.towers = nn.ModuleList(mlp([expert[-1], *tower, 1], final_relu=False) for _ in range(T))

    def forward(self, x):
        task_in, shared_in = [x] * self.T, x
        for j, lvl in enumerate(self.levels):
            task_out = [[e(task_in[k]) for e in lvl.task_experts[k]] for k in range(self.T)]
            shared_out = [e(shared_in) for e in lvl.shared_experts]
            new_task = []
            for k in range(self.T):
                cand = torch.stack(task_out[k] + shared_out, 1)
                new_task.append((lvl.task_gates[k](task_in[k]).unsqueeze(-1) * cand).sum(1))
            if lvl.shared_gate is not None:
                cand = torch.stack(sum(task_out, []) + shared_out, 1)
                shared_in = (lvl.shared_gate(shared_in).unsqueeze(-1) * cand).sum(1)
            task_in = new_task
        return torch.cat([t(h) for t, h in zip(self.towers, task_in)], 1)


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
    loop = LoopMMoE(10).double()
    fast = mmoe_from(loop.experts, loop.gates, loop.towers)
    x = torch.randn(13, 10, dtype=torch.float64)
    gl, gf = check_same_function(loop, fast, x, apply_sigmoid=True)
    # expert 2's first-layer weight gradient, slice by slice
    names = [n for n, _ in loop.named_parameters()]
    g_loop_e2 = gl[names.index("experts.2.0.weight")]
    g_fast_w = gf[[n for n, _ in fast.named_parameters()].index("experts.layers.0.weight")]
    torch.testing.assert_close(g_fast_w[:, 2].t(), g_loop_e2)


def test_ple_swap_same_outputs_and_gradients():
    torch.manual_seed(1)
    loop = LoopPLE(9, T=3, counts=(1, 2, 1), m_s=2, expert=(7,), levels=2).double()
    levels = [dict(task_experts=[list(e) for e in lvl.task_experts], shared_experts=list(lvl.shared_experts),
                   task_gates=list(lvl.task_gates), shared_gate=lvl.shared_gate) for lvl in loop.levels]
    fast = ple_from(levels, loop.towers)
    check_same_function(loop, fast, torch.randn(11, 9, dtype=torch.float64), apply_sigmoid=False)


def test_unsupported_layer_is_named():
    experts = [nn.Sequential(nn.Linear(4, 3), nn.GELU()) for _ in range(2)]
    gates = [nn.Linear(4, 2)]
    towers = [nn.Linear(3, 1)]
    with pytest.raises(ValueError, match="unsupported layer GELU"):
        mmoe_from(experts, gates, towers)
