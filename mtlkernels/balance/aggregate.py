"""``aggregate(method, jacobian)``: a gradient method applied to task gradients you already
hold, without autograd (the call TorchJD's aggregators make, ``A(J)``)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from mtlkernels.balance.base import GramMethod
from mtlkernels.ops import combine_


def aggregate(method: GramMethod, jacobian: Tensor | Sequence[Tensor], losses: Tensor | None = None):
    """The update ``d = J^T w`` that ``method`` makes of the task gradients, and its weights.

    Args:
        method: a gradient method (``PCGrad``, ``GradVac``, ``MGDA``, ``PELTR``); its state
            (GradVac's targets, the PCGrad/GradVac orders) advances as one training step would.
        jacobian: ``[T, P]`` (one row per task's gradient), or a list of per-parameter blocks
            ``[T, *shape]``, all on one device and of one floating dtype.
        losses: ``[T]`` task losses, for the methods whose weights read them (MGDA's ``"loss"``
            and ``"loss+"`` normalisations); ignored by the others.

    Returns:
        ``(update, weights)``: ``update`` is ``[P]`` for a matrix, else a list with one
        ``[*shape]`` tensor per block; ``weights`` is ``[T]`` in the gradients' dtype (``[K, T]``,
        one row per block, for per-layer GradVac). Non-finite gradients raise ``ValueError``
        naming the task (``method.check_finite()``).
    """
    if not isinstance(method, GramMethod):
        raise TypeError(f"aggregate: {type(method).__name__} is not a gradient method (PCGrad, GradVac, MGDA, "
                        "PELTR); a weighting method's update is the gradient of sum_t w_t L_t")
    matrix = isinstance(jacobian, Tensor)
    blocks = [jacobian] if matrix else list(jacobian)
    if not blocks or any(not isinstance(b, Tensor) or b.dim() < 1 for b in blocks):
        raise ValueError("aggregate: jacobian must be a [T, P] tensor or a non-empty list of [T, *shape] blocks")
    if matrix and jacobian.dim() != 2:
        raise ValueError(f"aggregate: jacobian must be [T, P], got {tuple(jacobian.shape)}")
    T = blocks[0].shape[0]
    if method.reads_losses:
        if losses is None:
            raise ValueError(f"aggregate: {type(method).__name__} with these settings weighs by the losses; pass "
                             "losses=[T]")
        losses = torch.as_tensor(losses, dtype=torch.float64, device=blocks[0].device).detach()
        if losses.shape != (T,):
            raise ValueError(f"aggregate: losses must be [{T}], got {tuple(losses.shape)}")
    else:
        losses = torch.zeros(T, dtype=torch.float64, device=blocks[0].device)
    blocks = [b.detach().contiguous() for b in blocks]
    if T == 1:
        w = torch.ones(1, dtype=blocks[0].dtype, device=blocks[0].device)
    else:
        w = method.aggregate_weights(blocks, losses).to(blocks[0].dtype)
        method.check_finite()
    out = [torch.empty(b.shape[1:], dtype=b.dtype, device=b.device) for b in blocks]
    if w.dim() == 1:
        combine_(blocks, w, out, accumulate=False)
    else:
        for b, o, row in zip(blocks, out, w):
            combine_([b], row, [o], accumulate=False)
    return (out[0] if matrix else out), w
