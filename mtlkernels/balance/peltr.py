"""PE-LTR / PECsolver (Lin et al., RecSys 2019; ALGORITHMS.md 3.2)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from mtlkernels.balance.base import GramMethod
from mtlkernels.ops.solvers import peltr_weights


class PELTR(GramMethod):
    """Pareto-efficient weights with business lower bounds: ``min ||J^T w||^2`` s.t.
    ``sum w = 1``, ``w_i >= c_i``, by the paper's two steps (relaxed KKT solve, then
    projection). ``lower_bounds`` c: ``c_i >= 0``, ``sum c <= 1`` (checked here: an infeasible c
    is rejected). With T = 2 and c = 0 it equals MGDA. Weights sum to 1."""

    def __init__(self, lower_bounds: Sequence[float]):
        super().__init__()
        c = torch.as_tensor(lower_bounds, dtype=torch.float64)
        if c.dim() != 1 or c.numel() == 0:
            raise ValueError(f"PELTR: lower_bounds must be a non-empty list of T numbers, got shape {tuple(c.shape)}")
        if bool((c < 0).any()) or float(c.sum()) > 1 + 1e-12:
            raise ValueError(f"PELTR: lower_bounds must be >= 0 and sum to at most 1, got {c.tolist()}")
        self.register_buffer("lower_bounds", c)

    def gram_weights(self, G: Tensor, losses: Tensor) -> Tensor:
        if G.shape[0] != self.lower_bounds.numel():
            raise ValueError(f"PELTR: {G.shape[0]} tasks but {self.lower_bounds.numel()} lower bounds")
        return peltr_weights(G, self.lower_bounds.to(G.device))
