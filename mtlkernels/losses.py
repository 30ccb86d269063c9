"""The multi-task loss: one label layout ``[B, T]`` for every model, per-task BCE or MSE,
per-sample weights, per-task label masks and fixed task weights.

Scale convention: task t's loss is the weighted mean of its per-sample losses over the samples
where it is observed, ``L_t = sum_i m_it w_it l_it / sum_i m_it w_it`` (0, with a zero
gradient, when a batch holds no observed sample of the task), times the fixed task weight
``c_t``. The result ``[T]`` goes to a balancing method as it is, so fixed weights compose with
every method (a gradient method sees the task gradients of ``c_t L_t``).

Binary tasks take logits (``model.task_logits(out)``; for entire-space models these are the
logits of the composed probabilities, computed in log space) and
``BCE-with-logits``; regression tasks take the prediction and the squared error.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

KINDS = ("binary", "regression")


class MultiTaskLoss:
    """``loss(logits [B, T], labels [B, T], mask=None, weights=None) -> [T]``.

    Args:
        kinds: one of ``"binary"`` / ``"regression"`` per task.
        task_weights: fixed ``c_t`` per task (default 1).

    Call args: ``mask`` ``[B, T]`` bool (True = observed; None = all observed); ``weights``
    ``[B]`` (one weight per sample: down-weighting a group of users) or ``[B, T]`` (per task:
    watch-time weighted positives), >= 0. Labels of binary tasks are 0/1 where observed
    (the data path checks it); unobserved entries are ignored whatever they hold.
    """

    def __init__(self, kinds: Sequence[str], task_weights: Sequence[float] | None = None):
        kinds = list(kinds)
        bad = [k for k in kinds if k not in KINDS]
        if not kinds or bad:
            raise ValueError(f"MultiTaskLoss: kinds must be a non-empty list of {KINDS}, got {kinds}")
        self.kinds = kinds
        T = len(kinds)
        if task_weights is not None and (len(task_weights) != T or any(not (w >= 0) for w in task_weights)):
            raise ValueError(f"MultiTaskLoss: task_weights must be {T} numbers >= 0, got {list(task_weights)}")
        self.task_weights = None if task_weights is None or all(w == 1 for w in task_weights) else list(task_weights)
        self.regression = torch.tensor([k == "regression" for k in kinds])

    def per_sample(self, logits: Tensor, labels: Tensor) -> Tensor:
        """``[B, T]`` per-sample losses (BCE with logits, or the squared error)."""
        labels = labels.to(logits.dtype)
        if not bool(self.regression.any()):
            return F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        if bool(self.regression.all()):
            return (logits - labels).square()
        reg = self.regression.to(logits.device)
        safe = torch.where(reg, torch.zeros((), dtype=logits.dtype, device=logits.device), logits)
        bce = F.binary_cross_entropy_with_logits(safe, torch.where(reg, 0.0, labels), reduction="none")
        return torch.where(reg, (logits - labels).square(), bce)

    @staticmethod
    def coefficients(like: Tensor, mask: Tensor | None, weights: Tensor | None) -> Tensor | None:
        """``[B, T]`` ``m_it w_it`` in ``like``'s dtype, or None when every sample counts 1."""
        coef = None
        if weights is not None:
            coef = weights.to(like.dtype)
            coef = coef[:, None].expand_as(like) if coef.dim() == 1 else coef
        if mask is not None:  # an unobserved sample's weight may hold anything (NaN): it counts 0
            coef = mask.to(like.dtype) if coef is None else torch.where(mask, coef, torch.zeros_like(coef))
        return coef

    def total_weight(self, labels: Tensor, mask: Tensor | None = None, weights: Tensor | None = None) -> Tensor:
        """``[T]`` ``sum_i m_it w_it``: the denominator of each task's mean (to average the losses
        of several batches the way one large batch would)."""
        coef = self.coefficients(labels.double(), mask, weights)
        return coef.sum(0) if coef is not None else torch.full((labels.shape[1],), float(labels.shape[0]),
                                                               dtype=torch.float64, device=labels.device)

    def __call__(self, logits: Tensor, labels: Tensor, mask: Tensor | None = None,
                 weights: Tensor | None = None) -> Tensor:
        T = len(self.kinds)
        if logits.dim() != 2 or logits.shape[1] != T:
            raise ValueError(f"MultiTaskLoss: logits must be [B, {T}], got {tuple(logits.shape)}")
        if labels.shape != logits.shape:
            raise ValueError(f"MultiTaskLoss: labels must be {tuple(logits.shape)} like logits, got "
                             f"{tuple(labels.shape)}")
        if mask is not None and (mask.shape != logits.shape or mask.dtype != torch.bool):
            raise ValueError(f"MultiTaskLoss: mask must be a bool {tuple(logits.shape)} tensor, got "
                             f"{mask.dtype} {tuple(mask.shape)}")
        if weights is not None and weights.shape not in (logits.shape[:1], logits.shape):
            raise ValueError(f"MultiTaskLoss: weights must be [B] or [B, T] = {tuple(logits.shape)}, got "
                             f"{tuple(weights.shape)}")
        if mask is not None:  # an unobserved label may hold anything (NaN): out of the loss and its gradient
            labels = torch.where(mask, labels.to(logits.dtype), torch.zeros((), dtype=logits.dtype,
                                                                            device=logits.device))
        per = self.per_sample(logits, labels)
        coef = self.coefficients(per, mask, weights)
        if coef is None:
            losses = per.mean(0)
        else:
            num, den = (coef * per).sum(0), coef.sum(0)
            losses = num / torch.where(den > 0, den, torch.ones_like(den))
        if self.task_weights is not None:
            losses = losses * torch.tensor(self.task_weights, dtype=losses.dtype, device=losses.device)
        return losses
