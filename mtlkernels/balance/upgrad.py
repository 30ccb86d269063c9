"""UPGrad, unconflicting projection of gradients (Quinton & Rey 2024, "Jacobian Descent for
Multi-Objective Optimization"; ALGORITHMS.md 3.9), in the Gram form."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from mtlkernels.balance.base import GramMethod
from mtlkernels.balance.dual_cone import NORM_EPS, REG_EPS, check_settings, preference, regularized_gram
from mtlkernels.ops.solvers import dual_cone_weights


class UPGrad(GramMethod):
    """Each task gradient, scaled by its preference ``p_i`` (default ``1 / T``), is projected onto
    the dual cone ``{x : J x >= 0}`` of all task gradients, and the projections are summed:
    ``d = sum_i pi_J(p_i g_i)``, which conflicts with no task (``J d >= 0``) and equals the mean
    gradient when no two tasks conflict. In weights: ``w = sum_i v_i`` with
    ``v_i = argmin v^T G' v s.t. v >= p_i e_i`` (the paper's Proposition 1), one exact problem per
    task (``ops.solvers.dual_cone_weights``), on ``G' = G / trace(G) + reg_eps I`` as TorchJD
    does (``norm_eps``, ``reg_eps``: its defaults), so that both give the same update. Mean-like
    scale (weights sum to 1 without conflict). Task heads get the gradient of ``sum_t w_t L_t``.
    """

    def __init__(self, pref_vector: Sequence[float] | Tensor | None = None, norm_eps: float = NORM_EPS,
                 reg_eps: float = REG_EPS):
        super().__init__()
        self.pref = check_settings("UPGrad", pref_vector, norm_eps, reg_eps)
        self.norm_eps, self.reg_eps = norm_eps, reg_eps

    def gram_weights(self, G: Tensor, losses: Tensor) -> Tensor:
        T = G.shape[0]
        bounds = torch.diag(preference(self.pref, T, G))
        return dual_cone_weights(regularized_gram(G, self.norm_eps, self.reg_eps), bounds).sum(0)
