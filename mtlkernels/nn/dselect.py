"""DSelect-k: differentiable selection of k experts per task (Hazimeh et al., NeurIPS 2021;
ALGORITHMS.md 1.9, following the google-research dselect_k_moe code)."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from mtlkernels.nn.base import MultiTaskModel
from mtlkernels.nn.grouped import GroupedMLP
from mtlkernels.nn.towers import Towers

#: inside the entropy's log (the reference code's EPSILON)
ENTROPY_EPS = 1e-6


def smooth_step(t: Tensor, gamma: float) -> Tensor:
    """0 below ``-gamma/2``, 1 above ``gamma/2``, the cubic ``-2t^3/gamma^3 + 3t/(2 gamma) + 1/2``
    between (continuously differentiable, exactly 0 or 1 outside the band)."""
    cubic = -2 * t ** 3 / gamma ** 3 + 3 * t / (2 * gamma) + 0.5
    return torch.where(t <= -gamma / 2, torch.zeros_like(t), torch.where(t >= gamma / 2, torch.ones_like(t), cubic))


class DSelectKGates(nn.Module):
    """G gates over X experts, each the mixture of k single-expert selectors:
    ``q = sum_j softmax(alpha)_j r(z_j)`` with ``r(z)_i = prod_l S(z_l)^{b_l(i)} (1 - S(z_l))^{1 - b_l(i)}``,
    ``b(i)`` the ``m = ceil(log2 X)`` bits of expert i. Once every ``S(z_l)`` is 0 or 1 each
    selector is one-hot, and gate g mixes at most k experts.

    ``in_features=None``: static gates (``z``, ``alpha`` are parameters; output ``[1, G, X]``);
    else per-example gates (``z = A x + b``, ``alpha = C x + d``; output ``[B, G, X]``).
    ``forward`` returns ``(q, r)``: the weights and the selectors ``r`` ``[B or 1, G, k, X]``
    (what ``regularizer`` reads). Initialisation as the reference code: ``z ~ U(-gamma/100,
    gamma/100)``, ``alpha ~ U(-0.05, 0.05)`` (static); the per-example maps get those ranges for
    their biases and, divided by ``sqrt(in_features)``, for their weights.
    """

    def __init__(self, num_gates: int, num_experts: int, k: int, in_features: int | None = None, *,
                 gamma: float = 1.0):
        super().__init__()
        if num_gates < 1 or num_experts < 1:
            raise ValueError(f"DSelectKGates: num_gates and num_experts must be >= 1, got {num_gates}, {num_experts}")
        if not 1 <= k <= num_experts:
            raise ValueError(f"DSelectKGates: k must be in [1, {num_experts}] (the number of experts), got {k}")
        if not gamma > 0:
            raise ValueError(f"DSelectKGates: gamma must be > 0, got {gamma}")
        self.num_gates, self.num_experts, self.k, self.gamma = num_gates, num_experts, k, gamma
        self.bits = math.ceil(math.log2(num_experts)) if num_experts > 1 else 0
        codes = [[(i >> l) & 1 for l in range(self.bits)] for i in range(num_experts)]
        self.register_buffer("codes", torch.tensor(codes, dtype=torch.bool).view(num_experts, self.bits),
                             persistent=False)
        G, m = num_gates, self.bits
        if in_features is None:
            self.z = nn.Parameter(torch.empty(G, k, m))
            self.alpha = nn.Parameter(torch.empty(G, k))
            self.z_map = self.alpha_map = None
        else:
            self.z = self.alpha = None
            self.z_map = nn.Linear(in_features, G * k * m)
            self.alpha_map = nn.Linear(in_features, G * k)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        g = self.gamma / 100
        if self.z is not None:
            nn.init.uniform_(self.z, -g, g)
            nn.init.uniform_(self.alpha, -0.05, 0.05)
        else:
            for lin, bound in ((self.z_map, g), (self.alpha_map, 0.05)):
                nn.init.uniform_(lin.weight, -bound / math.sqrt(lin.in_features), bound / math.sqrt(lin.in_features))
                nn.init.uniform_(lin.bias, -bound, bound)

    def forward(self, x: Tensor | None = None) -> tuple[Tensor, Tensor]:
        G, k, m = self.num_gates, self.k, self.bits
        if self.z is not None:
            z, alpha = self.z.unsqueeze(0), self.alpha.unsqueeze(0)  # [1, G, k, m], [1, G, k]
        else:
            if x is None:
                raise ValueError("DSelectKGates: per-example gates need the input x")
            z = self.z_map(x).view(x.shape[0], G, k, m)
            alpha = self.alpha_map(x).view(x.shape[0], G, k)
        s = smooth_step(z, self.gamma).unsqueeze(-2)  # [., G, k, 1, m]
        r = torch.where(self.codes, s, 1 - s).prod(-1)  # [., G, k, X] (X = 1: m = 0, r = 1)
        q = (torch.softmax(alpha, dim=-1).unsqueeze(-1) * r).sum(-2)  # [., G, X]
        return q, r

    def regularizer(self, r: Tensor) -> Tensor:
        """``[G]``: per gate, the entropy of its selectors ``sum_j H(r_j)`` (batch mean) and, when X
        is not a power of 2, ``sum_j 1 / sum_i r_ji`` (so the unused codes cannot take the mass)."""
        entropy = -(r * torch.log(r + ENTROPY_EPS)).sum(-1)  # [., G, k]
        out = entropy.sum(-1).mean(0)
        if self.num_experts != 1 << self.bits:
            out = out + (1.0 / r.sum(-1)).sum(-1).mean(0)
        return out


class DSelectK(MultiTaskModel):
    """Multi-gate mixture of experts whose gates are DSelect-k gates: task t's tower reads
    ``sum_i q_ti f_i(x)`` with at most k experts of non-zero weight once the gates have converged.

    The experts are one grouped MLP; the mixture is one batched product ``q @ experts`` (the
    weights are no softmax, so not ``gate_mix``). ``extra_task_losses`` adds, per task,
    ``entropy_weight`` times its gate's regulariser (``DSelectKGates.regularizer``) from the latest
    forward. Shared: the experts; task specific: the gates (gate t reaches task t only) and the
    towers. Representation: the expert outputs ``[B, X, D]``. ``per_example=False``: static gates.
    """

    _task_specific = ("gates", "towers")

    def __init__(self, input_dim: int, num_tasks: int, num_experts: int = 8, k: int = 2,
                 expert_hidden: Sequence[int] = (256, 128), tower_hidden: Sequence[int] = (64,), *,
                 per_example: bool = True, gamma: float = 1.0, entropy_weight: float = 1e-6,
                 batch_norm: bool = False, dropout: float = 0.0):
        super().__init__()
        if not entropy_weight >= 0:
            raise ValueError(f"DSelectK: entropy_weight must be >= 0, got {entropy_weight}")
        self.num_tasks, self.num_experts, self.entropy_weight = num_tasks, num_experts, entropy_weight
        self.experts = GroupedMLP(num_experts, input_dim, expert_hidden, shared_input=True, batch_norm=batch_norm,
                                  dropout=dropout)
        self.gates = DSelectKGates(num_tasks, num_experts, k, input_dim if per_example else None, gamma=gamma)
        self.towers = Towers(num_tasks, expert_hidden[-1], tower_hidden, batch_norm=batch_norm, dropout=dropout)
        self.last_selectors: Tensor | None = None

    def forward(self, x: Tensor, return_representation: bool = False):
        experts = self.experts(x)  # [B, X, D]
        q, self.last_selectors = self.gates(x)
        logits = self.towers(torch.matmul(q, experts))  # [B or 1, T, X] @ [B, X, D] -> [B, T, D]
        return (logits, experts) if return_representation else logits

    def extra_task_losses(self, out: Tensor) -> Tensor | None:
        if self.entropy_weight == 0 or self.last_selectors is None:
            return None
        return self.entropy_weight * self.gates.regularizer(self.last_selectors)
