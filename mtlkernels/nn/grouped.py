"""G parallel MLPs computed as grouped matrix products: the experts of an MoE layer, the
towers of the tasks. Never a Python loop over the groups.

Layout: batch-major, every activation ``[B, G, width]`` (what ``gate_mix`` reads and writes).
A layer whose input is shared by all groups (``[B, in]``) stores its weight as ``[in, G, out]``
and runs as ONE matrix product ``[B, in] @ [in, G*out]``; a layer whose input differs per group
(``[B, G, in]``) stores ``[G, in, out]``. Both run through the fused ``grouped_mlp`` op (bias and
ReLU, and in the backward the ReLU mask and the bias gradient, fused into one pass each), a whole
Linear/ReLU stack in one call. With batch norm, evaluation without autograd folds each norm's
running statistics and affine map into its layer's weight and bias, so serving runs the same
single fused call as a model without batch norm.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlkernels.ops import grouped_mlp

_ACTIVATIONS = {"relu", "none"}


class GroupedLinear(nn.Module):
    """G independent ``Linear(in_features, out_features)`` maps.

    Args:
        groups: G.
        shared_input: True if every group reads the same ``[B, in]`` input; False: input
            ``[B, G, in]`` (any strides). The output is ``[B, G, out]`` either way.

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

    def forward(self, x: Tensor, relu: bool = False, gate: Tensor | None = None) -> Tensor:
        """``[B, in]`` or ``[B, G, in]`` -> ``[B, G, out]``; ``relu=True`` fuses a ReLU, ``gate``
        (``[B, G, out]`` logits u) fuses the PPNet scaling by ``2 sigmoid(u)`` after it."""
        return grouped_mlp(x, [self.weight], [self.bias], [relu], shared_input=self.shared_input,
                           gates=None if gate is None else [gate])

    def extra_repr(self) -> str:
        return (f"groups={self.groups}, in_features={self.in_features}, out_features={self.out_features}, "
                f"shared_input={self.shared_input}, bias={self.bias is not None}")


class GroupedMLP(nn.Module):
    """G parallel MLPs ``in -> hidden[0] -> ... -> hidden[-1]``, each layer Linear, optional
    BatchNorm, activation, dropout (the MTReclib/torch-rechub layer order).

    Input ``[B, in]`` when ``shared_input`` (e.g. experts reading the feature vector) or
    ``[B, G, in]``; output ``[B, G, hidden[-1]]``. ``last_activation=False`` leaves the last
    layer raw (tower logits). Without batch norm and active dropout the whole stack is one
    fused ``grouped_mlp`` call; so is it with batch norm in evaluation mode without autograd
    (the running statistics folded into the weights, ``folded_parameters``); otherwise each layer
    is one call followed by the norm, ReLU and dropout.
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
        self._folded: tuple[tuple, list[Tensor], list[Tensor]] | None = None  # (key, weights, biases)

    def _activated(self, i: int) -> bool:
        return i < len(self.layers) - 1 or self.last_activation

    def folded_parameters(self) -> tuple[list[Tensor], list[Tensor]]:
        """Per layer, the weight and bias with the layer's batch norm (evaluation form, its
        running statistics) folded in: ``BN(h W + b) = h (W s) + (b - mean) s + beta`` with
        ``s = gamma / sqrt(var + eps)`` per output channel (group-major, as the norm reads
        ``[B, G * width]``); layers without a norm unchanged. Without autograd (a serving
        forward) the result is kept until a parameter or statistic changes (their version
        counters and storage), so repeated calls cost nothing; it holds one copy of the
        weights."""
        tensors = [t for layer in self.layers for t in (layer.weight, layer.bias)]
        # the norm's forward updates its running statistics without bumping their version
        # counters, but always counts the batch in num_batches_tracked (in place: bumped)
        tensors += [t for n in self.norms
                    for t in (n.weight, n.bias, n.running_mean, n.running_var, n.num_batches_tracked)]
        cache = not torch.is_grad_enabled() and not torch.compiler.is_compiling()
        key = tuple((t._version, t.data_ptr()) for t in tensors if t is not None) if cache else None
        if cache and self._folded is not None and self._folded[0] == key:
            return self._folded[1], self._folded[2]
        weights, biases = [], []
        for i, layer in enumerate(self.layers):
            w, b = layer.weight, layer.bias
            if i < len(self.norms):
                n = self.norms[i]
                G, W = self.groups, layer.out_features
                scale = n.running_var.add(n.eps).rsqrt()
                if n.weight is not None:
                    scale = scale * n.weight
                shift = (b.reshape(-1) if b is not None else 0) - n.running_mean
                shift = shift * scale + (n.bias if n.bias is not None else 0)
                w = w * scale.view(1, G, W) if layer.shared_input else w * scale.view(G, 1, W)
                b = shift.view(G, W)
            weights.append(w)
            biases.append(b)
        if cache:
            self._folded = (key, weights, biases)
        return weights, biases

    def forward(self, x: Tensor, gates: list[Tensor | None] | None = None) -> Tensor:
        """``gates``: None, or per layer None or ``[B, G, width_l]`` PPNet gate logits u: layer l's
        activated output is multiplied by ``2 sigmoid(u)`` (before its dropout, as TorchEasyRec's
        PPNet), fused into the layer's epilogue."""
        if gates is not None and len(gates) != len(self.layers):
            raise ValueError(f"GroupedMLP: gates has {len(gates)} entries for {len(self.layers)} layers")
        gates = gates if gates is not None else [None] * len(self.layers)
        serving_norms = (self.norms is not None and not self.training and not torch.is_grad_enabled()
                         and all(n.track_running_stats for n in self.norms))
        if (self.norms is None and (self.dropout == 0 or not self.training)) or serving_norms:
            relu = [self._activated(i) and self.activation == "relu" for i in range(len(self.layers))]
            weights, biases = (self.folded_parameters() if serving_norms else
                               ([layer.weight for layer in self.layers], [layer.bias for layer in self.layers]))
            return grouped_mlp(x, weights, biases, relu, shared_input=self.shared_input, gates=gates)
        h = x
        for i, layer in enumerate(self.layers):
            activated = self._activated(i)
            fused = self.norms is None or not activated  # the gate (and ReLU) in the layer's epilogue
            h = layer(h, relu=activated and self.activation == "relu" and self.norms is None,
                      gate=gates[i] if fused else None)
            if activated:
                if self.norms is not None:
                    B, G, W = h.shape
                    h = self.norms[i](h.reshape(B, G * W)).view(B, G, W)
                    if self.activation == "relu":
                        h = F.relu(h)
                    if gates[i] is not None:
                        h = h * (2 * torch.sigmoid(gates[i]))
                if self.dropout > 0:
                    h = F.dropout(h, self.dropout, self.training)
        return h
