"""PEPNet / PPNet (Chang et al., KDD 2023; ALGORITHMS.md 1.10): personalised gates that rescale
the embedding (EPNet) and every hidden layer of every task tower (PPNet) by ``2 sigmoid(.)``.

A Gate NU is ``Linear -> ReLU -> Linear``; here the Gate NUs of all G groups of one layer (the T
towers, or the X experts) run as one two-layer ``grouped_mlp`` reading the same prior input,
and their logits go to the gated stack's own ``grouped_mlp`` call, whose epilogue applies
``2 sigmoid(u)`` (and whose backward returns ``u``'s gradient from the same pass): no separate
elementwise passes over the hidden layers. The last layer of every Gate NU starts at zero, so
every gate is exactly 1 at initialisation and the model starts as its ungated counterpart
(the warm start the spec notes).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from mtlkernels.nn.base import MultiTaskModel
from mtlkernels.nn.grouped import GroupedMLP
from mtlkernels.nn.towers import Towers


def check_columns(columns: Sequence[int], input_dim: int, what: str) -> Tensor:
    """``columns`` (indices into the ``[B, input_dim]`` input) as an int64 tensor; ValueError
    naming ``what`` if one is out of range."""
    cols = [int(c) for c in columns]
    bad = [c for c in cols if not 0 <= c < input_dim]
    if bad:
        raise ValueError(f"{what}: columns {bad[:5]} outside the input's {input_dim} columns")
    return torch.tensor(cols, dtype=torch.long)


def prior_input(x: Tensor, columns: Tensor, general: Tensor) -> Tensor:
    """A gate's input: the prior fields' embeddings ``x[:, columns]`` (trained through the gate)
    and the stop-gradient of the general input ``general`` ([B, P + D])."""
    return torch.cat([x.index_select(1, columns), general.detach()], dim=1)


class GateNUs(nn.Module):
    """The Gate NUs of G groups for each of several layers: ``[B, in] -> [[B, G, widths[l]]]``
    gate logits (the consumer applies ``2 sigmoid``). Hidden width ``hidden`` (default: each
    layer's own width, as TorchEasyRec); last layer zero-initialised (gates start at 1)."""

    def __init__(self, groups: int, in_features: int, widths: Sequence[int], hidden: int | None = None):
        super().__init__()
        if hidden is not None and hidden < 1:
            raise ValueError(f"GateNUs: hidden must be >= 1, got {hidden}")
        self.nets = nn.ModuleList(GroupedMLP(groups, in_features, [hidden or w, w], shared_input=True,
                                             last_activation=False) for w in widths)
        for net in self.nets:
            nn.init.zeros_(net.layers[-1].weight)
            nn.init.zeros_(net.layers[-1].bias)

    def forward(self, prior: Tensor) -> list[Tensor]:
        return [net(prior) for net in self.nets]


class PEPNet(MultiTaskModel):
    """PEPNet: EPNet on the embedding, PPNet on every tower layer.

    - EPNet (if ``domain_columns``): ``h = x * 2 sigmoid(GateNU(x[:, domain] (+) sg(x)))``, one
      gate per input column; without domain fields ``h = x``.
    - PPNet: prior ``p = x[:, prior_columns] (+) sg(h)``; tower t's hidden layer l output is
      ``relu(W h_{l-1} + b) * 2 sigmoid(GateNU_{t,l}(p))`` (TorchEasyRec's placement, the gate
      after the activation); the towers end in one logit each.

    ``x`` is the ``FeatureEmbedding`` output ``[B, input_dim]``; the columns are its embedding
    slots (``FeatureSchema.columns``). Shared: EPNet (and the embeddings). Task-specific: the
    towers and their Gate NUs. Representation: ``h`` ``[B, input_dim]``.
    """

    _task_specific = ("towers", "task_gates")

    def __init__(self, input_dim: int, num_tasks: int, prior_columns: Sequence[int],
                 domain_columns: Sequence[int] = (), tower_hidden: Sequence[int] = (256, 128, 64), *,
                 gate_hidden: int | None = None, batch_norm: bool = False, dropout: float = 0.0):
        super().__init__()
        if not prior_columns:
            raise ValueError("PEPNet: prior_columns must name at least one column (the gate fields)")
        if not tower_hidden:
            raise ValueError("PEPNet: tower_hidden must name at least one hidden layer (the gated ones)")
        self.num_tasks = num_tasks
        self.register_buffer("prior_columns", check_columns(prior_columns, input_dim, "PEPNet prior_columns"),
                             persistent=False)
        self.register_buffer("domain_columns", check_columns(domain_columns, input_dim, "PEPNet domain_columns"),
                             persistent=False)
        self.epnet = (GateNUs(1, len(domain_columns) + input_dim, [input_dim], gate_hidden)
                      if len(domain_columns) else None)
        self.towers = Towers(num_tasks, input_dim, tower_hidden, shared_input=True, batch_norm=batch_norm,
                             dropout=dropout)
        self.task_gates = GateNUs(num_tasks, len(prior_columns) + input_dim, tower_hidden, gate_hidden)

    def forward(self, x: Tensor, return_representation: bool = False):
        h = x
        if self.epnet is not None:
            (u,) = self.epnet(prior_input(x, self.domain_columns, x))
            h = x * (2 * torch.sigmoid(u[:, 0]))
        logits = self.towers(h, self.task_gates(prior_input(x, self.prior_columns, h)))
        return (logits, h) if return_representation else logits
