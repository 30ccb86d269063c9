"""Nash-MTL (Navon et al., ICML 2022; ALGORITHMS.md 3.7) in the Gram form, with the bargaining
solution computed exactly on the device."""
from __future__ import annotations

import torch
from torch import Tensor

from mtlkernels.balance.base import GramMethod, GrowingBuffers

#: backtracking steps tried at every Newton iteration (all at once: no host decision)
STEPS = tuple(2.0 ** -k for k in range(12))
#: the log-weights (of the solution on G / |G|_F) stay within +-LOG_BOUND: a problem without a
#: solution cannot run off
LOG_BOUND = 20.0


def nash_weights(G: Tensor, start: Tensor, iterations: int) -> Tensor:
    """The Nash bargaining weights ``alpha > 0`` with ``(G alpha)_i = 1 / alpha_i`` for every i,
    by Newton's method on ``y = log alpha`` from ``start``: with ``D = diag(alpha)`` the step
    solves ``(D G D + I) dy = -D F`` (symmetric positive definite whatever G), and the step length
    is the best of ``1, 1/2, ..., 1/2048`` by the residual, all evaluated at once. On
    ``G / |G|_F`` (the solution scales back by ``|G|_F^-1/2``); ``iterations`` Newton steps, on
    the device, no host sync. Without a positive solution (linearly dependent gradients) it
    returns the least-residual point reached."""
    T = G.shape[0]
    nf = torch.linalg.matrix_norm(G)
    nf = torch.where(nf > 0, nf, torch.ones_like(nf))
    Gn = G / nf
    y = torch.log(start.clamp_min(1e-300) * torch.sqrt(nf)).clamp(-LOG_BOUND, LOG_BOUND)
    eye = torch.eye(T, dtype=G.dtype, device=G.device)
    steps = torch.tensor(STEPS, dtype=G.dtype, device=G.device)[:, None]

    def residual(y_):  # [..., T] -> |G e^y - e^-y|^2
        return ((torch.exp(y_) @ Gn) - torch.exp(-y_)).square().sum(-1)

    for _ in range(iterations):
        a = torch.exp(y)
        F = Gn @ a - 1.0 / a
        dy = -torch.linalg.solve_ex(a[:, None] * Gn * a[None, :] + eye, a * F)[0]
        dy = torch.where(torch.isfinite(dy), dy, torch.zeros_like(dy))  # rounding at the bounds: stay
        candidates = (y + steps * dy).clamp(-LOG_BOUND, LOG_BOUND)  # [S, T]
        best = torch.index_select(candidates, 0, torch.argmin(residual(candidates)).reshape(1))[0]
        y = torch.where(residual(best) < residual(y), best, y)
    return torch.exp(y) / torch.sqrt(nf)


class NashMTL(GrowingBuffers, GramMethod):
    """The update as the Nash bargaining solution of the tasks' utilities ``<g_i, d>``:
    ``d = J^T alpha`` with ``alpha > 0`` and ``alpha_i (G alpha)_i = 1`` for every task, so
    ``|d|^2 = T`` (scale invariant and proportionally fair; orthogonal gradients give
    ``alpha_i = 1 / |g_i|``). The official code approximates alpha by up to ``optim_niter``
    convex-concave steps through an ECOS solve each, stopping at a residual of 1e-3; here the fixed
    point itself is solved (``nash_weights``: ``optim_niter`` Newton steps, warm-started from the
    previous alpha, as the official code warm-starts). Then, as the official code and TorchJD do,
    alpha is scaled down so that ``|J^T alpha| <= max_norm`` (always active for T >= 2 at the
    default 1.0), and recomputed only every ``update_weights_every`` steps. State (the previous
    alpha, the step count) is in ``state_dict()``. Task heads get the gradient of
    ``sum_t alpha_t L_t``.
    """

    _growing_buffers = ("alpha",)

    def __init__(self, max_norm: float = 1.0, update_weights_every: int = 1, optim_niter: int = 20):
        super().__init__()
        if not max_norm >= 0:
            raise ValueError(f"NashMTL: max_norm must be >= 0 (0: no clipping), got {max_norm}")
        if update_weights_every < 1 or optim_niter < 1:
            raise ValueError(f"NashMTL: update_weights_every and optim_niter must be >= 1, got "
                             f"{update_weights_every} and {optim_niter}")
        self.max_norm, self.update_weights_every, self.optim_niter = max_norm, update_weights_every, optim_niter
        self.register_buffer("alpha", torch.zeros(0, dtype=torch.float64))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))

    def gram_weights(self, G: Tensor, losses: Tensor) -> Tensor:
        T = G.shape[0]
        if self.alpha.shape != (T,):
            if self.alpha.numel():
                raise ValueError(f"NashMTL: state holds {self.alpha.numel()} task weights, this step has {T} tasks")
            self.alpha = torch.ones(T, dtype=torch.float64, device=G.device)
        alpha = self.alpha.to(G.device)
        fresh = nash_weights(G, alpha, self.optim_niter)
        due = (self.steps % self.update_weights_every) == 0
        self.alpha = torch.where(due, fresh, alpha) if self.steps.numel() else fresh
        self.steps = self.steps + 1
        w = self.alpha
        if self.max_norm > 0:
            norm = torch.sqrt((w @ G @ w).clamp_min(0))
            w = torch.where(norm > self.max_norm, w * self.max_norm / torch.where(norm > 0, norm, 1.0), w)
        return w
