"""IMTL-G, impartial multi-task learning's gradient balancing (Liu et al., ICLR 2021;
ALGORITHMS.md 3.6), in the Gram form."""
from __future__ import annotations

import torch
from torch import Tensor

from mtlkernels.balance.base import GramMethod

#: a weight sum below this (in absolute value) gives zero weights (TorchJD's guard)
SUM_FLOOR = 1e-12


class IMTLG(GramMethod):
    """``d = J^T alpha`` with ``sum alpha = 1`` whose projections onto every unit task gradient
    ``g_i / |g_i|`` are equal: ``alpha = v / sum v``, ``v = G^+ n``, ``n_i = |g_i| = sqrt(G_ii)``
    (the paper's closed form ``alpha_{2..T} = g_1 U^T (D U^T)^{-1}`` when G is invertible; the
    pseudo-inverse keeps collinear or duplicate tasks finite). ``alpha`` may be negative (no
    simplex constraint); weights sum to 1 (a mean-like scale); zeros when ``|sum v| < 1e-12``.
    The T x T solve runs on the gradients' device. Pass ``representation=`` to ``backward`` to take
    J at the shared representation, as the paper does."""

    def gram_weights(self, G: Tensor, losses: Tensor) -> Tensor:
        n = torch.sqrt(torch.diagonal(G).clamp_min(0))
        v = torch.linalg.pinv(G, hermitian=True) @ n
        total = v.sum()
        return torch.where(total.abs() >= SUM_FLOOR, v / torch.where(total.abs() >= SUM_FLOOR, total, 1.0),
                           torch.zeros_like(v))
