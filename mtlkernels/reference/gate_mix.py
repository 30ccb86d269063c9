"""Reference gate mixture: masked softmax followed by a batched matrix product."""
from __future__ import annotations

import torch
from torch import Tensor


def gate_mix(experts: Tensor, logits: Tensor, expert_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``out[b, t] = softmax(logits[b, t] | expert_mask[t]) @ experts[b]``.

    Args:
        experts: ``[B, X, D]`` expert outputs.
        logits: ``[B, T, X]`` gate logits, same dtype.
        expert_mask: optional ``[T, X]`` bool; ``False`` removes expert x from task t's softmax.

    Returns:
        ``(out [B, T, D], probs [B, T, X])``, differentiable through plain autograd.
        Arguments are not validated here; ``mtlkernels.ops.gate_mix`` does that.
    """
    if expert_mask is not None:
        logits = logits.masked_fill(~expert_mask, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.bmm(probs, experts), probs
