"""MMoE and PLE written the way the popular libraries write them (torch-rechub,
DeepCTR-Torch, MTReclib): one module call per expert, per gate and per tower, softmax gates
as ``Sequential(Linear, Softmax)``, the mixture as a broadcast multiply and sum. The
baseline of the model benchmarks and the input of the swap-in tests."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def mlp(widths: Sequence[int], final_relu: bool = True, dropout: float = 0.0) -> nn.Sequential:
    """Linear -> ReLU -> Dropout blocks; no ReLU after the last Linear unless ``final_relu``."""
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2 or final_relu:
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class LoopMMoE(nn.Module):
    """Experts in a ModuleList, one softmax gate and one tower (ending in a logit) per task.
    ``forward(x [B, d]) -> logits [B, T]``."""

    def __init__(self, input_dim: int, num_tasks: int, num_experts: int, expert_hidden: Sequence[int],
                 tower_hidden: Sequence[int]):
        super().__init__()
        self.experts = nn.ModuleList(mlp([input_dim, *expert_hidden]) for _ in range(num_experts))
        self.gates = nn.ModuleList(nn.Sequential(nn.Linear(input_dim, num_experts), nn.Softmax(dim=1))
                                   for _ in range(num_tasks))
        self.towers = nn.ModuleList(mlp([expert_hidden[-1], *tower_hidden, 1], final_relu=False)
                                    for _ in range(num_tasks))

    def forward(self, x):
        expert_outs = torch.stack([e(x) for e in self.experts], dim=1)  # [B, X, D]
        logits = [tower((expert_outs * gate(x).unsqueeze(-1)).sum(1)) for gate, tower in zip(self.gates, self.towers)]
        return torch.cat(logits, dim=1)


class LoopPLELevel(nn.Module):
    def __init__(self, in_features: int, task_experts: Sequence[int], shared_experts: int,
                 expert_hidden: Sequence[int], shared_gate: bool):
        super().__init__()
        self.task_experts = nn.ModuleList(nn.ModuleList(mlp([in_features, *expert_hidden]) for _ in range(c))
                                          for c in task_experts)
        self.shared_experts = nn.ModuleList(mlp([in_features, *expert_hidden]) for _ in range(shared_experts))
        self.task_gates = nn.ModuleList(nn.Sequential(nn.Linear(in_features, c + shared_experts), nn.Softmax(-1))
                                        for c in task_experts)
        self.shared_gate = (nn.Sequential(nn.Linear(in_features, sum(task_experts) + shared_experts), nn.Softmax(-1))
                            if shared_gate else None)

    def as_swap_spec(self) -> dict:
        """This level in the form ``mtlkernels.nn.swap.ple_from`` takes."""
        return dict(task_experts=[list(e) for e in self.task_experts], shared_experts=list(self.shared_experts),
                    task_gates=list(self.task_gates), shared_gate=self.shared_gate)


class LoopPLE(nn.Module):
    """PLE: per level, per-task expert lists, shared experts, task gates over (own + shared),
    a shared gate over all experts at inner levels; one tower per task. ``-> logits [B, T]``."""

    def __init__(self, input_dim: int, num_tasks: int, task_experts: Sequence[int], shared_experts: int,
                 expert_hidden: Sequence[int], tower_hidden: Sequence[int], num_levels: int):
        super().__init__()
        self.num_tasks = num_tasks
        self.levels = nn.ModuleList(
            LoopPLELevel(input_dim if j == 0 else expert_hidden[-1], task_experts, shared_experts, expert_hidden,
                         shared_gate=j < num_levels - 1) for j in range(num_levels))
        self.towers = nn.ModuleList(mlp([expert_hidden[-1], *tower_hidden, 1], final_relu=False)
                                    for _ in range(num_tasks))

    def forward(self, x):
        task_in, shared_in = [x] * self.num_tasks, x
        for lvl in self.levels:
            task_out = [[e(task_in[k]) for e in lvl.task_experts[k]] for k in range(self.num_tasks)]
            shared_out = [e(shared_in) for e in lvl.shared_experts]
            new_task = []
            for k in range(self.num_tasks):
                candidates = torch.stack(task_out[k] + shared_out, 1)
                new_task.append((lvl.task_gates[k](task_in[k]).unsqueeze(-1) * candidates).sum(1))
            if lvl.shared_gate is not None:
                candidates = torch.stack(sum(task_out, []) + shared_out, 1)
                shared_in = (lvl.shared_gate(shared_in).unsqueeze(-1) * candidates).sum(1)
            task_in = new_task
        return torch.cat([tower(h) for tower, h in zip(self.towers, task_in)], 1)
