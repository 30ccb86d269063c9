"""Task towers: T small MLPs ending in one logit each, run as grouped matrix products."""
from __future__ import annotations

from torch import Tensor, nn

from mtlkernels.nn.grouped import GroupedMLP


class Towers(nn.Module):
    """T towers ``in -> hidden... -> 1`` (ReLU between layers, no activation on the logit).

    Input ``[B, T, in]`` (one representation per task, e.g. the output of ``gate_mix``) or,
    with ``shared_input=True``, one ``[B, in]`` read by every tower. Output logits ``[B, T]``.
    """

    def __init__(self, num_tasks: int, in_features: int, hidden: tuple[int, ...] | list[int] = (64,), *,
                 shared_input: bool = False, batch_norm: bool = False, dropout: float = 0.0):
        super().__init__()
        self.num_tasks = num_tasks
        self.mlp = GroupedMLP(num_tasks, in_features, [*hidden, 1], shared_input=shared_input,
                              last_activation=False, batch_norm=batch_norm, dropout=dropout)

    def forward(self, x: Tensor, gates: list[Tensor] | None = None) -> Tensor:
        """``gates``: None, or one ``[B, T, hidden[l]]`` PPNet gate-logit tensor per hidden layer
        (the logit layer is never gated)."""
        if gates is not None and len(gates) != len(self.mlp.layers) - 1:
            raise ValueError(f"Towers: gates has {len(gates)} entries for {len(self.mlp.layers) - 1} hidden layers")
        return self.mlp(x, None if gates is None else [*gates, None]).squeeze(-1)
