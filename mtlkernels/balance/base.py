"""The one interface of every loss-weighting and gradient method.

``method.backward(losses, shared=params_or_module, *, representation=None) -> weights [T]``
fills ``.grad`` of the shared parameters and of every other parameter the losses reach,
and returns the task weights it applied (for logging).
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor, nn

from mtlkernels.balance.jacobian import task_gradients
from mtlkernels.ops import combine_, gram


def check_losses(losses: Tensor) -> int:
    """``losses`` must be a finite ``[T]`` tensor; returns T. Nothing is updated on failure."""
    if not isinstance(losses, Tensor) or losses.dim() != 1 or losses.numel() == 0:
        raise ValueError(f"losses must be a non-empty [T] tensor of task losses, got "
                         f"{tuple(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__}")
    if not losses.requires_grad:
        raise ValueError("losses does not require grad: compute it from the model's outputs")
    bad = ~torch.isfinite(losses.detach())
    if bool(bad.any()):
        raise ValueError(f"losses of task(s) {bad.nonzero().flatten().tolist()} are NaN or Inf; no update applied")
    return losses.shape[0]


def shared_list(shared) -> list[nn.Parameter]:
    """Parameters from a module (its ``shared_parameters()`` if it has one) or an iterable."""
    if isinstance(shared, nn.Module):
        params = shared.shared_parameters() if hasattr(shared, "shared_parameters") else shared.parameters()
    else:
        params = shared
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("shared has no parameter that requires grad")
    return params


def graph_leaves(root: Tensor) -> list[Tensor]:
    """Every leaf tensor that requires grad and that ``root``'s graph accumulates into."""
    leaves, seen, stack = [], set(), [root.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if hasattr(fn, "variable"):
            leaves.append(fn.variable)
        stack.extend(next_fn for next_fn, _ in fn.next_functions)
    return leaves


def backward_except(total: Tensor, exclude: Iterable[Tensor]) -> None:
    """``total.backward()`` into every leaf of its graph except ``exclude``."""
    excluded = {id(p) for p in exclude}
    rest = [p for p in graph_leaves(total) if id(p) not in excluded]
    if rest:
        torch.autograd.backward(total, inputs=rest)


def accumulate(params: list[Tensor], blocks: list[Tensor], weights: Tensor) -> None:
    """``p.grad += sum_t weights[t] * block[t]`` for each parameter, in place; a parameter
    without a gradient gets a fresh ``.grad`` written once (no zero fill, no read)."""
    fresh = [p.grad is None for p in params]
    for p, new in zip(params, fresh):
        if new:
            p.grad = torch.empty_like(p, memory_format=torch.contiguous_format)
    existing = [k for k, new in enumerate(fresh) if not new]
    created = [k for k, new in enumerate(fresh) if new]
    for ks, acc in ((existing, True), (created, False)):
        if ks:
            combine_([blocks[k] for k in ks], weights, [params[k].grad for k in ks], accumulate=acc)


class GrowingBuffers:
    """Mixin for methods whose state buffers get their shape on the first step (a target per
    task pair, the first losses...): loading a checkpoint resizes them before copying."""

    _growing_buffers: tuple[str, ...] = ()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in self._growing_buffers:
            saved = state_dict.get(prefix + name)
            if saved is not None:
                setattr(self, name, torch.empty_like(saved))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def check_gram(G: Tensor) -> None:
    bad = ~torch.isfinite(torch.diagonal(G))
    if bool(bad.any()):
        raise ValueError(f"gradients of task(s) {bad.nonzero().flatten().tolist()} hold NaN or Inf; "
                         "no update applied")


class WeightingMethod(nn.Module):
    """A method that only reweights the losses: one backward of ``sum_t w_t L_t`` (plus whatever
    extra term the method adds, e.g. Uncertainty Weighting's regulariser)."""

    def loss_weights(self, losses: Tensor) -> Tensor:
        raise NotImplementedError

    def total_loss(self, losses: Tensor, weights: Tensor) -> Tensor:
        return (weights * losses).sum()

    def backward(self, losses: Tensor, shared=None, *, representation: Tensor | None = None) -> Tensor:
        check_losses(losses)
        weights = self.loss_weights(losses)
        self.total_loss(losses, weights).backward()
        return weights.detach()


class GramMethod(nn.Module):
    """A gradient method that needs only the Gram matrix G of the task gradients:
    ``w = self.gram_weights(G, losses)``, then the shared parameters get ``J^T w`` and the
    others (task heads) the gradient of ``sum_t w_t L_t``.

    ``last_gram`` holds the G of the latest step (float64 ``[T, T]``; for logging).

    With ``representation`` (MGDA-UB style), J is taken at that tensor instead (its gradient
    blocks, per-sample inner products summed, as Sener & Koltun's code does) and one backward
    of ``sum_t w_t L_t`` fills every gradient: almost the cost of an EW step.
    """

    #: whether ``gram_weights`` reads the loss values (MGDA's loss normalisations)
    reads_losses = False

    def gram_weights(self, G: Tensor, losses: Tensor) -> Tensor:
        raise NotImplementedError

    def aggregate_weights(self, blocks: list[Tensor], losses: Tensor) -> Tensor:
        """The weights ``[T]`` of the task-gradient ``blocks`` (``mtlkernels.balance.aggregate``)."""
        G = gram(blocks)
        check_gram(G)
        self.last_gram = G
        return self.gram_weights(G, losses)

    def _solve(self, losses: Tensor, inputs: list[Tensor]) -> tuple[list[Tensor], Tensor]:
        """Task-gradient blocks at ``inputs`` and the method's weights (checked finite first)."""
        blocks = task_gradients(losses, inputs)
        G = gram(blocks)
        check_gram(G)
        self.last_gram = G.detach()  # for diagnostics (task-gradient cosines), not state
        return blocks, self.gram_weights(G, losses.detach()).to(losses.dtype)

    def backward(self, losses: Tensor, shared=None, *, representation: Tensor | None = None) -> Tensor:
        T = check_losses(losses)
        if representation is not None:
            _, w = self._solve(losses, [representation])
            (w * losses).sum().backward()
            return w.detach()
        params = shared_list(shared)
        if T == 1:
            losses.sum().backward()
            return torch.ones(1, dtype=losses.dtype, device=losses.device)
        blocks, w = self._solve(losses, params)
        accumulate(params, blocks, w)
        backward_except((w * losses).sum(), params)
        return w.detach()
