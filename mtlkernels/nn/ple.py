"""CGC and PLE (Tang et al., RecSys 2020; ALGORITHMS.md 1.4-1.5).

Level j holds, for each task k, ``m_k`` task experts, plus ``m_s`` shared experts. Task gate
k mixes its own experts and the shared ones; at every level but the last a shared gate mixes
ALL experts of the level. Level 1 reads ``x``; at level j > 1 task-k experts read task k's
mixture of level j-1 and shared experts read the shared mixture. All experts of a level run
as one grouped product and all gates of a level as one fused ``gate_mix`` call with a
``[gates, experts]`` visibility mask, so unequal expert counts cost nothing extra.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from mtlkernels.nn.base import MultiTaskModel
from mtlkernels.nn.gates import Gates
from mtlkernels.nn.grouped import GroupedMLP
from mtlkernels.nn.pepnet import GateNUs, check_columns, prior_input
from mtlkernels.nn.towers import Towers
from mtlkernels.ops import gate_mix


def expert_layout(task_experts: Sequence[int], shared_experts: int) -> tuple[list[int], list[list[int]]]:
    """Owner of each expert (task index, or T for shared) and the experts each task gate sees.

    Experts are ordered task 0's, task 1's, ..., then the shared ones.
    """
    T = len(task_experts)
    owner = [k for k in range(T) for _ in range(task_experts[k])] + [T] * shared_experts
    shared = [i for i, o in enumerate(owner) if o == T]
    visible = [[i for i, o in enumerate(owner) if o == k] + shared for k in range(T)]
    return owner, visible


class PLELevel(nn.Module):
    """One extraction level: experts of every task and shared, task gates, optional shared gate.

    Input: ``x [B, in]`` at the first level, else ``[B, T+1, in]`` (task mixtures, then the
    shared mixture). Output: ``[B, T+1, D]`` with the shared gate, else ``[B, T, D]``.

    With a shared gate every expert reaches every task, and all X experts are one grouped MLP
    (``experts``). Without one (the last level), a task expert reaches its own task only: when
    the level has both kinds, the task experts are one grouped MLP (``experts``) and the shared
    ones another (``shared``, one product on the common input), so that the task experts are
    parameters of their own, not slices of a tensor the other tasks share.

    ``prior_features`` > 0: PPNet gates on every expert's hidden layers (``expert_gate_nus`` and
    ``shared_gate_nus``, the Gate NUs of ``experts`` and ``shared``), read from a
    ``[B, prior_features]`` prior passed to ``forward``.
    """

    def __init__(self, in_features: int, task_experts: Sequence[int], shared_experts: int,
                 expert_hidden: Sequence[int], *, first: bool, shared_gate: bool, batch_norm: bool, dropout: float,
                 prior_features: int = 0, gate_hidden: int | None = None):
        super().__init__()
        T = len(task_experts)
        owner, visible = expert_layout(task_experts, shared_experts)
        if shared_gate:
            visible = visible + [list(range(len(owner)))]
        self.first = first
        self.num_experts = len(owner)
        self.num_tasks = T
        split = not shared_gate and shared_experts > 0 and sum(task_experts) > 0
        self.num_grouped = sum(task_experts) if split else len(owner)  # experts inside ``experts``
        self.register_buffer("owner", torch.tensor(owner[:self.num_grouped]), persistent=False)
        self.experts = GroupedMLP(self.num_grouped, in_features, expert_hidden, shared_input=first,
                                  batch_norm=batch_norm, dropout=dropout)
        self.shared = (GroupedMLP(shared_experts, in_features, expert_hidden, shared_input=True, batch_norm=batch_norm,
                                  dropout=dropout) if split else None)
        self.expert_gate_nus = (GateNUs(self.num_grouped, prior_features, expert_hidden, gate_hidden)
                                if prior_features else None)
        self.shared_gate_nus = (GateNUs(shared_experts, prior_features, expert_hidden, gate_hidden)
                                if prior_features and split else None)
        self.gates = Gates(visible, len(owner), in_features, shared_input=first, shared_gates=int(shared_gate))
        self.gate_inputs = T + 1 if shared_gate else T

    def expert(self, e: int) -> tuple[GroupedMLP, int]:
        """The grouped MLP holding expert ``e`` (in the level's order: task 0's, ..., shared)
        and its group index inside it."""
        return (self.experts, e) if e < self.num_grouped else (self.shared, e - self.num_grouped)

    def expert_gate_nus_of(self, e: int) -> tuple[GateNUs | None, int]:
        """The Gate NUs of expert ``e`` (None without PPNet gates) and its group index."""
        return ((self.expert_gate_nus, e) if e < self.num_grouped else (self.shared_gate_nus, e - self.num_grouped))

    def forward(self, h: Tensor, prior: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Returns (the level's mixtures ``[B, gates, D]``, its expert outputs ``[B, X, D]``);
        ``prior`` ``[B, prior_features]``: the PPNet gates' input."""
        gates = None if self.expert_gate_nus is None else self.expert_gate_nus(prior)
        if self.first:
            experts = self.experts(h, gates)
            logits = self.gates(h)
        else:
            # each expert reads its owner's mixture; gathered group-major [X, B, in] so the
            # grouped products read their operands without another copy
            experts = self.experts(h.transpose(0, 1).index_select(0, self.owner).transpose(0, 1), gates)
            logits = self.gates(h[:, :self.gate_inputs])
        if self.shared is not None:
            shared = self.shared(h if self.first else h[:, self.num_tasks],
                                 None if self.shared_gate_nus is None else self.shared_gate_nus(prior))
            experts = torch.cat([experts, shared], dim=1)
        mixed = gate_mix(experts, logits, expert_mask=self.gates.expert_mask())
        return mixed, experts


