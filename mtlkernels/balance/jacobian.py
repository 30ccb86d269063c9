"""Per-task gradients as parameter blocks ``[T, *param.shape]``."""
from __future__ import annotations

import warnings
from typing import Sequence

import torch
from torch import Tensor

#: what the errors of a batched backward that meets an op without a batching rule say
#: (torch 2.x: "Batching rule not implemented for aten::item. We could not generate a fallback.",
#: and the vmap / functorch messages of autograd.Functions and .item() under vmap)
MISSING_BATCHING_RULE = ("batching rule not implemented", "could not generate a fallback", "vmap", "functorch")


def _missing_batching_rule(exc: RuntimeError) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return False
    message = str(exc).lower()
    return any(marker in message for marker in MISSING_BATCHING_RULE)


def task_gradients(losses: Tensor, inputs: Sequence[Tensor], *, batched: bool = True,
                   unused_as_none: bool = False) -> list[Tensor | None]:
    """Gradients of every task loss with respect to every tensor in ``inputs``.

    Args:
        losses: ``[T]`` task losses of one graph.
        inputs: parameters (or a representation tensor) the losses depend on.
        batched: one batched backward (``is_grads_batched``: the T vector-Jacobian products run
            as one vmapped backward). If an op in the graph has no batching rule the call falls
            back, with a warning, to T ordinary backward passes (only then: any other error,
            out-of-memory included, propagates); ``batched=False`` asks for those directly.

        unused_as_none: None, instead of a zero block, for an input no task reaches.

    Returns:
        one block ``[T, *x.shape]`` per input (zeros where a task does not reach the input).
        The graph is retained, so the caller can run one more backward through it.
    """
    T = losses.shape[0]
    inputs = list(inputs)
    grads = None
    if batched and T > 1:
        eye = torch.eye(T, dtype=losses.dtype, device=losses.device)
        try:
            grads = torch.autograd.grad(losses, inputs, grad_outputs=eye, retain_graph=True, allow_unused=True,
                                        is_grads_batched=True)
        except RuntimeError as exc:
            if not _missing_batching_rule(exc):
                raise
            warnings.warn(f"task_gradients: batched backward failed ({str(exc).splitlines()[0]}); "
                          f"falling back to {T} backward passes", RuntimeWarning, stacklevel=2)
    if grads is None:
        per_task = [torch.autograd.grad(losses[t], inputs, retain_graph=True, allow_unused=True) for t in range(T)]
        grads = [None if all(g[k] is None for g in per_task) else
                 torch.stack([g[k] if g[k] is not None else torch.zeros_like(inputs[k]) for g in per_task])
                 for k in range(len(inputs))]
    if unused_as_none:
        return list(grads)
    return [g if g is not None else x.new_zeros(T, *x.shape) for g, x in zip(grads, inputs)]
