"""Aligned-MTL (Senushkin et al., CVPR 2023; ALGORITHMS.md 3.8), in the Gram form."""
from __future__ import annotations

import torch
from torch import Tensor

from mtlkernels.balance.base import GramMethod

SCALE_MODES = ("min", "median", "rmse")


class AlignedMTL(GramMethod):
    """Aligns the principal components of the task gradients so the aligned system has condition
    number 1: with ``G = V diag(lambda) V^T`` (eigenpairs with ``lambda > lambda_max T eps`` kept,
    rank r), ``B = sqrt(lambda_ref) V_r diag(lambda_r^-1/2) V_r^T`` and ``alpha = B 1``, so
    ``d = J^T alpha`` sums the aligned gradients (the authors' code; TorchJD's default weighs by
    1/T, a factor-T scale). ``scale_mode``: ``lambda_ref`` is the smallest kept eigenvalue
    (``"min"``, default), their median, or their mean (``"rmse"``), as in the authors' code.
    Scale-free (J and s J give the same weights); orthogonal gradients give
    ``alpha_i = min_k |g_k| / |g_i|``; all-zero gradients give ``alpha = 1`` (d = 0).
    ``representation=`` in ``backward`` is Aligned-MTL-UB."""

    def __init__(self, scale_mode: str = "min"):
        super().__init__()
        if scale_mode not in SCALE_MODES:
            raise ValueError(f"AlignedMTL: scale_mode must be one of {SCALE_MODES}, got {scale_mode!r}")
        self.scale_mode = scale_mode

    def gram_weights(self, G: Tensor, losses: Tensor) -> Tensor:
        T = G.shape[0]
        lam, V = torch.linalg.eigh(G)
        keep = lam > lam.max() * T * torch.finfo(G.dtype).eps
        kept = torch.where(keep, lam, torch.full_like(lam, float("nan")))
        if self.scale_mode == "min":
            ref = torch.where(keep, lam, torch.full_like(lam, float("inf"))).min()
        elif self.scale_mode == "median":
            ref = torch.nanmedian(kept)
        else:
            ref = torch.nansum(kept) / keep.sum().clamp_min(1)
        inv_sqrt = torch.where(keep, torch.rsqrt(torch.where(keep, lam, torch.ones_like(lam))), torch.zeros_like(lam))
        B = torch.sqrt(torch.where(keep.any(), ref, torch.ones_like(ref))) * (V * inv_sqrt) @ V.t()
        B = torch.where(keep.any(), B, torch.eye(T, dtype=G.dtype, device=G.device))
        return B @ torch.ones(T, dtype=G.dtype, device=G.device)
