"""Gradient Vaccine (Wang et al., ICLR 2021; ALGORITHMS.md 3.4) in Gram form."""
from __future__ import annotations

import torch
from torch import Tensor

from mtlkernels.balance.base import (GramMethod, GrowingBuffers, backward_except, check_losses, shared_list)
from mtlkernels.balance.blocks import SharedBlocks
from mtlkernels.balance.random_order import TaskOrder
from mtlkernels.ops import block_grams
from mtlkernels.ops.solvers import gradvac_weights


#: the target EMA rules, named by the code they follow -> whether every visited pair is updated
EMA_RULES = {"libmtl": False, "torchjd": True}


class GradVac(GrowingBuffers, GramMethod):
    """Pulls every pair's gradient cosine up to an adaptive target: for each task i and each
    other task j (random order), if ``cos(g_i', g_j) < phihat_ij`` then g_i' gets the multiple
    of g_j that makes the cosine exactly ``phihat_ij``; then the target's EMA
    ``phihat_ij <- (1 - beta) phihat_ij + beta cos``, for the adjusted pairs only
    (``ema="libmtl"``: LibMTL and the authors' SamsungLabs code) or for every visited pair
    (``ema="torchjd"``). The cosine is clamped to [-1, 1] and the epsilons are relative to the
    gradient scale (``mtlkernels.ops.solvers.gradvac_weights``). ``d = sum_i g_i'`` (sum
    convention). ``beta`` defaults to LibMTL's 0.5 (the paper's setting is reported as 0.01).
    With ``phihat = 0`` and ``beta = 0`` it is PCGrad.

    ``granularity="model"``: one T x T target over all shared parameters. ``"layer"``: one
    target per shared parameter tensor, its own Gram, its own weights (the paper's finer
    granularity); the task heads then get the gradient of ``sum_t wbar_t L_t`` with ``wbar``
    the mean of the per-layer weights. Targets and the order generator are in ``state_dict()``;
    the orders follow ``torch.manual_seed`` unless ``seed`` is given.
    """

    _growing_buffers = ("target",)

    def __init__(self, beta: float = 0.5, granularity: str = "model", ema: str = "libmtl",
                 seed: int | None = None):
        super().__init__()
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"GradVac: beta must be in [0, 1], got {beta}")
        if granularity not in ("model", "layer"):
            raise ValueError(f"GradVac: granularity must be 'model' or 'layer', got {granularity!r}")
        if ema not in EMA_RULES:
            raise ValueError(f"GradVac: ema must be one of {sorted(EMA_RULES)}, got {ema!r}")
        self.beta, self.granularity, self.ema = beta, granularity, ema
        self.order = TaskOrder(seed)
        self.register_buffer("target", torch.zeros(0, dtype=torch.float64))

    def _targets(self, shape, device) -> Tensor:
        """The targets, created (zeros) on the first step and kept on the gradients' device."""
        if tuple(self.target.shape) != tuple(shape):
            if self.target.numel():
                raise ValueError(f"GradVac: state holds targets {tuple(self.target.shape)} but this step needs "
                                 f"{tuple(shape)} (different task count or parameter list)")
            self.target = torch.zeros(shape, dtype=torch.float64, device=device)
        elif self.target.device != device:
            self.target = self.target.to(device)
        return self.target

    def gram_weights(self, G: Tensor, losses: Tensor) -> Tensor:
        T = G.shape[0]
        target = self._targets((T, T), G.device)
        w, self.target = gradvac_weights(G, self.order.draw(T, G.device), target, self.beta,
                                         every_pair=EMA_RULES[self.ema])
        return w

    def layer_weights(self, blocks: list[Tensor]) -> Tensor:
        """Per-layer granularity: ``[K, T]`` weights, one row per block, each from its own Gram
        and targets."""
        T = blocks[0].shape[0]
        Gk = self._flag_gram(block_grams(blocks))  # [K, T, T]
        self.last_gram = Gk.sum(0).detach()  # the whole model's G, for diagnostics
        targets = self._targets((len(blocks), T, T), Gk.device)
        orders = torch.stack([self.order.draw(T, Gk.device) for _ in blocks])
        W, self.target = gradvac_weights(Gk, orders, targets, self.beta, every_pair=EMA_RULES[self.ema])
        return W

    def aggregate_weights(self, blocks: list[Tensor], losses: Tensor) -> Tensor:
        if self.granularity == "model":
            return super().aggregate_weights(blocks, losses)
        return self.layer_weights(blocks)

    def backward(self, losses: Tensor, shared=None, *, representation: Tensor | None = None) -> Tensor:
        if self.granularity == "model" or representation is not None:
            return super().backward(losses, shared, representation=representation)
        check_losses(losses)
        self._flag_losses(losses)
        blocks = SharedBlocks(losses, shared, shared_list(shared))
        W = self.layer_weights(blocks.blocks).to(losses.dtype)
        blocks.apply(W)
        w = W.mean(0)
        backward_except((w * losses).sum(), blocks.leaves, shared, blocks)
        return w.detach()
