"""MGDA and MGDA-UB (Sener & Koltun, NeurIPS 2018; ALGORITHMS.md 3.1)."""
from __future__ import annotations

import torch
from torch import Tensor

from mtlkernels.balance.base import GramMethod
from mtlkernels.ops.solvers import mgda_weights, min_norm_weights

NORMALIZATIONS = ("none", "l2", "loss", "loss+")
SOLVERS = ("exact", "frank-wolfe")


class MGDA(GramMethod):
    """Multiple-gradient descent: the min-norm point of the convex hull of the task gradients,
    ``w* = argmin_{w in simplex} w^T G w``, a common descent direction (zero at a Pareto-
    stationary point).

    ``normalization`` rescales the gradients before solving (``Gtilde = D^-1 G D^-1``):
    ``"none"``, ``"l2"`` (``||g_i||``), ``"loss"`` (``L_i``), ``"loss+"`` (``L_i ||g_i||``, the
    official CelebA setting). As in the official code the weights then apply to the raw
    losses/gradients: ``d = J^T w``; weights sum to 1 (a mean-like scale). ``solver="exact"``
    (default): Wolfe's minimum-norm-point algorithm, optimal to rounding for any T
    (``min_norm_weights``); ``"frank-wolfe"``: the official code's iteration (the best pair, then
    at most ``max_iter`` Frank-Wolfe steps with tolerance ``tol``), which can stop well above the
    optimum once T > 2. Both give the exact closed form for T = 2 (weights 0 and 1 exactly, not
    the reference's 0.001/0.999).
    MGDA-UB: pass ``representation=`` (the shared representation tensor) to ``backward``.
    """

    def __init__(self, normalization: str = "none", solver: str = "exact", max_iter: int = 250, tol: float = 1e-5):
        super().__init__()
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"MGDA: normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
        if solver not in SOLVERS:
            raise ValueError(f"MGDA: solver must be one of {SOLVERS}, got {solver!r}")
        self.normalization, self.solver, self.max_iter, self.tol = normalization, solver, max_iter, tol

    @property
    def reads_losses(self) -> bool:
        return self.normalization in ("loss", "loss+")

    def scales(self, G: Tensor, losses: Tensor) -> Tensor:
        norms = torch.sqrt(torch.diagonal(G).clamp_min(0))
        losses = losses.to(G.dtype)
        if self.normalization == "l2":
            return norms
        if self.normalization == "loss":
            return losses
        if self.normalization == "loss+":
            return losses * norms
        return torch.ones_like(norms)

    def gram_weights(self, G: Tensor, losses: Tensor) -> Tensor:
        d = self.scales(G, losses)
        d = torch.where(d > 0, d, torch.ones_like(d))  # a zero gradient or loss stays unscaled
        G = G / (d[:, None] * d[None, :])
        if self.solver == "exact":
            return min_norm_weights(G)
        return mgda_weights(G, max_iter=self.max_iter, tol=self.tol)
