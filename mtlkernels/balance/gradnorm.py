"""GradNorm (Chen et al., ICML 2018; ALGORITHMS.md 2.2)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from mtlkernels.balance.base import GrowingBuffers, WeightingMethod, check_losses
from mtlkernels.balance.blocks import discard_lookups
from mtlkernels.balance.jacobian import task_gradients
from mtlkernels.ops import gram


class GradNorm(GrowingBuffers, WeightingMethod):
    """Task weights that equalise training rates at one shared layer W.

    Each step: ``n_i = ||grad_W L_i||`` (the diagonal of the Gram of W's task gradients),
    ``G_i = w_i n_i``, loss ratios ``r_i = (L_i / L_i(0)) / mean_j (L_j / L_j(0))`` with
    ``L(0)`` the first step's losses, target ``mean(G) r_i^alpha`` held constant; the weights
    take one Adam step (``lr``, betas 0.9/0.999) on ``L_grad = sum_i |G_i - target_i|``, whose
    gradient is ``sign(G_i - target_i) n_i``, are floored at 1e-6 and renormalised to sum to T.
    The network gets the gradient of ``sum_i w_i L_i`` with the weights of this step (before
    the update), which are returned. ``alpha`` 1.5 (the common default); ``lr`` 0.025.

    ``layer``: the parameters of W, the last shared layer in the paper; ``backward(...,
    shared=...)`` is not used for anything else. State (weights, L(0), Adam moments) is in
    ``state_dict()``.
    """

    _growing_buffers = ("initial_losses",)

    def __init__(self, num_tasks: int, layer: Sequence[nn.Parameter], alpha: float = 1.5, lr: float = 0.025):
        super().__init__()
        self.layer = list(layer)
        if not self.layer:
            raise ValueError("GradNorm: layer must name the parameters of the shared layer W")
        self.alpha, self.lr = alpha, lr
        self.register_buffer("weights", torch.ones(num_tasks, dtype=torch.float64))
        self.register_buffer("initial_losses", torch.zeros(0, dtype=torch.float64))
        self.register_buffer("adam_m", torch.zeros(num_tasks, dtype=torch.float64))
        self.register_buffer("adam_v", torch.zeros(num_tasks, dtype=torch.float64))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))

    def backward(self, losses: Tensor, shared=None, *, representation: Tensor | None = None) -> Tensor:
        T = check_losses(losses)
        if T != self.weights.numel():
            raise ValueError(f"GradNorm: {T} losses for {self.weights.numel()} tasks")
        L = losses.detach().double().cpu()  # GradNorm's state lives on the host: it reads back anyway
        if not bool(torch.isfinite(L).all()):
            raise ValueError(f"GradNorm: losses of task(s) {(~torch.isfinite(L)).nonzero().flatten().tolist()} are "
                             "NaN or Inf; no update applied")
        if self.initial_losses.numel() == 0:
            self.initial_losses = L.clamp_min(1e-12)
        norms = torch.sqrt(torch.diagonal(gram(task_gradients(losses, self.layer))).clamp_min(0)).cpu()
        if not bool(torch.isfinite(norms).all()):
            raise ValueError("GradNorm: a task's gradient at the chosen layer is NaN or Inf; no update applied")
        w = self.weights.clone()
        discard_lookups(shared)  # the embedding tables' gradient comes from this one backward
        (w.to(losses.device, losses.dtype) * losses).sum().backward()
        self._update(w, norms, L)
        return w.to(losses.dtype)

    def _update(self, w: Tensor, norms: Tensor, L: Tensor) -> None:
        T = w.numel()
        ratio = L / self.initial_losses
        r = ratio / ratio.mean().clamp_min(1e-12)
        G = w * norms
        target = G.mean() * r.pow(self.alpha)
        grad = torch.sign(G - target) * norms
        self.steps += 1
        k = int(self.steps)
        self.adam_m.mul_(0.9).add_(0.1 * grad)
        self.adam_v.mul_(0.999).add_(0.001 * grad * grad)
        m_hat = self.adam_m / (1 - 0.9 ** k)
        v_hat = self.adam_v / (1 - 0.999 ** k)
        w = (w - self.lr * m_hat / (v_hat.sqrt() + 1e-8)).clamp_min(1e-6)
        self.weights = T * w / w.sum()
