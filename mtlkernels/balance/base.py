"""The one interface of every loss-weighting and gradient method.

``method.backward(losses, shared=params_or_module, *, representation=None) -> weights [T]``
fills ``.grad`` of the shared parameters and of every other parameter the losses reach,
and returns the task weights it applied (for logging).
"""
from __future__ import annotations

import weakref
from typing import Iterable

import torch
from torch import Tensor, nn

from mtlkernels.balance.blocks import SharedBlocks, discard_lookups
from mtlkernels.balance.jacobian import task_gradients
from mtlkernels.ops import gram


def check_losses(losses: Tensor) -> int:
    """``losses`` must be a ``[T]`` tensor with a graph; returns T. Host-side checks only (their
    finiteness is flagged on the device: ``Method.check_finite``)."""
    if not isinstance(losses, Tensor) or losses.dim() != 1 or losses.numel() == 0:
        raise ValueError(f"losses must be a non-empty [T] tensor of task losses, got "
                         f"{tuple(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__}")
    if not losses.requires_grad:
        raise ValueError("losses does not require grad: compute it from the model's outputs")
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


def graph_leaves(root: Tensor, parents: dict[int, set] | None = None) -> list[Tensor]:
    """Every leaf tensor that requires grad and that ``root``'s graph accumulates into; with
    ``parents``, also fills ``{id(leaf): the graph nodes that feed its gradient}``."""
    leaves, seen, stack = [], set(), [root.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if hasattr(fn, "variable"):
            leaves.append(fn.variable)
        for next_fn, _ in fn.next_functions:
            if parents is not None and next_fn is not None and hasattr(next_fn, "variable"):
                parents.setdefault(id(next_fn.variable), set()).add(fn)
            stack.append(next_fn)
    return leaves


#: per shared model: (ids of the excluded parameters and of all its parameters, the other leaves its
#: graph reached)
_OTHER_LEAVES: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple, list[Tensor]]]" = weakref.WeakKeyDictionary()


def backward_except(total: Tensor, exclude: Iterable[Tensor], shared=None, blocks: SharedBlocks | None = None) -> None:
    """``total.backward()`` into every leaf of its graph except ``exclude``.

    The leaves are found by walking the graph once per shared model (``shared``, a module) and
    cached until the model's parameters or ``exclude`` change: a later graph of the same model
    reaches the same parameters (one it does not reach is skipped by autograd). With a parameter
    list as ``shared`` the graph is walked each call. Each walk also checks that the compact
    tables of ``blocks`` are reached through their recorded lookups only.
    """
    excluded = frozenset(id(p) for p in exclude)

    def walk() -> list[Tensor]:
        parents: dict[int, set] = {}
        leaves = graph_leaves(total, parents if blocks is not None else None)
        if blocks is not None:
            blocks.check_lookups(parents)
        return [p for p in leaves if id(p) not in excluded]

    if isinstance(shared, nn.Module):
        key = (excluded, tuple(id(p) for p in shared.parameters()))
        cached = _OTHER_LEAVES.get(shared)
        if cached is None or cached[0] != key:
            cached = _OTHER_LEAVES[shared] = (key, walk())
        rest = cached[1]
    else:
        rest = walk()
    if rest:
        torch.autograd.backward(total, inputs=rest)


