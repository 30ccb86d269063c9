"""What every multi-task model here exposes to the balancing methods."""
from __future__ import annotations

from typing import Iterator

from torch import Tensor, nn


class MultiTaskModel(nn.Module):
    """Base of the models: ``forward(x, return_representation=False)``.

    ``x`` is the shared input vector ``[B, input_dim]`` (see ``FeatureEmbedding``). Returns
    per-task logits ``[B, T]``; with ``return_representation=True`` also the shared
    representation tensor that every task's loss flows through (for representation-mode
    balancing, MGDA-UB style). Subclasses list their task-specific submodules in
    ``_task_specific``; ``shared_parameters()`` is everything else.
    """

    _task_specific: tuple[str, ...] = ()

    def task_logits(self, out: Tensor) -> Tensor:
        """``[B, T]`` logits whose sigmoid is the probability of each task's label (for
        regression tasks: the prediction itself), from ``forward``'s output. The identity here;
        entire-space models compose their towers (ESMM: the CTCVR logit of ``pCTR * pCVR``)."""
        return out

    def extra_task_losses(self, out: Tensor) -> Tensor | None:
        """A ``[T]`` term added to the per-task losses (AITM's calibrator), or None."""
        return None

    def task_specific_parameters(self) -> Iterator[nn.Parameter]:
        seen = set()
        for name in self._task_specific:
            for p in getattr(self, name).parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield p

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters more than one task's loss depends on (the ones gradient methods combine)."""
        specific = {id(p) for p in self.task_specific_parameters()}
        return (p for p in self.parameters() if id(p) not in specific)
