"""A small multi-task model and batch shared by the balancing tests."""
from __future__ import annotations

import pytest
import torch

from mtlkernels import nn as mnn


class Problem:
    """An MMoE with T regression tasks on a fixed batch; ``losses()`` builds a fresh graph."""

    def __init__(self, T=3, seed=0, dtype=torch.float64):
        torch.manual_seed(seed)
        self.model = mnn.MMoE(6, T, 3, (5,), (4,)).to(dtype)
        self.x = torch.randn(16, 6, dtype=dtype)
        self.y = torch.randn(16, T, dtype=dtype)

    def losses(self, return_representation=False):
        out = self.model(self.x, return_representation=return_representation)
        logits, rep = out if return_representation else (out, None)
        losses = ((logits - self.y) ** 2).mean(0)
        return (losses, rep) if return_representation else losses

    def shared(self):
        return list(self.model.shared_parameters())

    def specific(self):
        return list(self.model.task_specific_parameters())

    def jacobian(self):
        """Per-task gradients of the shared parameters, flattened: J [T, P] (float64)."""
        losses = self.losses()
        rows = []
        for t in range(losses.shape[0]):
            g = torch.autograd.grad(losses[t], self.shared(), retain_graph=True, allow_unused=True)
            rows.append(torch.cat([(gi if gi is not None else torch.zeros_like(p)).reshape(-1)
                                   for gi, p in zip(g, self.shared())]))
        return torch.stack(rows).double()

    def zero_grad(self):
        for p in self.model.parameters():
            p.grad = None

    def shared_grad(self):
        return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in self.shared()])


@pytest.fixture
def problem():
    return Problem()