class Method(nn.Module):
    """What every method shares: the device-side finiteness flag.

    ``backward`` reads nothing back from the device: a task whose loss (or, for the gradient
    methods, whose gradient) holds NaN or Inf is flagged, and ``check_finite()`` raises
    ``ValueError`` naming the flagged tasks since its last call. Weighting methods look at the
    losses only (one backward, no per-task gradient): a non-finite gradient of finite losses
    reaches ``.grad`` unflagged. Call it before
    ``optimizer.step()`` (``mtlkernels.train.Trainer`` does, every step) or at your own
    synchronisation points; the ``.grad`` of a flagged step holds non-finite values.
    """

    _nonfinite: Tensor | None = None  # [2, T] bool: row 0 the losses, row 1 the gradients

    def _flag(self, bad: Tensor, row: int) -> None:
        """ORs ``bad`` ``[T]`` (bool, on the device) into row ``row`` of the flag."""
        if self._nonfinite is None or self._nonfinite.shape[1] != bad.shape[0]:
            self._nonfinite = torch.zeros(2, bad.shape[0], dtype=torch.bool, device=bad.device)
        self._nonfinite[row] |= bad

    def _flag_losses(self, losses: Tensor) -> None:
        self._flag(~torch.isfinite(losses.detach()), 0)

    def _flag_gram(self, G: Tensor) -> Tensor:
        """Flags the tasks whose gradient holds NaN or Inf (G's diagonal; ``[..., T, T]``, the
        leading dimensions per layer) and returns G with its non-finite entries zeroed, so that
        the solvers run (and stay on the device) whatever the flag says."""
        diagonal = torch.diagonal(G, dim1=-2, dim2=-1)
        self._flag(~torch.isfinite(diagonal.reshape(-1, G.shape[-1])).all(0), 1)
        return torch.where(torch.isfinite(G), G, torch.zeros((), dtype=G.dtype, device=G.device))

    def check_finite(self, names: list[str] | None = None) -> None:
        """Raises ``ValueError`` naming the tasks (their index, or ``names[t]``) whose losses or
        gradients were flagged since the last call; one host sync. (A NaN loss usually makes
        every task's gradient NaN in a batched backward: the losses name the culprit.)"""
        flag, self._nonfinite = self._nonfinite, None
        if flag is None or not bool(flag.any()):
            return
        found = []
        for row, what in enumerate(("losses", "gradients")):
            tasks = flag[row].nonzero().flatten().tolist()
            if tasks:
                found.append(f"{what} of task(s) {[names[t] for t in tasks] if names is not None else tasks}")
        raise ValueError(f"{' and '.join(found)} held NaN or Inf; do not apply this step")


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


class WeightingMethod(Method):
    """A method that only reweights the losses: one backward of ``sum_t w_t L_t`` (plus whatever
    extra term the method adds, e.g. Uncertainty Weighting's regulariser)."""

    def loss_weights(self, losses: Tensor) -> Tensor:
        raise NotImplementedError

    def total_loss(self, losses: Tensor, weights: Tensor) -> Tensor:
        return (weights * losses).sum()

    def backward(self, losses: Tensor, shared=None, *, representation: Tensor | None = None) -> Tensor:
        check_losses(losses)
        self._flag_losses(losses)
        discard_lookups(shared)
        weights = self.loss_weights(losses)
        self.total_loss(losses, weights).backward()
        return weights.detach()


class GramMethod(Method):
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
        G = self._flag_gram(gram(blocks))
        self.last_gram = G
        return self.gram_weights(G, losses)

    def _solve(self, losses: Tensor, blocks: list[Tensor]) -> Tensor:
        """The method's weights of the task-gradient ``blocks`` (flagged if not finite)."""
        G = self._flag_gram(gram(blocks))
        self.last_gram = G.detach()  # for diagnostics (task-gradient cosines), not state
        return self.gram_weights(G, losses.detach()).to(losses.dtype)

    def backward(self, losses: Tensor, shared=None, *, representation: Tensor | None = None) -> Tensor:
        T = check_losses(losses)
        self._flag_losses(losses)
        if representation is not None:
            discard_lookups(shared)
            w = self._solve(losses, task_gradients(losses, [representation]))
            (w * losses).sum().backward()
            return w.detach()
        params = shared_list(shared)
        if T == 1:
            discard_lookups(shared)
            losses.sum().backward()
            return torch.ones(1, dtype=losses.dtype, device=losses.device)
        blocks = SharedBlocks(losses, shared, params)
        w = self._solve(losses, blocks.blocks)
        blocks.apply(w)
        backward_except((w * losses).sum(), blocks.leaves, shared, blocks)
        return w.detach()