class PLE(MultiTaskModel):
    """Progressive Layered Extraction with ``num_levels`` levels (CGC is one level).

    Args:
        input_dim: width of ``x``.
        num_tasks: T.
        task_experts: experts per task at every level, an int or one count per task (may differ).
        shared_experts: shared experts per level.
        expert_hidden: MLP widths of every expert (each level's experts take the previous
            level's width as input).
        num_levels: N >= 1; levels 1..N-1 have a shared gate (when there are shared experts
            to read its mixture), level N does not.
        expert_gate_columns: PPNet gates on every expert of every level (``mtlkernels.nn.pepnet``):
            expert e's hidden layer l is scaled by ``2 sigmoid(GateNU_{e,l}(x[:, columns] (+) sg(x)))``
            (Gate NU hidden width ``expert_gate_hidden``, default the gated layer's).

    Shared parameters: what more than one task's loss reaches: the experts of the inner levels
    (through the shared gate), the shared gates, the last level's shared experts, and the task
    gates below level N-1 (task k's gate feeds task k's experts at the next level, which the
    shared gate there mixes for everyone); each expert's Gate NUs go with the expert. Task
    specific: the towers, the task gates of the last two levels and the last level's task experts;
    without shared experts, everything (nothing mixes across tasks).
    Representation: the last level's expert outputs ``[B, X, D]``.
    """

    def __init__(self, input_dim: int, num_tasks: int, task_experts: int | Sequence[int] = 4,
                 shared_experts: int = 4, expert_hidden: Sequence[int] = (256, 128),
                 tower_hidden: Sequence[int] = (64,), num_levels: int = 2, *,
                 batch_norm: bool = False, dropout: float = 0.0, expert_gate_columns: Sequence[int] = (),
                 expert_gate_hidden: int | None = None):
        super().__init__()
        counts = [task_experts] * num_tasks if isinstance(task_experts, int) else list(task_experts)
        if len(counts) != num_tasks:
            raise ValueError(f"PLE: task_experts has {len(counts)} counts for {num_tasks} tasks")
        if any(c < 0 for c in counts) or shared_experts < 0:
            raise ValueError(f"PLE: expert counts must be >= 0, got task_experts={counts}, shared={shared_experts}")
        if shared_experts == 0 and min(counts) == 0:
            raise ValueError(f"PLE: task {counts.index(0)} has no expert and there are no shared experts")
        if num_levels < 1:
            raise ValueError(f"PLE: num_levels must be >= 1, got {num_levels}")
        self.num_tasks, self.num_levels = num_tasks, num_levels
        self.task_experts, self.shared_experts = counts, shared_experts
        self.register_buffer("expert_gate_columns", check_columns(expert_gate_columns, input_dim,
                                                                  "PLE expert_gate_columns"), persistent=False)
        prior = len(expert_gate_columns) + input_dim if len(expert_gate_columns) else 0
        width = expert_hidden[-1]
        self.levels = nn.ModuleList(
            PLELevel(input_dim if j == 0 else width, counts, shared_experts, expert_hidden, first=j == 0,
                     shared_gate=j < num_levels - 1 and shared_experts > 0, batch_norm=batch_norm, dropout=dropout,
                     prior_features=prior, gate_hidden=expert_gate_hidden)
            for j in range(num_levels))
        self.towers = Towers(num_tasks, width, tower_hidden, batch_norm=batch_norm, dropout=dropout)

    def task_specific_parameters(self):
        yield from self.towers.parameters()
        if self.shared_experts == 0:
            for level in self.levels:
                yield from level.parameters()
            return
        for level in self.levels[-2:]:
            yield from (level.gates.weight, level.gates.bias)  # the task gates
        if self.levels[-1].shared is not None:
            yield from self.levels[-1].experts.parameters()  # the last level's task experts
            if self.levels[-1].expert_gate_nus is not None:
                yield from self.levels[-1].expert_gate_nus.parameters()

    def shared_parameters(self):
        specific = {id(p) for p in self.task_specific_parameters()}
        return (p for p in self.parameters() if id(p) not in specific)

    def forward(self, x: Tensor, return_representation: bool = False):
        h = x
        experts = None
        prior = prior_input(x, self.expert_gate_columns, x) if self.expert_gate_columns.numel() else None
        for level in self.levels:
            h, experts = level(h, prior)
        logits = self.towers(h)
        return (logits, experts) if return_representation else logits


class CGC(PLE):
    """Customized Gate Control: PLE with one level (no shared gate)."""

    def __init__(self, input_dim: int, num_tasks: int, task_experts: int | Sequence[int] = 4,
                 shared_experts: int = 4, expert_hidden: Sequence[int] = (256, 128),
                 tower_hidden: Sequence[int] = (64,), *, batch_norm: bool = False, dropout: float = 0.0,
                 expert_gate_columns: Sequence[int] = (), expert_gate_hidden: int | None = None):
        super().__init__(input_dim, num_tasks, task_experts, shared_experts, expert_hidden, tower_hidden,
                         num_levels=1, batch_norm=batch_norm, dropout=dropout, expert_gate_columns=expert_gate_columns,
                         expert_gate_hidden=expert_gate_hidden)
