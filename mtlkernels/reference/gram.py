"""Reference per-task gradient algebra: concatenate the blocks into J [T, P] and use matmuls."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def jacobian_matrix(blocks: Sequence[Tensor]) -> Tensor:
    """J [T, P] in float64: the blocks ``[T, ...]`` flattened and concatenated."""
    return torch.cat([b.reshape(b.shape[0], -1).double() for b in blocks], dim=1)


def gram(blocks: Sequence[Tensor]) -> Tensor:
    """``G = J J^T`` [T, T], float64, exactly symmetric (the upper triangle mirrored: a BLAS may
    round ``<g_i, g_j>`` and ``<g_j, g_i>`` differently)."""
    J = jacobian_matrix(blocks)
    upper = torch.triu(J @ J.T)
    return upper + torch.triu(upper, 1).T


def block_grams(blocks: Sequence[Tensor]) -> Tensor:
    """One Gram per block, [K, T, T] float64."""
    return torch.stack([gram([b]) for b in blocks])


def combine_(blocks: Sequence[Tensor], weights: Tensor, out: Sequence[Tensor], accumulate: bool = True) -> None:
    """``out_k (+)= sum_t weights[t] * blocks[k][t]`` in place (computed in float64)."""
    w = weights.double()
    for b, o in zip(blocks, out):
        d = torch.tensordot(w, b.double(), dims=1).reshape(o.shape)
        if accumulate:
            d = d + o.double()
        o.copy_(d)
