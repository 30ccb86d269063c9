"""Inputs and tolerances shared by the gate-mixture tests."""
from __future__ import annotations

import torch

from mtlkernels.reference import gate_mix as reference_gate_mix

# (B, X, T, D): B from 1 to 4097 (non-multiples of every vector width), X 1..64, T 1..16, D 1..512.
NATIVE_SHAPES = [
    (1, 1, 1, 1),
    (1, 64, 16, 512),
    (3, 1, 16, 33),
    (5, 7, 3, 15),
    (17, 64, 5, 17),
    (31, 3, 2, 16),
    (64, 8, 4, 128),
    (129, 12, 9, 40),
    (4097, 8, 4, 31),
    (4097, 3, 1, 1),
    (4097, 2, 16, 5),
    (250, 33, 6, 512),
]
# The interpreter costs about 4 ms per program (BUILD-NOTES): keep B * D-tiles small.
TRITON_SHAPES = [(1, 1, 1, 1), (3, 5, 2, 33), (7, 64, 16, 40), (16, 8, 4, 128), (9, 3, 1, 600)]

DTYPES = [torch.float32, torch.float64, torch.bfloat16]
# Tolerances against a float64 reference evaluated on the same (rounded) inputs. bfloat16
# outputs carry one rounding to 8 mantissa bits (relative 2^-8); gradients of the logits
# sum D products of rounded values.
TOL = {
    torch.float32: dict(atol=2e-5, rtol=2e-5),
    torch.float64: dict(atol=1e-11, rtol=1e-11),
    torch.bfloat16: dict(atol=3e-2, rtol=2e-2),
}


def make_inputs(B, X, T, D, dtype=torch.float32, mask=False, scale=2.0):
    experts = torch.randn(B, X, D, dtype=torch.float64).to(dtype)
    logits = (scale * torch.randn(B, T, X, dtype=torch.float64)).to(dtype)
    expert_mask = random_mask(T, X) if mask else None
    return experts, logits, expert_mask


def random_mask(T, X):
    """[T, X] bool with at least one visible expert per row."""
    m = torch.rand(T, X) < 0.5
    m[torch.arange(T), torch.randint(0, X, (T,))] = True
    return m


def ple_mask(tasks, own, shared):
    m = torch.zeros(tasks, tasks * own + shared, dtype=torch.bool)
    for t in range(tasks):
        m[t, t * own:(t + 1) * own] = True
    m[:, tasks * own:] = True
    return m


def reference_f64(experts, logits, expert_mask=None, grad_out=None, grad_probs=None):
    """Reference outputs (and input gradients if grad_out is given) in float64."""
    e = experts.detach().double().requires_grad_()
    lg = logits.detach().double().requires_grad_()
    out, probs = reference_gate_mix(e, lg, expert_mask)
    if grad_out is None:
        return out.detach(), probs.detach()
    total = (out * grad_out.double()).sum()
    if grad_probs is not None:
        total = total + (probs * grad_probs.double()).sum()
    ge, gl = torch.autograd.grad(total, (e, lg))
    return out.detach(), probs.detach(), ge, gl
