"""Softmax gates of MoE layers, G of them over X experts, each seeing a subset of experts.

Parameters are compact, exactly those of G separate ``nn.Linear(in, n_g)`` gates (n_g =
experts gate g may see), stored stacked as ``weight [sum n_g, in]`` and ``bias [sum n_g]``
(the last ``shared_gates`` gates, if any, in ``shared_weight``/``shared_bias`` of their own).
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
        shared_gates: how many of the last gates keep their parameters apart, in
            ``shared_weight``/``shared_bias`` (PLE's shared gate, which mixes for every task,
            while each other gate mixes for one task only).
    """

    def __init__(self, visible: list[list[int]], num_experts: int, in_features: int, *, shared_input: bool,
                 shared_gates: int = 0):
        super().__init__()
        if not visible:
            raise ValueError("Gates: need at least one gate")
        if not 0 <= shared_gates < len(visible):
            raise ValueError(f"Gates: shared_gates must be in [0, {len(visible)}), got {shared_gates}")
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
        self.own_gates = len(visible) - shared_gates  # gates in ``weight``/``bias``
        own = sum(counts[:self.own_gates])
        self.weight = nn.Parameter(torch.empty(own, in_features))
        self.bias = nn.Parameter(torch.empty(own))
        self.shared_weight = nn.Parameter(torch.empty(sum(counts) - own, in_features)) if shared_gates else None
        self.shared_bias = nn.Parameter(torch.empty(sum(counts) - own)) if shared_gates else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.in_features)
        for p in (self.weight, self.bias, self.shared_weight, self.shared_bias):
            if p is not None:
                nn.init.uniform_(p, -bound, bound)

    def gate_parameters(self, g: int) -> tuple[Tensor, Tensor]:
        """``(weight [n_g, in], bias [n_g])`` of gate g, as views in ``nn.Linear`` convention."""
        if g < self.own_gates:
            w, b, start = self.weight, self.bias, sum(self.counts[:g])
        else:
            w, b, start = self.shared_weight, self.shared_bias, sum(self.counts[self.own_gates:g])
        return w[start:start + self.counts[g]], b[start:start + self.counts[g]]

    def _stacked(self) -> tuple[Tensor, Tensor]:
        if self.shared_weight is None:
            return self.weight, self.bias
        return torch.cat([self.weight, self.shared_weight]), torch.cat([self.bias, self.shared_bias])

    def expert_mask(self) -> Tensor | None:
        """The ``[G, X]`` visibility mask, or None when every gate sees every expert."""
        return None if self.dense else self.mask

    def _full(self) -> tuple[Tensor, Tensor]:
        G, X = self.num_gates, self.num_experts
        weight, bias = self._stacked()
        if self.dense:
            return weight, bias
        w = weight.new_zeros(G * X, self.in_features).index_copy(0, self.positions, weight)
        b = bias.new_zeros(G * X).index_copy(0, self.positions, bias)
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
