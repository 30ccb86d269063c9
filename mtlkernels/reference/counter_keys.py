"""Counter-based random keys in plain int64 tensor arithmetic: the oracle of
``mtlk::counter_keys`` (``mtlkernels.ops.counter_keys``), the same bits on any device."""
from __future__ import annotations

import torch
from torch import Tensor

_MASK = (1 << 63) - 1  # non-negative int64
_OFFSET = 0x2545F4914F6CDD1D


def mix(x: Tensor) -> Tensor:
    """A 63-bit integer mixer (splitmix64's finaliser on the low 63 bits, in int64 arithmetic:
    products wrap, shifts are masked to be logical): uniform-looking keys from a counter."""
    x = x & _MASK
    x = ((x ^ (x >> 30)) * -4658895280553007687) & _MASK  # 0xbf58476d1ce4e5b9
    x = ((x ^ (x >> 27)) * -7723592293110705685) & _MASK  # 0x94d049bb133111eb
    return (x ^ (x >> 31)) & _MASK


def counter_keys(seed: Tensor, draw: Tensor, n: int) -> Tensor:
    """``[n]`` non-negative int64 keys of draw number ``draw`` of the stream ``seed``."""
    position = torch.arange(n, dtype=torch.int64, device=seed.device)
    return mix(mix(seed) ^ mix(draw * n + position + _OFFSET))
