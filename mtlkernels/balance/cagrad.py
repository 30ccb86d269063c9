"""CAGrad, conflict-averse gradient descent (Liu et al., NeurIPS 2021; ALGORITHMS.md 3.5), in the
Gram form."""
from __future__ import annotations

import torch
from torch import Tensor

from mtlkernels.balance.base import GramMethod
from mtlkernels.balance.dual_cone import NORM_EPS
from mtlkernels.ops.solvers import cagrad_weights

#: the official code's rescalings of the update: none, 1 / (1 + c^2) (its default), 1 / (1 + c)
RESCALES = (0, 1, 2)


class CAGrad(GramMethod):
    """The update closest to the mean gradient g0 (within ``|d - g0| <= c |g0|``) that maximises
    the worst task's improvement: ``d = g0 + (a / |g_w|) g_w`` with ``g_w = J^T w`` and w the
    exact solution of the dual ``min_{w in simplex} <g0, g_w> + a |g_w|``, ``a = c |g0|``
    (``ops.solvers.cagrad_weights``). Weights ``1 / T + (a / |g_w|) w``, zero when
    ``|g_w| < norm_eps`` on the trace-normalised Gram (an almost Pareto-stationary point, as
    TorchJD does), then divided by ``1 + c^2`` (``rescale=1``, the official code's default), by
    ``1 + c`` (2) or not (0, TorchJD's update). ``c`` defaults to 0.5 (LibMTL; 0.4 in the
    official NYUv2 runs). Mean-like scale; ``c = 0`` is EW-mean. T = 1 gives the plain gradient
    (weight 1, as every Gram method here). Task heads get the gradient of ``sum_t w_t L_t``.
    """

    def __init__(self, c: float = 0.5, rescale: int = 1, norm_eps: float = NORM_EPS):
        super().__init__()
        if not c >= 0:
            raise ValueError(f"CAGrad: c must be >= 0, got {c}")
        if rescale not in RESCALES:
            raise ValueError(f"CAGrad: rescale must be one of {RESCALES}, got {rescale!r}")
        if not norm_eps >= 0:
            raise ValueError(f"CAGrad: norm_eps must be >= 0, got {norm_eps}")
        self.c, self.rescale, self.norm_eps = float(c), rescale, norm_eps

    def gram_weights(self, G: Tensor, losses: Tensor) -> Tensor:
        T = G.shape[0]
        trace = torch.diagonal(G).sum()
        Gn = G / torch.where(trace > 0, trace, torch.ones_like(trace))
        w = cagrad_weights(G, self.c)
        g_w = torch.sqrt((w @ Gn @ w).clamp_min(0))
        a = self.c * torch.sqrt(Gn.sum().clamp_min(0)) / T
        weights = 1.0 / T + a / torch.where(g_w > 0, g_w, torch.ones_like(g_w)) * w
        weights = torch.where(g_w >= self.norm_eps, weights, torch.zeros_like(weights))
        if self.rescale == 1:
            weights = weights / (1 + self.c ** 2)
        elif self.rescale == 2:
            weights = weights / (1 + self.c)
        return weights
