"""Per-task gradient algebra over a list of parameter blocks (DESIGN.md op family 2).

A block is one parameter's per-task gradients ``[T, *param.shape]`` (row t = task t). The
blocks are never concatenated into a ``[T, P]`` matrix:

- ``gram(blocks) -> G [T, T]`` float64, ``G[i, j] = <g_i, g_j>`` summed over the blocks;
- ``block_grams(blocks) -> [K, T, T]``, one Gram per block (per-layer methods, GradVac);
- ``combine_(blocks, weights, out, accumulate=True)``: ``out_k += sum_t weights[t] * blocks[k][t]``
  in place, straight into each parameter's ``.grad`` (no P-sized temporary); with
  ``accumulate=False`` it overwrites ``out_k`` (a freshly allocated ``.grad``: no zero fill).

Backends: ``native`` (C++ CPU: fp32 register tiles accumulated per chunk into float64; CUDA),
``triton`` (``mtlkernels/triton/gram.py``), ``reference`` (concatenate + matmul in float64).
These ops sit after the per-task backward and are not differentiated through.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from mtlkernels import _backend, _extension
from mtlkernels.reference import gram as reference


def _check_blocks(op: str, blocks: Sequence[Tensor]) -> int:
    if isinstance(blocks, Tensor) or len(blocks) == 0:
        raise ValueError(f"{op}: blocks must be a non-empty list of [T, ...] tensors")
    T = None
    for k, b in enumerate(blocks):
        if not isinstance(b, Tensor):
            raise TypeError(f"{op}: blocks[{k}] must be a Tensor, got {type(b).__name__}")
        if b.dim() < 1 or (T is not None and b.shape[0] != T):
            raise ValueError(f"{op}: blocks[{k}] must be [T = {T}, ...], got {tuple(b.shape)}")
        if not b.is_floating_point():
            raise TypeError(f"{op}: blocks[{k}] must be floating point, got {b.dtype}")
        if b.device != blocks[0].device:
            raise ValueError(f"{op}: blocks[{k}] is on {b.device} but blocks[0] is on {blocks[0].device}")
        T = b.shape[0]
    if T < 1:
        raise ValueError(f"{op}: blocks have T = 0 tasks")
    return T


if _extension.native_available():
    @torch.library.register_fake("mtlk::gram")
    def _gram_fake(blocks):
        T = blocks[0].shape[0]
        return blocks[0].new_empty(T, T, dtype=torch.float64)

    @torch.library.register_fake("mtlk::block_grams")
    def _block_grams_fake(blocks):
        T = blocks[0].shape[0]
        return blocks[0].new_empty(len(blocks), T, T, dtype=torch.float64)

    @torch.library.register_fake("mtlk::combine_")
    def _combine_fake(blocks, weights, out, accumulate=True):
        return None


def _triton():
    from mtlkernels.triton import gram as triton_gram  # imports triton: only when asked for

    return triton_gram


def gram(blocks: Sequence[Tensor], *, backend: str | None = None) -> Tensor:
    """``G [T, T]`` (float64) of the task gradients held in ``blocks`` (each ``[T, ...]``).

    A NaN or Inf anywhere in a task's gradient shows up in that task's row of G, which is
    where ``mtlkernels.balance`` checks for it.
    """
    _check_blocks("gram", blocks)
    which = _backend.resolve("gram", backend, blocks[0].device)
    if which == "native":
        return torch.ops.mtlk.gram(list(blocks))
    if which == "triton":
        return _triton().gram_triton(list(blocks))
    return reference.gram(blocks)


def block_grams(blocks: Sequence[Tensor], *, backend: str | None = None) -> Tensor:
    """``[K, T, T]`` float64: the Gram of each block separately (they sum to ``gram(blocks)``)."""
    _check_blocks("block_grams", blocks)
    which = _backend.resolve("block_grams", backend, blocks[0].device)
    if which == "native":
        return torch.ops.mtlk.block_grams(list(blocks))
    if which == "triton":
        return _triton().block_grams_triton(list(blocks))
    return reference.block_grams(blocks)


def combine_(blocks: Sequence[Tensor], weights: Tensor, out: Sequence[Tensor], *, accumulate: bool = True,
             backend: str | None = None) -> None:
    """``out[k] += sum_t weights[t] * blocks[k][t]`` in place (``=`` when ``accumulate`` is False);
    ``out[k]`` has ``blocks[k].shape[1:]``.

    ``weights`` ``[T]`` is applied in float64 (rounded once to the block dtype on the native CPU
    path). ``out`` tensors must be contiguous (``.grad`` tensors are).
    """
    T = _check_blocks("combine_", blocks)
    if not isinstance(weights, Tensor) or weights.shape != (T,):
        raise ValueError(f"combine_: weights must be a [T] = [{T}] tensor, got "
                         f"{tuple(weights.shape) if isinstance(weights, Tensor) else type(weights).__name__}")
    if len(out) != len(blocks):
        raise ValueError(f"combine_: out has {len(out)} tensors for {len(blocks)} blocks")
    for k, (b, o) in enumerate(zip(blocks, out)):
        if tuple(o.shape) != tuple(b.shape[1:]):
            raise ValueError(f"combine_: out[{k}] must be {tuple(b.shape[1:])}, got {tuple(o.shape)}")
    which = _backend.resolve("combine_", backend, blocks[0].device)
    if which == "native":
        torch.ops.mtlk.combine_(list(blocks), weights.to(blocks[0].device), list(out), accumulate)
    elif which == "triton":
        _triton().combine_triton_(list(blocks), weights, list(out), accumulate)
    else:
        reference.combine_(blocks, weights, out, accumulate)
