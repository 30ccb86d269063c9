"""Per-task gradient algebra in Triton, launched from ``torch.library.custom_op`` ops with the
same contracts as ``mtlk::gram`` / ``block_grams`` / ``combine_``.

gram: one program per chunk of P; the [BLOCK_T, BLOCK_P] tiles of the block multiply as
``x @ x^T`` (``tl.dot`` with exact fp32 products, ``input_precision="ieee"``; float64 for float64
blocks), accumulated within the chunk and atomically added into the float64 G. combine_: one program per tile
of P, ``out += sum_t w_t x_t``.
"""
from __future__ import annotations

import os
from typing import Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

_INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _gram_kernel(x_ptr, g_ptr, T, n, ld, ACC: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr,
                 TILES: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    t = tl.arange(0, BLOCK_T)
    acc = tl.zeros([BLOCK_T, BLOCK_T], dtype=ACC)
    for k in range(TILES):
        p = (pid * TILES + k) * BLOCK_P + tl.arange(0, BLOCK_P)
        x = tl.load(x_ptr + t[:, None] * ld + p[None, :], mask=(t[:, None] < T) & (p[None, :] < n), other=0.0)
        x = x.to(ACC)
        acc += tl.dot(x, tl.trans(x), input_precision="ieee")
    valid = (t[:, None] < T) & (t[None, :] < T)
    tl.atomic_add(g_ptr + t[:, None] * T + t[None, :], acc.to(tl.float64), mask=valid)


@triton.jit
def _combine_kernel(x_ptr, w_ptr, out_ptr, T, n, ld, ACCUMULATE: tl.constexpr, ACC: tl.constexpr,
                    BLOCK_P: tl.constexpr):
    p = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    valid = p < n
    if ACCUMULATE:
        acc = tl.load(out_ptr + p, mask=valid, other=0.0).to(ACC)
    else:
        acc = tl.zeros([BLOCK_P], dtype=ACC)
    for t in range(T):
        w = tl.load(w_ptr + t).to(ACC)
        acc += w * tl.load(x_ptr + t * ld + p, mask=valid, other=0.0).to(ACC)
    tl.store(out_ptr + p, acc.to(out_ptr.dtype.element_ty), mask=valid)


def _rows(block: Tensor) -> Tensor:
    return block.contiguous().view(block.shape[0], -1)


def _gram_into(block: Tensor, G: Tensor) -> None:
    rows = _rows(block)
    T, n = rows.shape
    if n == 0:
        return
    block_t = max(16, triton.next_power_of_2(T))
    block_p = 128
    tiles = max(1, min(64, triton.cdiv(n, block_p))) if not _INTERPRETING else max(1, triton.cdiv(n, block_p * 8))
    grid = (triton.cdiv(n, block_p * tiles),)
    acc = tl.float64 if rows.dtype == torch.float64 else tl.float32
    _gram_kernel[grid](rows, G, T, n, rows.stride(0), ACC=acc, BLOCK_T=block_t, BLOCK_P=block_p, TILES=tiles)


@torch.library.custom_op("mtlk::gram_triton", mutates_args=())
def gram_triton(blocks: Sequence[Tensor]) -> Tensor:
    T = blocks[0].shape[0]
    G = torch.zeros(T, T, dtype=torch.float64, device=blocks[0].device)
    for b in blocks:
        _gram_into(b, G)
    return G


@gram_triton.register_fake
def _(blocks):
    T = blocks[0].shape[0]
    return blocks[0].new_empty(T, T, dtype=torch.float64)


@torch.library.custom_op("mtlk::block_grams_triton", mutates_args=())
def block_grams_triton(blocks: Sequence[Tensor]) -> Tensor:
    T = blocks[0].shape[0]
    G = torch.zeros(len(blocks), T, T, dtype=torch.float64, device=blocks[0].device)
    for k, b in enumerate(blocks):
        _gram_into(b, G[k])
    return G


@block_grams_triton.register_fake
def _(blocks):
    T = blocks[0].shape[0]
    return blocks[0].new_empty(len(blocks), T, T, dtype=torch.float64)


@torch.library.custom_op("mtlk::combine_triton_", mutates_args=("out",))
def combine_triton_(blocks: Sequence[Tensor], weights: Tensor, out: Sequence[Tensor], accumulate: bool = True) -> None:
    w = weights.to(device=blocks[0].device, dtype=torch.float64).contiguous()
    for b, o in zip(blocks, out):
        if not o.is_contiguous():
            raise ValueError("combine_: out tensors must be contiguous (a parameter's .grad)")
        rows = _rows(b.to(o.dtype))
        T, n = rows.shape
        if n == 0:
            continue
        block_p = 4096 if _INTERPRETING else 1024
        acc = tl.float64 if o.dtype == torch.float64 else tl.float32
        _combine_kernel[(triton.cdiv(n, block_p),)](rows, w, o, T, n, rows.stride(0), ACCUMULATE=accumulate, ACC=acc,
                                                    BLOCK_P=block_p)
