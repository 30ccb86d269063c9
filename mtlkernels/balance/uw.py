"""Uncertainty Weighting (Kendall, Gal & Cipolla, CVPR 2018; ALGORITHMS.md 2.1)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from mtlkernels.balance.base import WeightingMethod

FORMS = {"regression": 0.5, "classification": 1.0}


class UncertaintyWeighting(WeightingMethod):
    """Learned task weights from homoscedastic uncertainty, log-variance parametrised:
    total ``sum_t coef * exp(-s_t) L_t + 0.5 s_t`` with ``coef = 0.5`` (``form="regression"``,
    the MTAN/LibMTL form) or ``1`` (``form="classification"``, SamsungLabs; the natural form for
    the BCE tasks of ranking). ``s`` starts at ``init`` (0; MTAN uses -0.5) and is clamped at
    ``s >= -10`` so a vanishing loss cannot blow its weight up. ``s`` is a parameter of this
    module: give ``method.parameters()`` to the optimizer. Returned weights: ``coef exp(-s)``.
    At the optimum ``exp(-s*) coef = 1 / (2 L)``.
    """

    def __init__(self, num_tasks: int, form: str = "classification", init: float = 0.0):
        super().__init__()
        if form not in FORMS:
            raise ValueError(f"UncertaintyWeighting: form must be one of {tuple(FORMS)}, got {form!r}")
        self.form = form
        self.log_var = nn.Parameter(torch.full((num_tasks,), float(init)))

    def loss_weights(self, losses: Tensor) -> Tensor:
        if losses.shape[0] != self.log_var.numel():
            raise ValueError(f"UncertaintyWeighting: {losses.shape[0]} losses for {self.log_var.numel()} tasks")
        return FORMS[self.form] * torch.exp(-self.log_var.clamp_min(-10.0)).to(losses.dtype)

    def total_loss(self, losses: Tensor, weights: Tensor) -> Tensor:
        return (weights * losses).sum() + 0.5 * self.log_var.clamp_min(-10.0).sum()
