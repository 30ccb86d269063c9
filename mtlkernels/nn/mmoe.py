"""Shared-Bottom, OMoE and MMoE (ALGORITHMS.md 1.1-1.3): experts as grouped matrix products,
gates mixed by the fused ``gate_mix`` kernel."""
from __future__ import annotations

from typing import Sequence

from torch import Tensor

from mtlkernels.nn.base import MultiTaskModel
from mtlkernels.nn.gates import Gates
from mtlkernels.nn.grouped import GroupedMLP
from mtlkernels.nn.pepnet import GateNUs, check_columns, prior_input
from mtlkernels.nn.towers import Towers
from mtlkernels.ops import gate_mix


class SharedBottom(MultiTaskModel):
    """Hard parameter sharing: ``y_t = tower_t(bottom(x))``.

    Shared: the bottom MLP. Task-specific: the towers. Representation: the bottom output ``[B, H]``.
    """

    _task_specific = ("towers",)

    def __init__(self, input_dim: int, num_tasks: int, bottom_hidden: Sequence[int] = (512, 256),
                 tower_hidden: Sequence[int] = (64,), *, batch_norm: bool = False, dropout: float = 0.0):
        super().__init__()
        self.num_tasks = num_tasks
        self.bottom = GroupedMLP(1, input_dim, bottom_hidden, shared_input=True, batch_norm=batch_norm,
                                 dropout=dropout)
        self.towers = Towers(num_tasks, bottom_hidden[-1], tower_hidden, shared_input=True,
                             batch_norm=batch_norm, dropout=dropout)

    def forward(self, x: Tensor, return_representation: bool = False):
        h = self.bottom(x)[:, 0]  # [B, H]
        logits = self.towers(h)
        return (logits, h) if return_representation else logits


class MMoE(MultiTaskModel):
    """Multi-gate mixture of experts (Ma et al., KDD 2018).

    X experts (MLPs ``input_dim -> expert_hidden``) read ``x``; task t mixes them with its own
    softmax gate (linear with bias, as MTReclib/LibMTL) and feeds the mixture to tower t.
    Shared: the experts. Task-specific: gates and towers. Representation: the expert
    outputs ``[B, X, D]``.

    ``expert_gate_columns`` (PPNet on the experts, ``mtlkernels.nn.pepnet``): every hidden layer
    of expert x is scaled by ``2 sigmoid(GateNU_{x,l}(x[:, columns] (+) sg(x)))``, inside the
    experts' fused op (Gate NU hidden width ``expert_gate_hidden``, default each layer's width);
    those Gate NUs are shared parameters (every task reads the experts).
    """

    _task_specific = ("gates", "towers")

    def __init__(self, input_dim: int, num_tasks: int, num_experts: int = 8,
                 expert_hidden: Sequence[int] = (256, 128), tower_hidden: Sequence[int] = (64,), *,
                 batch_norm: bool = False, dropout: float = 0.0, num_gates: int | None = None,
                 expert_gate_columns: Sequence[int] = (), expert_gate_hidden: int | None = None):
        super().__init__()
        self.num_tasks, self.num_experts = num_tasks, num_experts
        gates = num_tasks if num_gates is None else num_gates
        self.experts = GroupedMLP(num_experts, input_dim, expert_hidden, shared_input=True,
                                  batch_norm=batch_norm, dropout=dropout)
        self.register_buffer("expert_gate_columns", check_columns(expert_gate_columns, input_dim,
                                                                  "MMoE expert_gate_columns"), persistent=False)
        self.expert_gates = (GateNUs(num_experts, len(expert_gate_columns) + input_dim, expert_hidden,
                                     expert_gate_hidden)
                             if len(expert_gate_columns) else None)
        self.gates = Gates([list(range(num_experts))] * gates, num_experts, input_dim, shared_input=True)
        self.towers = Towers(num_tasks, expert_hidden[-1], tower_hidden, batch_norm=batch_norm, dropout=dropout)

    def forward(self, x: Tensor, return_representation: bool = False):
        gates = (None if self.expert_gates is None
                 else self.expert_gates(prior_input(x, self.expert_gate_columns, x)))
        experts = self.experts(x, gates)  # [B, X, D]
        mixed = gate_mix(experts, self.gates(x))  # [B, gates, D]
        if mixed.shape[1] != self.num_tasks:  # OMoE: one mixture read by every tower
            mixed = mixed.expand(-1, self.num_tasks, -1)
        logits = self.towers(mixed)
        return (logits, experts) if return_representation else logits


class OMoE(MMoE):
    """One-gate mixture of experts: a single softmax gate whose mixture every tower reads.

    Shared: experts and the gate. Task-specific: towers. Representation: the mixture is
    shared here, but the expert outputs ``[B, X, D]`` are returned for uniformity with MMoE.
    """

    _task_specific = ("towers",)

    def __init__(self, input_dim: int, num_tasks: int, num_experts: int = 8,
                 expert_hidden: Sequence[int] = (256, 128), tower_hidden: Sequence[int] = (64,), *,
                 batch_norm: bool = False, dropout: float = 0.0):
        super().__init__(input_dim, num_tasks, num_experts, expert_hidden, tower_hidden, batch_norm=batch_norm,
                         dropout=dropout, num_gates=1)
