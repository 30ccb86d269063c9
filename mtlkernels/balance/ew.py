"""Equal weighting: the plain multi-task baseline."""
from __future__ import annotations

import torch
from torch import Tensor

from mtlkernels.balance.base import WeightingMethod


class EW(WeightingMethod):
    """``sum_t L_t`` (``reduction="sum"``, weights 1, the EW-sum convention of ALGORITHMS.md 0.2)
    or ``mean_t L_t`` (``reduction="mean"``, weights 1/T)."""

    def __init__(self, reduction: str = "sum"):
        super().__init__()
        if reduction not in ("sum", "mean"):
            raise ValueError(f"EW: reduction must be 'sum' or 'mean', got {reduction!r}")
        self.reduction = reduction

    def loss_weights(self, losses: Tensor) -> Tensor:
        T = losses.shape[0]
        return torch.full((T,), 1.0 if self.reduction == "sum" else 1.0 / T, dtype=losses.dtype, device=losses.device)
