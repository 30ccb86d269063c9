"""G parallel MLPs computed as grouped matrix products: the experts of an MoE layer, the
towers of the tasks. Never a Python loop over the groups.

Layout: a layer whose input is shared by all groups (``[B, in]``) stores its weight as
``[in, G, out]`` and runs as ONE matrix product ``[B, in] @ [in, G*out]``; a layer whose
input differs per group (``[G, B, in]``) stores ``[G, in, out]`` and runs as one batched
product. Bias is fused into the product (addmm/baddbmm) and ReLU is applied in place.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_ACTIVATIONS = {"relu", "none"}


class GroupedLinear(nn.Module):
    """G independent ``Linear(in_features, out_features)`` maps.

    Args:
        groups: G.
        shared_input: True if every group reads the same ``[B, in]`` input; the output is then
            ``[B, G, out]``. False: input ``[G, B, in]`` (any strides), output ``[G, B, out]``.

    Initialisation matches ``nn.Linear`` (Kaiming-uniform weights, fan-in-uniform bias) per group.
    """

    def __init__(self, groups: int, in_features: int, out_features: int, *, shared_input: bool, bias: bool = True):
        super().__init__()
        if groups < 1 or in_features < 1 or out_features < 1:
            raise ValueError(f"GroupedLinear: groups, in_features and out_features must be >= 1, got "
                             f"{groups}, {in_features}, {out_features}")
        self.groups, self.in_features, self.out_features = groups, in_features, out_features
        self.shared_input = shared_input
        shape = (in_features, groups, out_features) if shared_input else (groups, in_features, out_features)
        self.weight = nn.Parameter(torch.empty(shape))
        self.bias = nn.Parameter(torch.empty(groups, out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.in_features)
        # kaiming_uniform_(a=sqrt(5)) of nn.Linear reduces to U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def group_weight(self, g: int) -> Tensor:
        """``[out, in]`` weight of group g, in ``nn.Linear`` convention (a view)."""
        w = self.weight[:, g] if self.shared_input else self.weight[g]
        return w.t()

    def forward(self, x: Tensor, relu: bool = False) -> Tensor:
        """``relu=True`` applies ReLU in place on the product itself, before any view, so
        autograd keeps no copy of the pre-activation."""
        if self.shared_input:
            if x.dim() != 2 or x.shape[1] != self.in_features:
                raise ValueError(f"GroupedLinear: expected input [B, {self.in_features}], got {tuple(x.shape)}")
            w = self.weight.reshape(self.in_features, self.groups * self.out_features)
            y = x @ w if self.bias is None else torch.addmm(self.bias.reshape(-1), x, w)
            if relu:
                y = torch.relu_(y)
            return y.view(x.shape[0], self.groups, self.out_features)
        if x.dim() != 3 or x.shape[0] != self.groups or x.shape[2] != self.in_features:
            raise ValueError(f"GroupedLinear: expected input [{self.groups}, B, {self.in_features}], "
                             f"got {tuple(x.shape)}")
        y = torch.bmm(x, self.weight) if self.bias is None else torch.baddbmm(self.bias.unsqueeze(1), x, self.weight)
        return torch.relu_(y) if relu else y

    def extra_repr(self) -> str:
        return (f"groups={self.groups}, in_features={self.in_features}, out_features={self.out_features}, "
                f"shared_input={self.shared_input}, bias={self.bias is not None}")


class GroupedMLP(nn.Module):
    """G parallel MLPs ``in -> hidden[0] -> ... -> hidden[-1]``, each layer Linear, optional
    BatchNorm, activation, dropout (the MTReclib/torch-rechub layer order).

    Input ``[B, in]`` when ``shared_input`` (e.g. experts reading the feature vector) or
    ``[G, B, in]``. Output ``[G, B, hidden[-1]]`` (possibly a transposed view: use
    ``.transpose(0, 1)`` for ``[B, G, out]``, which the gate mixture reads without a copy).
    ``activation="none"`` on the last layer gives raw outputs (tower logits).
    """

    def __init__(self, groups: int, in_features: int, hidden: list[int] | tuple[int, ...], *,
                 shared_input: bool, activation: str = "relu", last_activation: bool = True,
                 batch_norm: bool = False, dropout: float = 0.0):
        super().__init__()
        hidden = list(hidden)
        if not hidden:
            raise ValueError("GroupedMLP: hidden must name at least one layer width")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"GroupedMLP: activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"GroupedMLP: dropout must be in [0, 1), got {dropout}")
        self.groups = groups
        self.shared_input = shared_input
        self.activation, self.last_activation, self.dropout = activation, last_activation, dropout
        widths = [in_features, *hidden]
        self.layers = nn.ModuleList(
            GroupedLinear(groups, widths[i], widths[i + 1], shared_input=shared_input and i == 0)
            for i in range(len(hidden)))
        # BatchNorm after every layer that is followed by the activation (not after raw logits)
        normed = len(hidden) if last_activation else len(hidden) - 1
        self.norms = nn.ModuleList(nn.BatchNorm1d(groups * w) for w in hidden[:normed]) if batch_norm else None
        self.out_features = hidden[-1]

    def forward(self, x: Tensor) -> Tensor:
        h = x
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            activated = i < last or self.last_activation
            h = layer(h, relu=activated and self.activation == "relu" and self.norms is None)
            if layer.shared_input:
                h = h.transpose(0, 1)  # [B, G, out] -> [G, B, out] view
            if activated:
                if self.norms is not None:
                    h = self._batch_norm(self.norms[i], h)
                    if self.activation == "relu":
                        h = F.relu(h)
                if self.dropout > 0:
                    h = F.dropout(h, self.dropout, self.training)
        return h

    @staticmethod
    def _batch_norm(norm: nn.BatchNorm1d, h: Tensor) -> Tensor:
        G, B, W = h.shape
        flat = h.transpose(0, 1).reshape(B, G * W)
        return norm(flat).view(B, G, W).transpose(0, 1)
