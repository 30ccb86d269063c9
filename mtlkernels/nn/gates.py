"""Softmax gates of MoE layers, G of them over X experts, each seeing a subset of experts.

Parameters are compact, exactly those of G separate ``nn.Linear(in, n_g)`` gates (n_g =
experts gate g may see), stored stacked as ``weight [sum n_g, in]`` and ``bias [sum n_g]``.
The forward scatters them into one ``[G*X, in]`` matrix (a few kB) so all gates run as one
matrix product; the logits of hidden experts are then ignored by ``gate_mix``'s mask.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mtlkernels.ops import grouped_mlp


class Gates(nn.Module):
    """G linear gates producing logits ``[B, G, X]`` and the visibility mask ``[G, X]``.

    Args:
        visible: G lists of expert indices, ``visible[g]`` = experts gate g mixes (non-empty).
        num_experts: X.
        in_features: input width of every gate.
        shared_input: True if all gates read one ``[B, in]`` input; else input ``[B, G, in]``
            (gate g reads ``x[:, g]``).
    """

    def __init__(self, visible: list[list[int]], num_experts: int, in_features: int, *, shared_input: bool):
        super().__init__()
        if not visible:
            raise ValueError("Gates: need at least one gate")
        for g, idx in enumerate(visible):
            if not idx:
                raise ValueError(f"Gates: gate {g} sees no expert")
            if min(idx) < 0 or max(idx) >= num_experts or len(set(idx)) != len(idx):
                raise ValueError(f"Gates: gate {g} expert indices {idx} must be distinct and in [0, {num_experts})")
        self.num_gates, self.num_experts, self.in_features = len(visible), num_experts, in_features
        self.shared_input = shared_input
        counts = [len(idx) for idx in visible]
        positions = torch.tensor([g * num_experts + x for g, idx in enumerate(visible) for x in idx])
        mask = torch.zeros(self.num_gates * num_experts, dtype=torch.bool)
        mask[positions] = True
        self.register_buffer("positions", positions, persistent=False)
        self.register_buffer("mask", mask.view(self.num_gates, num_experts), persistent=False)
        self.counts = counts
        self.dense = all(c == num_experts for c in counts)  # every gate sees every expert
        self.weight = nn.Parameter(torch.empty(sum(counts), in_features))
        self.bias = nn.Parameter(torch.empty(sum(counts)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def gate_parameters(self, g: int) -> tuple[Tensor, Tensor]:
        """``(weight [n_g, in], bias [n_g])`` of gate g, as views in ``nn.Linear`` convention."""
        start = sum(self.counts[:g])
        return self.weight[start:start + self.counts[g]], self.bias[start:start + self.counts[g]]

    def expert_mask(self) -> Tensor | None:
        """The ``[G, X]`` visibility mask, or None when every gate sees every expert."""
        return None if self.dense else self.mask

    def _full(self) -> tuple[Tensor, Tensor]:
        G, X = self.num_gates, self.num_experts
        if self.dense:
            return self.weight, self.bias
        w = self.weight.new_zeros(G * X, self.in_features).index_copy(0, self.positions, self.weight)
        b = self.bias.new_zeros(G * X).index_copy(0, self.positions, self.bias)
        return w, b

    def forward(self, x: Tensor) -> Tensor:
        G, X = self.num_gates, self.num_experts
        w, b = self._full()
        if self.shared_input:
            return torch.addmm(b, x, w.t()).view(x.shape[0], G, X)
        if x.dim() != 3 or x.shape[1] != G:
            raise ValueError(f"Gates: expected per-gate input [B, {G}, {self.in_features}], got {tuple(x.shape)}")
        return grouped_mlp(x, [w.view(G, X, self.in_features).transpose(1, 2)], [b.view(G, X)], [False],
                           shared_input=False)

    def extra_repr(self) -> str:
        return (f"gates={self.num_gates}, experts={self.num_experts}, in_features={self.in_features}, "
                f"visible={self.counts}, shared_input={self.shared_input}")
