"""Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019; ALGORITHMS.md 2.3)."""
from __future__ import annotations

import torch
from torch import Tensor

from mtlkernels.balance.base import GrowingBuffers, WeightingMethod


class DWA(GrowingBuffers, WeightingMethod):
    """Epoch-level DWA as in the official MTAN code: ``lambda_k = T softmax_k(r_k / tau)`` with
    ``r_k = L_k(e-1) / L_k(e-2)`` the ratio of the task's mean training loss over the last two
    completed epochs; weights 1 during the first two epochs (warm-up). Call ``end_epoch()``
    after each epoch; the method averages the losses it saw meanwhile. Weights sum to T.
    ``temperature`` tau defaults to 2. History is in ``state_dict()``; it moves to the losses'
    device on the first step there, so a step reads nothing back to the host (``end_epoch``
    does, once an epoch).
    """

    _growing_buffers = ("epoch_means",)

    def __init__(self, num_tasks: int, temperature: float = 2.0):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"DWA: temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.register_buffer("epoch_means", torch.zeros(0, num_tasks, dtype=torch.float64))
        self.register_buffer("running_sum", torch.zeros(num_tasks, dtype=torch.float64))
        self.register_buffer("running_count", torch.zeros((), dtype=torch.int64))

    def loss_weights(self, losses: Tensor) -> Tensor:
        T = self.running_sum.numel()
        if losses.shape[0] != T:
            raise ValueError(f"DWA: {losses.shape[0]} losses for {T} tasks")
        if self.running_sum.device != losses.device:
            for name in ("epoch_means", "running_sum", "running_count"):
                setattr(self, name, getattr(self, name).to(losses.device))
        self.running_sum += losses.detach().double()
        self.running_count += 1
        if self.epoch_means.shape[0] < 2:
            return torch.ones(T, dtype=losses.dtype, device=losses.device)
        ratio = self.epoch_means[-1] / self.epoch_means[-2].clamp_min(1e-12)
        return (T * torch.softmax(ratio / self.temperature, dim=0)).to(losses.dtype)

    def end_epoch(self) -> None:
        """Closes the current epoch: its mean losses enter the history."""
        if int(self.running_count) == 0:
            raise RuntimeError("DWA.end_epoch: no loss was seen since the last epoch ended")
        mean = self.running_sum / self.running_count
        self.epoch_means = torch.cat([self.epoch_means, mean[None]])[-2:]
        self.running_sum.zero_()
        self.running_count.zero_()
