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
        self._weight = 1.0  # of the new weights in the update in progress
        self._averaged = AveragedModel(model, multi_avg_fn=self._lerp, use_buffers=False)
        self._steps = 0  # the averaged model's count, as a Python int

    @property
    def steps(self) -> int:
        """Updates so far (0: nothing averaged yet)."""
        return self._steps

    def step_decay(self, n: int) -> float:
        """The decay of the update after ``n`` updates (n >= 1)."""
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def _lerp(self, averaged: list[Tensor], current: list[Tensor], _n_averaged: Tensor) -> None:
        torch._foreach_lerp_(averaged, current, self._weight)

    def update(self, model: nn.Module) -> None:
        """Folds ``model``'s current parameters in (after an optimiser step); copies its buffers."""
        if self._steps:
            self._weight = 1.0 - self.step_decay(self._steps)
        self._averaged.update_parameters(model)
        self._steps += 1

    def model(self, trained: nn.Module) -> nn.Module:
        """The averaged model, its buffers those of ``trained``; ``trained`` itself before the
        first update."""
        if self._steps == 0:
            return trained
        averaged = self._averaged.module
        for mine, theirs in zip(averaged.buffers(), trained.buffers(), strict=True):
            mine.copy_(theirs)
        return averaged

    def load(self, averaged: dict[str, Any], steps: int) -> None:
        """Restores a saved average: the averaged model's state dict and the update count."""
        if steps:
            self._averaged.module.load_state_dict(averaged)
        self._averaged.n_averaged.fill_(steps)
        self._steps = steps
