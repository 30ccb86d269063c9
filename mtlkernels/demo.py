"""The swap-in demo: a plain MMoE layer, written the way popular libraries write it
(a Python loop over expert MLPs and over per-task gates, softmax then a weighted sum),
and the same layer with its gate mixture replaced by ``mtlkernels.ops.gate_mix``.

Both layers share one set of parameters, so their outputs and gradients must agree;
the demo checks that and then times forward+backward of each.
"""
from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from mtlkernels.ops import gate_mix


class LoopMMoE(nn.Module):
    """MMoE layer (Ma et al., KDD 2018) as commonly written: experts and gates in Python loops.

    Input ``[B, in_features]``; output ``[B, T, expert_dim]`` (one mixture per task).
    """

    def __init__(self, in_features: int, expert_dim: int, num_experts: int, num_tasks: int):
        super().__init__()
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(in_features, expert_dim), nn.ReLU()) for _ in range(num_experts))
        self.gates = nn.ModuleList(nn.Linear(in_features, num_experts) for _ in range(num_tasks))

    def expert_outputs(self, x):
        return torch.stack([e(x) for e in self.experts], dim=1)  # [B, X, D]

    def gate_logits(self, x):
        return torch.stack([g(x) for g in self.gates], dim=1)  # [B, T, X]

    def forward(self, x):
        experts = self.expert_outputs(x)
        mixtures = []
        for gate in self.gates:
            weights = torch.softmax(gate(x), dim=-1)  # [B, X]
            mixtures.append((weights.unsqueeze(-1) * experts).sum(dim=1))  # [B, D]
        return torch.stack(mixtures, dim=1)


class SwappedMMoE(nn.Module):
    """The same layer and parameters, with the mixture done by one fused ``gate_mix`` call."""

    def __init__(self, loop_layer: LoopMMoE):
        super().__init__()
        self.layer = loop_layer

    def forward(self, x):
        return gate_mix(self.layer.expert_outputs(x), self.layer.gate_logits(x))


def _median_ms(fn, reps):
    fn()
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(samples)


def run_demo(batch: int = 4096, in_features: int = 128, expert_dim: int = 128, num_experts: int = 8,
             num_tasks: int = 4, reps: int = 20, threads: int = 1) -> dict:
    """Checks the swap is exact and times forward+backward of both layers and of the mixture alone."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    loop = LoopMMoE(in_features, expert_dim, num_experts, num_tasks)
    swapped = SwappedMMoE(loop)
    x = torch.randn(batch, in_features)
    grad = torch.randn(batch, num_tasks, expert_dim)

    out_loop, out_swap = loop(x), swapped(x)
    g_loop = torch.autograd.grad(out_loop, list(loop.parameters()), grad)
    g_swap = torch.autograd.grad(out_swap, list(loop.parameters()), grad)
    max_out_diff = (out_loop - out_swap).abs().max().item()
    max_grad_diff = max((a - b).abs().max().item() for a, b in zip(g_loop, g_swap))

    def step(layer):
        return lambda: torch.autograd.grad(layer(x), list(loop.parameters()), grad)

    with torch.no_grad():
        experts = loop.expert_outputs(x)
        logits = loop.gate_logits(x)
    experts.requires_grad_()
    logits.requires_grad_()
    g = torch.randn(batch, num_tasks, expert_dim)

    def mixture(use_kernel):
        def run():
            if use_kernel:
                out = gate_mix(experts, logits)
            else:
                w = torch.softmax(logits, dim=-1)
                out = torch.stack([(w[:, t].unsqueeze(-1) * experts).sum(1) for t in range(num_tasks)], 1)
            return torch.autograd.grad(out, (experts, logits), g)
        return run

    return {
        "shape": dict(batch=batch, in_features=in_features, expert_dim=expert_dim, experts=num_experts,
                      tasks=num_tasks, threads=threads),
        "max_abs_diff_output": max_out_diff,
        "max_abs_diff_grads": max_grad_diff,
        "layer_loop_ms": _median_ms(step(loop), reps),
        "layer_swapped_ms": _median_ms(step(swapped), reps),
        "mixture_loop_ms": _median_ms(mixture(False), reps),
        "mixture_kernel_ms": _median_ms(mixture(True), reps),
    }
