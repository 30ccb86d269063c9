"""DualProj: the mean gradient projected onto the dual cone of the task gradients (the
projection of Lopez-Paz & Ranzato, "Gradient Episodic Memory", NeurIPS 2017, eq. 11, as
TorchJD's DualProj applies it to multi-task learning; ALGORITHMS.md 3.9), in the Gram form."""
from __future__ import annotations

from typing import Sequence

from torch import Tensor

from mtlkernels.balance.base import GramMethod
from mtlkernels.balance.dual_cone import NORM_EPS, REG_EPS, check_settings, preference, regularized_gram
from mtlkernels.ops.solvers import dual_cone_weights


class DualProj(GramMethod):
    """``d = pi_J(J^T p)``: the preference-weighted gradient (default the mean, ``p = 1 / T``)
    projected onto the dual cone ``{x : J x >= 0}``, the closest update that conflicts with no
    task. ``w = argmin v^T G' v s.t. v >= p`` (one exact problem, ``ops.solvers.dual_cone_weights``)
    on ``G' = G / trace(G) + reg_eps I`` as TorchJD does (``norm_eps``, ``reg_eps``: its defaults).
    Mean-like scale. Task heads get the gradient of ``sum_t w_t L_t``.
    """

    def __init__(self, pref_vector: Sequence[float] | Tensor | None = None, norm_eps: float = NORM_EPS,
                 reg_eps: float = REG_EPS):
        super().__init__()
        self.pref = check_settings("DualProj", pref_vector, norm_eps, reg_eps)
        self.norm_eps, self.reg_eps = norm_eps, reg_eps

    def gram_weights(self, G: Tensor, losses: Tensor) -> Tensor:
        bounds = preference(self.pref, G.shape[0], G)[None]
        return dual_cone_weights(regularized_gram(G, self.norm_eps, self.reg_eps), bounds)[0]
