"""Fake (meta), autograd and vmap rules of a gate-mixture op pair.

The compiled op ``mtlk::gate_mix`` and the Triton op ``mtlk::gate_mix_triton`` share one
schema, so they share these rules: ``register(forward_name, backward_name)`` attaches the
fake and vmap rules, ``register_autograd`` the autograd rule. Only the Triton op takes the
latter: the compiled op's autograd is C++ (``csrc/gate_mix_autograd.cpp``).

Schemas:
    forward(experts [B,X,D], logits [B,T,X], expert_mask [T,X]?, return_probs) -> (out [B,T,D], probs)
    backward(grad_out [B,T,D], grad_probs [B,T,X]?, experts, logits, expert_mask?) -> (grad_experts, grad_logits)
where probs is ``[B,T,X]`` when return_probs else ``[0,T,X]``. The compiled backward also takes
N task gradients at once, ``grad_out [N,B,T,D]`` (and ``grad_probs [N,B,T,X]``), giving
``[N,B,X,D]`` and ``[N,B,T,X]``: each row's gates and experts read once for the N tasks.
"""
from __future__ import annotations

import torch


def _fake_forward(experts, logits, expert_mask, return_probs):
    B, X, D = experts.shape
    T = logits.shape[1]
    return experts.new_empty(B, T, D), logits.new_empty(B if return_probs else 0, T, X)


def _fake_backward(grad_out, grad_probs, experts, logits, expert_mask):
    lead = tuple(grad_out.shape[:-3])  # (N,) with N task gradients at once
    return experts.new_empty(*lead, *experts.shape), logits.new_empty(*lead, *logits.shape)


def _batch_first(t, dim, n):
    """Moves the vmap dim of ``t`` to the front, or broadcasts an unbatched ``t`` to size n."""
    if t is None:
        return None
    if dim is None:
        return t.unsqueeze(0).expand(n, *t.shape)
    return t.movedim(dim, 0)


def _fold(t):
    return None if t is None else t.reshape(t.shape[0] * t.shape[1], *t.shape[2:])


def _check_mask_unbatched(op_name, mask_dim):
    if mask_dim is not None:
        raise ValueError(f"{op_name}: vmap over expert_mask is not supported; the mask is the "
                         "model's fixed expert structure [T, X]")


def _op(name: str):
    """The OpOverload of "mtlk::<op>"."""
    return getattr(torch.ops.mtlk, name.split("::")[1]).default


def register(fwd_name: str, bwd_name: str) -> None:
    """Registers the fake and vmap rules on the op pair, e.g. "mtlk::gate_mix"."""
    torch.library.register_fake(fwd_name)(_fake_forward)
    torch.library.register_fake(bwd_name)(_fake_backward)
    torch.library.register_vmap(fwd_name, _forward_vmap(fwd_name, _op(fwd_name)))
    torch.library.register_vmap(bwd_name, _backward_vmap(bwd_name, _op(bwd_name)))


def register_autograd(fwd_name: str, bwd_name: str) -> None:
    """Registers the autograd rule of the op pair (the backward op recomputes the gates)."""
    backward = _op(bwd_name)

    def setup_context(ctx, inputs, output):
        experts, logits, expert_mask, _ = inputs
        ctx.save_for_backward(experts, logits, expert_mask)

    def backward_rule(ctx, grad_out, grad_probs):
        experts, logits, expert_mask = ctx.saved_tensors
        if grad_probs is not None and grad_probs.shape[0] == 0 and logits.shape[0] != 0:
            grad_probs = None  # the [0, T, X] placeholder of return_probs=False
        grad_experts, grad_logits = backward(grad_out, grad_probs, experts, logits, expert_mask)
        return grad_experts, grad_logits, None, None

    torch.library.register_autograd(fwd_name, backward_rule, setup_context=setup_context)


def _forward_vmap(fwd_name, forward):
    def forward_vmap(info, in_dims, experts, logits, expert_mask, return_probs):
        e_dim, l_dim, m_dim, _ = in_dims
        _check_mask_unbatched(fwd_name, m_dim)
        n = info.batch_size
        experts, logits = _batch_first(experts, e_dim, n), _batch_first(logits, l_dim, n)
        B = experts.shape[1]
        out, probs = forward(_fold(experts), _fold(logits), expert_mask, return_probs)
        out = out.unflatten(0, (n, B))
        if return_probs:
            return (out, probs.unflatten(0, (n, B))), (0, 0)
        return (out, probs), (0, None)

    return forward_vmap


def _backward_vmap(bwd_name, backward):
    takes_tasks = bwd_name == "mtlk::gate_mix_backward"  # the compiled op takes [N, B, T, D] grads

    def backward_vmap(info, in_dims, grad_out, grad_probs, experts, logits, expert_mask):
        g_dim, gp_dim, e_dim, l_dim, m_dim = in_dims
        _check_mask_unbatched(bwd_name, m_dim)
        n = info.batch_size
        grad_out = _batch_first(grad_out, g_dim, n)
        grad_probs = _batch_first(grad_probs, gp_dim, n)
        if takes_tasks and e_dim is None and l_dim is None:  # task gradients: experts and logits read once
            ge, gl = backward(grad_out.contiguous(), None if grad_probs is None else grad_probs.contiguous(),
                              experts, logits, expert_mask)
            return (ge, gl), (0, 0)
        experts, logits = _batch_first(experts, e_dim, n), _batch_first(logits, l_dim, n)
        B = experts.shape[1]
        ge, gl = backward(_fold(grad_out), _fold(grad_probs), _fold(experts), _fold(logits), expert_mask)
        return (ge.unflatten(0, (n, B)), gl.unflatten(0, (n, B))), (0, 0)

    return backward_vmap
