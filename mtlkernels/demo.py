"""The swap-in demo: an MMoE written the way popular libraries write it
(``mtlkernels.reference.expert_loop.LoopMMoE``: a Python loop over expert and gate modules,
softmax then a weighted sum) converted by ``mtlkernels.nn.swap.mmoe_from`` into the grouped
model whose mixture is one ``gate_mix`` call, with the same weights.

The demo checks that outputs and gradients agree, then times forward+backward of both models
and of the gate mixture alone.
"""
from __future__ import annotations

import statistics
import time

import torch

from mtlkernels.nn.swap import mmoe_from
from mtlkernels.ops import gate_mix
from mtlkernels.reference.expert_loop import LoopMMoE


def _median_ms(fn, reps):
    fn()
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(samples)


def _max_grad_diff(loop: LoopMMoE, fast, g_loop, g_fast) -> float:
    """Largest difference between the loop's expert-weight gradients and the grouped ones."""
    grouped = dict(zip([n for n, _ in fast.named_parameters()], g_fast))
    names = [n for n, _ in loop.named_parameters()]
    worst = 0.0
    for layer, _ in enumerate(fast.experts.layers):
        fast_w = grouped[f"experts.layers.{layer}.weight"]
        for e in range(len(loop.experts)):
            loop_w = g_loop[names.index(f"experts.{e}.{2 * layer}.weight")]
            slice_ = fast_w[:, e].t() if fast.experts.layers[layer].shared_input else fast_w[e].t()
            worst = max(worst, (slice_ - loop_w).abs().max().item())
    return worst


def run_demo(batch: int = 4096, in_features: int = 128, expert_dim: int = 128, num_experts: int = 8,
             num_tasks: int = 4, reps: int = 20, threads: int = 1) -> dict:
    """Checks the swap is exact and times forward+backward of both models and of the mixture alone."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    loop = LoopMMoE(in_features, num_tasks, num_experts, (expert_dim,), (16,))
    fast = mmoe_from(loop.experts, loop.gates, loop.towers)
    x = torch.randn(batch, in_features)
    grad = torch.randn(batch, num_tasks)

    out_loop, out_fast = loop(x), fast(x)
    g_loop = torch.autograd.grad(out_loop, list(loop.parameters()), grad)
    g_fast = torch.autograd.grad(out_fast, list(fast.parameters()), grad)

    def step(model):
        return lambda: torch.autograd.grad(model(x), list(model.parameters()), grad)

    with torch.no_grad():
        experts = torch.stack([e(x) for e in loop.experts], dim=1)  # [B, X, D]
        logits = torch.stack([gate[0](x) for gate in loop.gates], dim=1)  # [B, T, X]
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
        "max_abs_diff_output": (out_loop - out_fast).abs().max().item(),
        "max_abs_diff_grads": _max_grad_diff(loop, fast, g_loop, g_fast),
        "layer_loop_ms": _median_ms(step(loop), reps),
        "layer_swapped_ms": _median_ms(step(fast), reps),
        "mixture_loop_ms": _median_ms(mixture(False), reps),
        "mixture_kernel_ms": _median_ms(mixture(True), reps),
    }
