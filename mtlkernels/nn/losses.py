"""Numerically stable probability algebra for the entire-space models (ESMM, ESM2, AITM).

Everything is in log space from tower logits: ``log sigmoid(a) = -softplus(-a)``; products of
probabilities are sums of logs; ``log(1 - p)`` from ``log p`` uses ``log(-expm1(log p))`` when
``log p > -ln 2`` and ``log1p(-exp(log p))`` otherwise (ALGORITHMS.md 1.6).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def log1mexp(log_p: Tensor) -> Tensor:
    """``log(1 - exp(log_p))`` for ``log_p <= 0``, accurate at both ends.

    Each branch gets an input it is finite on, so the branch ``torch.where`` discards cannot
    put a NaN into the gradient.
    """
    cut = -math.log(2.0)
    near_zero = log_p > cut
    hi = torch.where(near_zero, log_p, cut)
    lo = torch.where(near_zero, cut, log_p)
    return torch.where(near_zero, torch.log(-torch.expm1(hi)), torch.log1p(-torch.exp(lo)))


def logit_from_log_prob(log_p: Tensor) -> Tensor:
    """``log p - log(1 - p)`` from ``log p <= 0``, accurate at both ends (the logit of a
    probability built as a product in log space, e.g. ESMM's ``pCTR * pCVR``)."""
    return log_p - log1mexp(log_p)


def bce_from_logits(logits: Tensor, label: Tensor) -> Tensor:
    """Mean binary cross-entropy with logits (per task when ``logits``/``label`` are ``[B, T]``)."""
    per = F.binary_cross_entropy_with_logits(logits, label.to(logits.dtype), reduction="none")
    return per.mean(dim=0)


def check_funnel(child_name: str, child: Tensor, parent_name: str, parent: Tensor) -> None:
    """A positive ``child`` (a conversion) needs a positive ``parent`` (a click)."""
    if not torch.compiler.is_compiling() and bool(((child == 1) & (parent != 1)).any()):
        row = int(((child == 1) & (parent != 1)).nonzero()[0])
        raise ValueError(f"{child_name} is 1 without a {parent_name} at row {row} (funnel violation)")


def check_binary_labels(name: str, label: Tensor, batch: int) -> None:
    if label.shape != (batch,):
        raise ValueError(f"{name} must be [B] = [{batch}], got {tuple(label.shape)}")
    if not torch.compiler.is_compiling() and bool(((label != 0) & (label != 1)).any()):
        raise ValueError(f"{name} must hold only 0/1 labels")
