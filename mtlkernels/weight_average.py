"""An exponential moving average of a model's weights, the weights a run scores and saves.

Polyak-Ruppert averaging in its exponential form (Polyak and Juditsky, SIAM J. Control Optim.
1992; the EMA of the weights as in Tarvainen and Valpola, NeurIPS 2017): after the n-th
optimiser step ``w_avg <- d_n * w_avg + (1 - d_n) * w``, starting from the first step's
weights, with ``d_n = min(decay, (1 + n) / (10 + n))`` (the warm-up of TensorFlow's
``ExponentialMovingAverage(num_updates=...)``): a short run is not dominated by its first
steps, and from about ``9 / (1 - decay)`` steps on the average spans ``1 / (1 - decay)`` steps.
Only parameters are averaged; buffers (batch-norm statistics, fitted dense-bin edges) are the
trained model's own. Built on ``torch.optim.swa_utils.AveragedModel``.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel


class WeightAverage:
    """The EMA of ``model``'s parameters, at most ``decay`` (in (0, 1)) per ``update``."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"WeightAverage: decay must be in (0, 1), got {decay!r}")
        self.decay = decay
        self._averaged = AveragedModel(model, multi_avg_fn=self._lerp, use_buffers=False)

    @property
    def steps(self) -> int:
        """Updates so far (0: nothing averaged yet)."""
        return int(self._averaged.n_averaged)

    def step_decay(self, n: int) -> float:
        """The decay of the update after ``n`` updates (n >= 1)."""
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def _lerp(self, averaged: list[Tensor], current: list[Tensor], n_averaged: Tensor) -> None:
        torch._foreach_lerp_(averaged, current, 1.0 - self.step_decay(int(n_averaged)))

    def update(self, model: nn.Module) -> None:
        """Folds ``model``'s current parameters in (after an optimiser step) and copies its
        buffers, which the averaged model keeps until the next update."""
        self._averaged.update_parameters(model)

    def model(self, trained: nn.Module) -> nn.Module:
        """The averaged model (its buffers ``trained``'s at the last update); ``trained`` itself
        before the first update."""
        return trained if self.steps == 0 else self._averaged.module

    def load(self, averaged: dict[str, Any], steps: int) -> None:
        """Restores a saved average: the averaged model's state dict and the update count."""
        if steps:
            self._averaged.module.load_state_dict(averaged)
        self._averaged.n_averaged.fill_(steps)
