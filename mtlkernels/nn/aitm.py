"""AITM: adaptive information transfer between the tasks of a conversion funnel
(Xi et al., KDD 2021; ALGORITHMS.md 1.8)."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from mtlkernels.nn.base import MultiTaskModel
from mtlkernels.nn.grouped import GroupedLinear, GroupedMLP
from mtlkernels.nn.losses import bce_from_logits
from mtlkernels.ops import gate_mix


class AITM(MultiTaskModel):
    """Funnel tasks t = 1..T (e.g. click -> purchase), each later step sparser.

    ``q_t`` = tower t (``input_dim -> tower_hidden``, width k = tower_hidden[-1]). ``z_1 = q_1``;
    for t >= 2 the transferred information ``p = relu(g_t(z_{t-1}))`` and ``q_t`` are mixed by a
    two-token attention ``z_t = sum_u softmax_u(<h2 u, h3 u> / sqrt(k)) h1 u`` (h1..h3 linear,
    no bias, per task; the ``Q.K`` form of the official code, not AITM-torch's ``Q.V``). The
    two-token softmax-and-sum is the fused ``gate_mix``. Logits ``[B, T] = v_t . z_t + b_t``.
    Official sizes: towers 128 -> 64 -> 32, k = 32.

    Shared: whatever produces ``x``, and every tower, transfer and attention map but the last
    task's, since the information transfer carries tower t into every later task's logit.
    Task specific: the last task's tower (``last_tower``), the last transfer and attention maps
    and the heads (head t reaches task t's logit only; the calibrator couples neighbouring
    tasks' losses, not their logits). Representation: ``x``.
    """

    def __init__(self, input_dim: int, num_tasks: int, tower_hidden: Sequence[int] = (128, 64, 32), *,
                 dropout: float = 0.0, calibrator_alpha: float = 0.6):
        super().__init__()
        if not calibrator_alpha >= 0:
            raise ValueError(f"AITM: calibrator_alpha must be >= 0, got {calibrator_alpha}")
        self.calibrator_alpha = calibrator_alpha
        if num_tasks < 1:
            raise ValueError(f"AITM: num_tasks must be >= 1, got {num_tasks}")
        self.num_tasks = num_tasks
        k = tower_hidden[-1]
        self.k = k
        # towers of tasks 0..T-2 in one grouped product, the last task's apart (task specific)
        self.towers = (GroupedMLP(num_tasks - 1, input_dim, tower_hidden, shared_input=True, dropout=dropout)
                       if num_tasks > 1 else None)
        self.last_tower = GroupedMLP(1, input_dim, tower_hidden, shared_input=True, dropout=dropout)
        # step s carries task s into task s + 1: weight [k, k] (transfer), [k, 3k] (attention)
        self.transfer = nn.ParameterList(nn.Parameter(torch.empty(k, k)) for _ in range(num_tasks - 1))
        self.transfer_bias = nn.ParameterList(nn.Parameter(torch.empty(k)) for _ in range(num_tasks - 1))
        self.attention = nn.ParameterList(nn.Parameter(torch.empty(k, 3 * k)) for _ in range(num_tasks - 1))
        self.heads = GroupedLinear(num_tasks, k, 1, shared_input=False)
        self.dropout = dropout
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The transfer and attention maps as ``nn.Linear(k, .)`` initialises its weights."""
        bound = 1.0 / math.sqrt(self.k)
        for p in (*self.transfer, *self.transfer_bias, *self.attention):
            nn.init.uniform_(p, -bound, bound)

    def tower_outputs(self, x: Tensor) -> Tensor:
        """``q [B, T, k]``: every task's tower on ``x``."""
        last = self.last_tower(x)
        return last if self.towers is None else torch.cat([self.towers(x), last], dim=1)

    def task_specific_parameters(self):
        yield from self.last_tower.parameters()
        if self.num_tasks > 1:
            yield from (self.transfer[-1], self.transfer_bias[-1], self.attention[-1])
        yield from self.heads.parameters()

    def forward(self, x: Tensor, return_representation: bool = False):
        q = self.tower_outputs(x)  # [B, T, k]
        z = [q[:, 0]]
        for t in range(1, self.num_tasks):
            s = t - 1
            p = torch.relu(torch.addmm(self.transfer_bias[s], z[-1], self.transfer[s]))
            if self.dropout > 0:
                p = nn.functional.dropout(p, self.dropout, self.training)
            tokens = torch.stack([p, q[:, t]], dim=1)  # [B, 2, k]
            h1, h2, h3 = (tokens @ self.attention[s]).split(self.k, dim=-1)
            scores = (h2 * h3).sum(-1, keepdim=True).transpose(1, 2) / math.sqrt(self.k)  # [B, 1, 2]
            z.append(gate_mix(h1, scores)[:, 0])
        logits = self.heads(torch.stack(z, dim=1)).squeeze(-1)  # [B, T]
        return (logits, x) if return_representation else logits

    @staticmethod
    def calibrator(logits: Tensor, alpha: float = 0.6) -> Tensor:
        """``[T]``: 0 for the first task, ``alpha * mean_i relu(yhat_t - yhat_{t-1})`` for t >= 2
        (the behavioural expectation calibrator: a later funnel step may not be likelier)."""
        probs = torch.sigmoid(logits)
        penalty = torch.relu(probs[:, 1:] - probs[:, :-1]).mean(dim=0)
        return torch.cat([penalty.new_zeros(1), alpha * penalty])

    def extra_task_losses(self, logits: Tensor) -> Tensor:
        return self.calibrator(logits, self.calibrator_alpha)

    @staticmethod
    def loss(logits: Tensor, labels: Tensor, alpha: float = 0.6) -> Tensor:
        """Per-task losses ``[T]``: ``BCE_t + alpha * mean_i relu(yhat_t - yhat_{t-1})`` for t >= 2
        (the behavioural expectation calibrator, official alpha 0.6, batch mean), ``BCE_1`` for t = 1.
        ``labels`` ``[B, T]`` of 0/1."""
        if labels.shape != logits.shape:
            raise ValueError(f"AITM.loss: labels must be [B, T] = {tuple(logits.shape)}, got {tuple(labels.shape)}")
        return bce_from_logits(logits, labels) + AITM.calibrator(logits, alpha)
