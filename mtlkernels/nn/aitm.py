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

    Shared: whatever produces ``x``. Representation: ``x``. Towers, transfer and attention
    maps are task-specific (each belongs to one step of the funnel).
    """

    _task_specific = ("towers", "transfer", "attention", "heads")

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
        self.towers = GroupedMLP(num_tasks, input_dim, tower_hidden, shared_input=True, dropout=dropout)
        steps = max(num_tasks - 1, 1)
        self.transfer = GroupedLinear(steps, k, k, shared_input=False)
        self.attention = GroupedLinear(steps, k, 3 * k, shared_input=False, bias=False)
        self.heads = GroupedLinear(num_tasks, k, 1, shared_input=False)
        self.dropout = dropout

    def forward(self, x: Tensor, return_representation: bool = False):
        q = self.towers(x)  # [B, T, k]
        z = [q[:, 0]]
        for t in range(1, self.num_tasks):
            s = t - 1
            p = torch.relu(torch.addmm(self.transfer.bias[s], z[-1], self.transfer.weight[s]))
            if self.dropout > 0:
                p = nn.functional.dropout(p, self.dropout, self.training)
            tokens = torch.stack([p, q[:, t]], dim=1)  # [B, 2, k]
            h1, h2, h3 = (tokens @ self.attention.weight[s]).split(self.k, dim=-1)
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
