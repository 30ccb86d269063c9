"""FAMO, fast adaptive multitask optimization (Liu, Liu, Jin, Stone and Liu, NeurIPS 2023): loss
weighting that balances the tasks' log-loss decrease with no per-task gradient."""
from __future__ import annotations

import torch
from torch import Tensor

from mtlkernels.balance.base import WeightingMethod

#: added to each loss before its log (the official code's 1e-8); a loss at or below it is absent
LOSS_EPS = 1e-8
#: Adam's constants (torch.optim.Adam's defaults, which the official code uses)
BETAS, ADAM_EPS = (0.9, 0.999), 1e-8


class FAMO(WeightingMethod):
    """One backward of ``sum_i z_i log(L_i - m_i) / c`` per step, ``z = softmax(xi)``,
    ``c = sum_i z_i / (L_i - m_i)`` (a constant of the step): the update decreases every task's
    log loss at the rate the logits xi ask for, at the cost of EW. Returned weights: the factor on
    each raw loss, ``z_i / (c (L_i - m_i))``. After the optimiser's step, ``after_step(new_losses)``
    (the losses of the same batch at the new parameters; ``mtlkernels.train.Trainer`` computes them
    with one extra forward) moves xi by one Adam step (``lr`` 0.025, ``weight_decay`` 1e-3 as L2,
    the official defaults) along the softmax's Jacobian times ``delta = log L_before - log L_after``,
    so tasks that improved less get more weight. ``min_losses`` m (default 0) are the losses'
    lower bounds. A task whose loss is at most 1e-8 this step (a sparse task absent from the batch,
    with no gradient) is left out of the step and of the logits' update. State (logits, the losses
    before the step, Adam's moments) is in ``state_dict()``, on the losses' device.
    """

    def __init__(self, num_tasks: int, lr: float = 0.025, weight_decay: float = 1e-3,
                 min_losses: list[float] | Tensor | None = None):
        super().__init__()
        if not (lr > 0 and weight_decay >= 0):
            raise ValueError(f"FAMO: need lr > 0 and weight_decay >= 0, got {lr} and {weight_decay}")
        m = torch.zeros(num_tasks, dtype=torch.float64) if min_losses is None else \
            torch.as_tensor(min_losses, dtype=torch.float64).flatten()
        if m.numel() != num_tasks:
            raise ValueError(f"FAMO: {m.numel()} min_losses for {num_tasks} tasks")
        self.lr, self.weight_decay = lr, weight_decay
        self.register_buffer("min_losses", m)
        self.register_buffer("logits", torch.zeros(num_tasks, dtype=torch.float64))
        self.register_buffer("before", torch.zeros(num_tasks, dtype=torch.float64))
        self.register_buffer("adam_m", torch.zeros(num_tasks, dtype=torch.float64))
        self.register_buffer("adam_v", torch.zeros(num_tasks, dtype=torch.float64))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))

    def _to(self, device: torch.device) -> None:
        if self.logits.device != device:
            for name in ("min_losses", "logits", "before", "adam_m", "adam_v", "steps"):
                setattr(self, name, getattr(self, name).to(device))

    def loss_weights(self, losses: Tensor) -> Tensor:
        T = self.logits.numel()
        if losses.shape[0] != T:
            raise ValueError(f"FAMO: {losses.shape[0]} losses for {T} tasks")
        self._to(losses.device)
        L = losses.detach().double()
        self.before = L
        D = L - self.min_losses + LOSS_EPS
        present = D > 2 * LOSS_EPS
        z = torch.softmax(self.logits, 0)
        ratio = torch.where(present, z / torch.where(present, D, 1.0), torch.zeros_like(z))
        c = ratio.sum()
        return (ratio / torch.where(c > 0, c, 1.0)).to(losses.dtype)

    def after_step(self, losses: Tensor) -> None:
        """The logits' Adam step from this batch's losses after the parameter update ``[T]``."""
        L = losses.detach().double().to(self.logits.device)
        present = (self.before - self.min_losses > LOSS_EPS) & (L - self.min_losses > LOSS_EPS)
        delta = torch.log(self.before - self.min_losses + LOSS_EPS) - torch.log(L - self.min_losses + LOSS_EPS)
        delta = torch.where(present, delta, torch.zeros_like(delta))
        z = torch.softmax(self.logits, 0)
        grad = z * (delta - (z * delta).sum()) + self.weight_decay * self.logits  # softmax VJP + L2
        self.steps = self.steps + 1
        (b1, b2), k = BETAS, self.steps.double()
        self.adam_m = b1 * self.adam_m + (1 - b1) * grad
        self.adam_v = b2 * self.adam_v + (1 - b2) * grad * grad
        m_hat = self.adam_m / (1 - b1 ** k)
        v_hat = self.adam_v / (1 - b2 ** k)
        self.logits = self.logits - self.lr * m_hat / (v_hat.sqrt() + ADAM_EPS)
