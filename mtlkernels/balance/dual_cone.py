"""What UPGrad and DualProj share: the regularised Gram they project with, and the preference
vector (TorchJD's conventions, so that the two libraries give the same update on the same J)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

#: TorchJD's defaults: below this trace, G counts as zero; added to the normalised diagonal
NORM_EPS = 1e-4
REG_EPS = 1e-4


def regularized_gram(G: Tensor, norm_eps: float, reg_eps: float) -> Tensor:
    """``G / trace(G) + reg_eps * I`` (zeros instead of ``G / trace(G)`` when the trace is below
    ``norm_eps``): scale-free and positive definite, so the dual-cone problem has one solution.
    On the device, no host sync."""
    trace = torch.diagonal(G).sum()
    normalized = torch.where(trace >= norm_eps, G / torch.where(trace >= norm_eps, trace, 1.0), torch.zeros_like(G))
    return normalized + reg_eps * torch.eye(G.shape[0], dtype=G.dtype, device=G.device)


def preference(pref: Tensor | None, T: int, like: Tensor) -> Tensor:
    """``[T]`` float64 on ``like``'s device: the preference vector, or the mean ``1 / T``."""
    if pref is None:
        return torch.full((T,), 1.0 / T, dtype=torch.float64, device=like.device)
    if pref.numel() != T:
        raise ValueError(f"pref_vector has {pref.numel()} entries for {T} tasks")
    return pref.to(like.device)


def check_settings(name: str, pref: Sequence[float] | Tensor | None, norm_eps: float, reg_eps: float) -> Tensor | None:
    """The validated preference vector (float64, or None) of a dual-cone method."""
    if not (norm_eps >= 0 and reg_eps > 0):
        raise ValueError(f"{name}: need norm_eps >= 0 and reg_eps > 0, got {norm_eps} and {reg_eps}")
    if pref is None:
        return None
    pref = torch.as_tensor(pref, dtype=torch.float64).flatten()
    if not bool(torch.isfinite(pref).all()) or bool((pref < 0).any()):
        raise ValueError(f"{name}: pref_vector must be finite and >= 0, got {pref.tolist()}")
    return pref
