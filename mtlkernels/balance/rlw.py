"""Random Loss Weighting (Lin et al., TMLR 2022; ALGORITHMS.md 2.4)."""
from __future__ import annotations

import torch
from torch import Tensor

from mtlkernels.balance.base import WeightingMethod
from mtlkernels.balance.random_order import CounterDraws


class RLW(WeightingMethod):
    """Every step ``lambda = softmax(z)``, ``z ~ N(0, I_T)`` (the normal of LibMTL, nash-mtl,
    TorchJD and the authors' code), then ``sum_t lambda_t L_t``. Weights sum to 1 (a mean-like
    scale: the effective learning rate is T times smaller than EW-sum's). The draws are
    counter-based on the losses' device, seeded from ``torch.manual_seed`` unless ``seed`` is
    given, and resume from ``state_dict()``."""

    def __init__(self, seed: int | None = None):
        super().__init__()
        self.draws = CounterDraws(seed)

    def loss_weights(self, losses: Tensor) -> Tensor:
        z = self.draws.normal(losses.shape[0], losses.device)
        return torch.softmax(z, dim=0).to(losses.dtype)
