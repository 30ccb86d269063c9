"""Gate mixture in Triton, launched from ``torch.library.custom_op`` ops so autograd,
``torch.compile(fullgraph=True)`` and vmap see one opaque node (BUILD-NOTES P11).

Forward: one program per (batch row, tile of D); all T tasks and X experts of the row sit
in one [BLOCK_T, BLOCK_X] tile, the mixture is a broadcast-multiply-sum over X.
Backward: one program per batch row, looping over D tiles: dE tiles are written as they
are produced, dp = g @ E^T accumulates across tiles, then the softmax backward.
Inputs may have any strides; outputs are contiguous. Accumulation is float32, float64
for float64 inputs. On CPU tensors this runs only under TRITON_INTERPRET=1 (tests).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from mtlkernels.ops import _gate_mix_rules
from mtlkernels.ops.gate_mix import check_logit_values

_INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
# Largest [BLOCK_T, BLOCK_X, BLOCK_D] intermediate per program on a GPU (registers); the
# interpreter has no such limit and pays about 4 ms per program, so it takes whole rows.
_GPU_TILE_ELEMENTS = 8192


@triton.jit
def _gate_probs(l_row, m_ptr, t, x, T, X, s_lt, s_lx, HAS_MASK: tl.constexpr, ACC: tl.constexpr):
    """Masked softmax of one batch row: [BLOCK_T, BLOCK_X], zeros outside the valid tile."""
    valid = (t[:, None] < T) & (x[None, :] < X)
    allowed = valid
    if HAS_MASK:
        seen = tl.load(m_ptr + t[:, None] * X + x[None, :], mask=valid, other=0)
        allowed = valid & (seen != 0)
    logits = tl.load(l_row + t[:, None] * s_lt + x[None, :] * s_lx, mask=allowed, other=float("-inf"))
    logits = logits.to(ACC)
    row_max = tl.max(logits, axis=1)
    row_max = tl.where(row_max == float("-inf"), 0.0, row_max)  # padded rows: avoid -inf - -inf
    e = tl.where(allowed, tl.exp(logits - row_max[:, None]), 0.0)
    total = tl.sum(e, axis=1)
    total = tl.where(total == 0.0, 1.0, total)
    return e / total[:, None]


@triton.jit
def _gate_mix_fwd_kernel(e_ptr, l_ptr, m_ptr, o_ptr, p_ptr, T, X, D,
                         s_eb, s_ex, s_ed, s_lb, s_lt, s_lx,
                         HAS_MASK: tl.constexpr, WRITE_P: tl.constexpr, ACC: tl.constexpr,
                         BLOCK_T: tl.constexpr, BLOCK_X: tl.constexpr, BLOCK_D: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    t = tl.arange(0, BLOCK_T)
    x = tl.arange(0, BLOCK_X)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    p = _gate_probs(l_ptr + b * s_lb, m_ptr, t, x, T, X, s_lt, s_lx, HAS_MASK, ACC)
    e = tl.load(e_ptr + b * s_eb + x[:, None] * s_ex + d[None, :] * s_ed,
                mask=(x[:, None] < X) & (d[None, :] < D), other=0.0).to(ACC)
    out = tl.sum(p[:, :, None] * e[None, :, :], axis=1)
    tl.store(o_ptr + b * T * D + t[:, None] * D + d[None, :], out.to(o_ptr.dtype.element_ty),
             mask=(t[:, None] < T) & (d[None, :] < D))
    if WRITE_P:
        if pid_d == 0:
            tl.store(p_ptr + b * T * X + t[:, None] * X + x[None, :], p.to(p_ptr.dtype.element_ty),
                     mask=(t[:, None] < T) & (x[None, :] < X))


@triton.jit
def _gate_mix_bwd_kernel(g_ptr, gp_ptr, e_ptr, l_ptr, m_ptr, de_ptr, dl_ptr, T, X, D,
                         s_gb, s_gt, s_gd, s_pb, s_pt, s_px, s_eb, s_ex, s_ed, s_lb, s_lt, s_lx,
                         HAS_MASK: tl.constexpr, HAS_GP: tl.constexpr, ACC: tl.constexpr,
                         BLOCK_T: tl.constexpr, BLOCK_X: tl.constexpr, BLOCK_D: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    t = tl.arange(0, BLOCK_T)
    x = tl.arange(0, BLOCK_X)
    tx_valid = (t[:, None] < T) & (x[None, :] < X)
    p = _gate_probs(l_ptr + b * s_lb, m_ptr, t, x, T, X, s_lt, s_lx, HAS_MASK, ACC)
    dp = tl.zeros([BLOCK_T, BLOCK_X], dtype=ACC)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        g = tl.load(g_ptr + b * s_gb + t[:, None] * s_gt + d[None, :] * s_gd,
                    mask=(t[:, None] < T) & (d[None, :] < D), other=0.0).to(ACC)
        e = tl.load(e_ptr + b * s_eb + x[:, None] * s_ex + d[None, :] * s_ed,
                    mask=(x[:, None] < X) & (d[None, :] < D), other=0.0).to(ACC)
        dp += tl.sum(g[:, None, :] * e[None, :, :], axis=2)
        de = tl.sum(p[:, :, None] * g[:, None, :], axis=0)
        tl.store(de_ptr + b * X * D + x[:, None] * D + d[None, :], de.to(de_ptr.dtype.element_ty),
                 mask=(x[:, None] < X) & (d[None, :] < D))
    h = dp
    if HAS_GP:
        h += tl.load(gp_ptr + b * s_pb + t[:, None] * s_pt + x[None, :] * s_px, mask=tx_valid,
                     other=0.0).to(ACC)
    dl = p * (h - tl.sum(p * h, axis=1)[:, None])
    tl.store(dl_ptr + b * T * X + t[:, None] * X + x[None, :], dl.to(dl_ptr.dtype.element_ty), mask=tx_valid)


def _blocks(T: int, X: int, D: int) -> tuple[int, int, int]:
    block_t = max(2, triton.next_power_of_2(T))
    block_x = max(2, triton.next_power_of_2(X))
    full_d = max(2, triton.next_power_of_2(D))
    if _INTERPRETING:
        return block_t, block_x, min(full_d, 512)
    return block_t, block_x, max(2, min(full_d, _GPU_TILE_ELEMENTS // (block_t * block_x)))


def _acc_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


@torch.library.custom_op("mtlk::gate_mix_triton", mutates_args=())
def gate_mix_triton(experts: Tensor, logits: Tensor, expert_mask: Tensor | None,
                    return_probs: bool) -> tuple[Tensor, Tensor]:
    """Same schema and contract as ``mtlk::gate_mix``."""
    check_logit_values(logits, expert_mask)
    B, X, D = experts.shape
    T = logits.shape[1]
    out = experts.new_empty(B, T, D)
    probs = logits.new_empty(B if return_probs else 0, T, X)
    if B == 0 or T == 0 or D == 0:
        return out, probs
    block_t, block_x, block_d = _blocks(T, X, D)
    mask = expert_mask.contiguous() if expert_mask is not None else logits  # dummy pointer when unused
    grid = (B, triton.cdiv(D, block_d))
    _gate_mix_fwd_kernel[grid](
        experts, logits, mask, out, probs if return_probs else out, T, X, D,
        *experts.stride(), *logits.stride(),
        HAS_MASK=expert_mask is not None, WRITE_P=return_probs, ACC=_acc_dtype(experts.dtype),
        BLOCK_T=block_t, BLOCK_X=block_x, BLOCK_D=block_d)
    return out, probs


@torch.library.custom_op("mtlk::gate_mix_triton_backward", mutates_args=())
def gate_mix_triton_backward(grad_out: Tensor, grad_probs: Tensor | None, experts: Tensor, logits: Tensor,
                             expert_mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """The schema and contract of ``mtlk::gate_mix_backward`` for one task gradient (``grad_out``
    ``[B, T, D]``; the compiled op also takes ``[N, B, T, D]``)."""
    B, X, D = experts.shape
    T = logits.shape[1]
    grad_experts = experts.new_empty(B, X, D)
    grad_logits = logits.new_empty(B, T, X)
    if B == 0:
        return grad_experts, grad_logits
    if T == 0:
        return grad_experts.zero_(), grad_logits
    block_t, block_x, block_d = _blocks(T, X, D)
    mask = expert_mask.contiguous() if expert_mask is not None else logits
    gp = grad_probs if grad_probs is not None else logits
    _gate_mix_bwd_kernel[(B,)](
        grad_out, gp, experts, logits, mask, grad_experts, grad_logits, T, X, D,
        *grad_out.stride(), *gp.stride(), *experts.stride(), *logits.stride(),
        HAS_MASK=expert_mask is not None, HAS_GP=grad_probs is not None, ACC=_acc_dtype(experts.dtype),
        BLOCK_T=block_t, BLOCK_X=block_x, BLOCK_D=block_d)
    return grad_experts, grad_logits


_gate_mix_rules.register("mtlk::gate_mix_triton", "mtlk::gate_mix_triton_backward")
_gate_mix_rules.register_autograd("mtlk::gate_mix_triton", "mtlk::gate_mix_triton_backward")
