"""Counter-based random keys: ``counter_keys(seed, draw, n) -> [n]`` non-negative int64, key i of
draw number ``draw`` of the stream ``seed`` (both 0-dim int64 tensors on the device), a hash of
(seed, draw, i): the projection orders of PCGrad and GradVac and RLW's weights are drawn from
these, with nothing read back to the host and resumable from two integers.

Backends: ``native`` (one C++ CPU or CUDA kernel, ``csrc/include/mtlk/counter_keys.h``) and
``reference`` (int64 tensor arithmetic, ``mtlkernels.reference.counter_keys``, about 40 small ops:
~110 us a draw on CPU, against a few us native). Both give the same bits.
"""
from __future__ import annotations

import torch
from torch import Tensor

from mtlkernels import _backend, _extension
from mtlkernels.reference.counter_keys import counter_keys as reference_counter_keys

if _extension.native_available():
    @torch.library.register_fake("mtlk::counter_keys")
    def _fake(seed, draw, n):
        return seed.new_empty(n)


def counter_keys(seed: Tensor, draw: Tensor, n: int, *, backend: str | None = None) -> Tensor:
    """``[n]`` int64 keys uniform over ``[0, 2^63)`` (see the module docstring)."""
    for name, t in (("seed", seed), ("draw", draw)):
        if not isinstance(t, Tensor) or t.dim() != 0 or t.dtype != torch.int64:
            raise ValueError(f"counter_keys: {name} must be a 0-dim int64 tensor, got "
                             f"{t.dtype if isinstance(t, Tensor) else type(t).__name__}")
    if draw.device != seed.device:
        raise ValueError(f"counter_keys: seed on {seed.device} but draw on {draw.device}")
    if n < 0:
        raise ValueError(f"counter_keys: n must be >= 0, got {n}")
    if _backend.resolve("counter_keys", backend, seed.device, has_triton=False) == "native":
        return torch.ops.mtlk.counter_keys(seed, draw, n)
    return reference_counter_keys(seed, draw, n)
